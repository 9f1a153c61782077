"""Signals that arrive while the daemon starts, before its event loop can take them.

Importing torch and loading the weights take seconds; a SIGHUP meanwhile (systemd may reload a
starting service) would end the process with the default action. `hold()` is called first thing
by `antiphon run`: from then on SIGHUP, SIGTERM and SIGINT are only remembered, and the app takes
them over (`taken()`) once its loop handles them itself.
"""

from __future__ import annotations

import signal

HELD = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)
_received: list[signal.Signals] = []


def _remember(signum: int, _frame: object) -> None:
    _received.append(signal.Signals(signum))


_before: dict[signal.Signals, object] = {}


def hold() -> None:
    for sig in HELD:
        _before.setdefault(sig, signal.signal(sig, _remember))


def release() -> None:
    """The handlers from before hold() (for a caller that goes on, e.g. main() called in-process)."""
    for sig, handler in _before.items():
        signal.signal(sig, handler)
    _before.clear()
    _received.clear()


def taken() -> list[signal.Signals]:
    """The signals remembered so far (each once, in order of arrival); forgets them."""
    received = list(dict.fromkeys(_received))
    _received.clear()
    return received
