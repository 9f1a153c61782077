"""Log lines for a terminal, or for systemd's journal when stderr is connected to it.

journald stamps every line itself and reads a leading `<N>` as the line's syslog priority, so a
line to the journal carries that prefix and no timestamp of its own: `journalctl -p warning` then
finds the warnings. JOURNAL_STREAM names the journal's stream ("device:inode"); it is inherited by
children, so it counts only when it is still our stderr."""

from __future__ import annotations

import logging
import os
import sys

TERMINAL_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(levelname)s %(name)s: %(message)s"
# sd-daemon(3): <2> critical, <3> error, <4> warning, <6> info, <7> debug.
PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))
DEBUG_PRIORITY = 7


def priority(levelno: int) -> int:
    return next((value for level, value in PRIORITIES if levelno >= level), DEBUG_PRIORITY)


class JournalFormatter(logging.Formatter):
    """Every line of a record (a traceback's too) prefixed with the record's priority."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


def stderr_is_journal() -> bool:
    stream = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = stream.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        info = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return (info.st_dev, info.st_ino) == (int(device), int(inode))


def setup_logging(level: str) -> None:
    """The root logger on stderr at `level`, formatted for the journal or for a terminal."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JournalFormatter(JOURNAL_FORMAT) if stderr_is_journal() else logging.Formatter(TERMINAL_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])
