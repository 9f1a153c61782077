"""Closing an rtmidi port without racing libjack's notification thread.

libjack (JACK2's client library, bundled in python-rtmidi's wheel) walks a client's list of ports
in its notification thread whenever the server announces new latencies, which it does a cycle or
two after any change in the graph (a port or a client gone, a connection made). jack_port_unregister
edits that same list from the caller's thread without a lock, so a port closed while the
announcement of an earlier change is being handled crashes the whole process (SIGSEGV in
JackClient::HandleLatencyCallback). Closing two ports back to back did it within a few hundred
tries (bench-free reproduction: open, connect and close a pair of JACK clients in a loop); letting
the graph settle before each unregister made 1,000 tries in a row clean. ALSA has no such thread.
"""

from __future__ import annotations

import time

import rtmidi

# Ten periods of 256 frames at 48 kHz: the announcement of the change before is handled by then.
JACK_SETTLE_S = 0.05


def close_port(port: rtmidi.MidiIn | rtmidi.MidiOut) -> None:
    """Close `port`'s connection or virtual port; the client stays, to be reopened or deleted."""
    if port.is_port_open() and port.get_current_api() == rtmidi.API_UNIX_JACK:
        time.sleep(JACK_SETTLE_S)
    port.close_port()


def release(port: rtmidi.MidiIn | rtmidi.MidiOut) -> None:
    """Close `port` and delete its client (the rtmidi object is unusable afterwards)."""
    close_port(port)
    port.delete()
