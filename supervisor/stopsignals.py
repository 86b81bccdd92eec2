"""Keep a stop signal that arrives before the daemon listens for one.

``vsv daemon`` spends its first fraction of a second importing and opening its state before its
trio loop listens for SIGTERM and SIGINT. Without this module a SIGTERM then killed it by the
kernel's default (exit 143, whatever it had made left behind) and a SIGINT raised
KeyboardInterrupt wherever the interpreter was (a traceback). :func:`defer` is called first
thing by the ``daemon`` verb: from then on either signal is only noted, and the daemon, once it
listens, takes it (:func:`take`) and stops in order, as for a signal that came later. A signal
before the interpreter runs our first line still ends the process by the default action, with
nothing of ours made yet. Standard library only: it runs before anything else is imported.
"""

from __future__ import annotations

import signal
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_noted: list[int] = []


def _note(signum: int, _frame: FrameType | None) -> None:
    _noted.append(signum)


def defer() -> None:
    """Note SIGTERM and SIGINT from now on instead of acting on them."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _note)


def take() -> int | None:
    """The first stop signal noted since :func:`defer` (and forget them all), or None."""
    first = _noted[0] if _noted else None
    _noted.clear()
    return first
