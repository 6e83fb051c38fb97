"""Request signing schemes of the platforms, shared by the targets (which sign) and the emulators (which verify)."""
