"""Where an emulator may connect to on a request's say-so: this machine only, unless told otherwise.

Some emulated APIs make the server connect out to a host named in the request (a MOI connector's
endpoint, a VikingDB ``url``). An emulator runs on a user's machine, often next to private services, so
following any host a request names would be a server-side request forgery hole. By default a
destination must be a loopback address *literally*: ``localhost``, an address in 127.0.0.0/8, or ``::1``.
No other name is even resolved (a DNS query is itself a packet leaving the machine). An emulator started
with ``--allow-remote-sources`` connects anywhere.
"""

from __future__ import annotations

import ipaddress

__all__ = ["ALLOW_REMOTE_FLAG", "remote_problem"]

#: The command-line flag that lifts the restriction (named in every refusal).
ALLOW_REMOTE_FLAG = "--allow-remote-sources"


def remote_problem(host: str, *, allow_remote: bool) -> str | None:
    """Why the emulator will not connect to ``host``, or ``None`` when it may."""
    if allow_remote:
        return None
    bare = host.strip().strip("[]").split("%", 1)[0].rstrip(".").lower()
    if bare == "localhost":
        return None
    try:
        if ipaddress.ip_address(bare).is_loopback:
            return None
    except ValueError:
        pass
    shown = host if len(host) <= 64 else host[:64] + "…"
    return (
        f"the emulator connects only to this machine (localhost, 127.0.0.0/8, ::1), not to {shown!r};"
        f" start it with {ALLOW_REMOTE_FLAG} to allow other hosts"
    )
