"""MIDI input from an rtmidi port to the event loop.

`InputPoller` reads the port from one thread of our own and stamps each message the moment it
sees it (on the daemon's clock, `clock.now()`); `InputBuffer` hands the messages to the loop in
one place, bounded: a flood drops the oldest messages (counted) instead of growing memory, and a
malformed message (a truncated one, stray data bytes) is dropped on its own (counted).
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable

import mido
import rtmidi

from daemon.clock import now
from daemon.port_contract import Receiver

INPUT_BUFFER = 4096
RTMIDI_QUEUE = 4096  # RtMidi's own input queue, drained by InputPoller (its default is 100)
POLL_S = 0.001  # how late an input message may be stamped
SYSEX_END = 0xF7
PROBES_IN_FLIGHT = 64  # jack_keeper.SysexGuard's probes remembered; their numbers run 0..127


class InputPoller:
    """Reads one rtmidi input port from a thread of its own, stamping each message on arrival.

    Never an rtmidi callback: under JACK, RtMidi runs the callback in the server's process
    thread, where it must take the GIL; held up past a period by a thread that computes, it
    loses or doubles events. Without a callback RtMidi queues input itself and this thread
    drains the queue every POLL_S. `lock` is held while reading, so whoever closes, reopens or
    swaps the port under it never does so mid-read."""

    def __init__(self, deliver: Callable[[bytes, float], None], port: rtmidi.MidiIn | None = None) -> None:
        self.deliver = deliver
        self.lock = threading.Lock()
        self.probes_back: deque[int] = deque(maxlen=PROBES_IN_FLIGHT)  # SysexGuard's, as read (not delivered)
        self._port = port
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="midi-in", daemon=True)
        self._thread.start()

    def attach(self, port: rtmidi.MidiIn | None) -> None:
        """Read `port` from now on (None: nothing); once this returns the old one is untouched."""
        with self.lock:
            self._port = port

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join()

    def _run(self) -> None:
        read_empty = stamp = now()
        while not self._stopping.is_set():
            with self.lock:
                event = self._port.get_message() if self._port is not None else None
            read_at = now()
            if event is None:
                read_empty = read_at
                self._stopping.wait(POLL_S)
                continue
            data = event[0]
            if len(data) == 2 and data[1] == SYSEX_END and data[0] < 0x80:
                self.probes_back.append(data[0])
                continue
            # The message came after the last empty read and before this read. RtMidi's delta from the
            # previous message is exact (server time): where it lands inside that window it is the
            # tighter bound, so messages read late (this thread waited for the GIL) keep the
            # spacing they were played with.
            candidate = stamp + event[1]
            stamp = candidate if read_empty < candidate <= read_at else read_at
            self.deliver(bytes(event[0]), stamp)


class InputBuffer:
    """The input thread -> the event loop, bounded; the loop is woken once per burst."""

    def __init__(self, loop: asyncio.AbstractEventLoop, deliver: Receiver) -> None:
        self.loop = loop
        self.deliver = deliver
        self.items: deque[tuple[bytes, float]] = deque()
        self.lock = threading.Lock()
        self.dropped = 0
        self.malformed = 0  # read by the loop only, as is last_malformed
        self.last_malformed: tuple[bytes, Exception] | None = None
        self._scheduled = False

    def put(self, data: bytes, arrived: float) -> None:
        with self.lock:
            if len(self.items) >= INPUT_BUFFER:
                self.items.popleft()
                self.dropped += 1
            self.items.append((data, arrived))
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self.loop.call_soon_threadsafe(self.drain)
        except RuntimeError:  # the loop is closed: the daemon is exiting
            pass

    def drain(self) -> None:
        with self.lock:
            batch, self.items = self.items, deque()
            self._scheduled = False
        for data, arrived in batch:
            try:
                message = mido.Message.from_bytes(data)
            except (ValueError, TypeError, IndexError) as error:  # truncated, stray data bytes, unknown status
                self.malformed += 1
                self.last_malformed = (data, error)
                continue
            self.deliver(message, arrived)
