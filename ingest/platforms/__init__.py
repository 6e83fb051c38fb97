"""Destination platforms: the runtime contract (``base``), the registry of platforms (``registry``) and
one package per platform (``moi``, ``keyue``, ``viking``), each holding everything about it: API
client, wire models, target, settings, its own CLI commands and its registration (``spec``)."""
