"""systemd's readiness protocol (sd_notify) without libsystemd.

When the supervisor runs as a ``Type=notify`` service, systemd sets ``NOTIFY_SOCKET``; the
supervisor sends ``READY=1`` once its API accepts connections and ``STOPPING=1`` when it begins
to shut down, so ``systemctl start`` returns only when ``vsv`` commands work. Without
``NOTIFY_SOCKET`` every call is a no-op returning False.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping


def notify(state: str, *, environ: Mapping[str, str] | None = None) -> bool:
    """Send one notification (``"READY=1"``, ``"STATUS=..."``...); True when it was sent.

    A failure to send is not an error for the supervisor (systemd may have gone away, or the
    variable may be stale), so it is reported through the return value only.
    """
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError:
        return False
    return True


def ready(status: str | None = None) -> bool:
    """``READY=1`` (with a status line): the API is serving."""
    return notify("READY=1" + (f"\nSTATUS={status}" if status else ""))


def stopping(status: str | None = None) -> bool:
    """``STOPPING=1``: shutdown has begun."""
    return notify("STOPPING=1" + (f"\nSTATUS={status}" if status else ""))


def status(text: str) -> bool:
    """A free-form status line shown by ``systemctl status``."""
    return notify(f"STATUS={text}")
