"""Log lines under systemd: the journal's priority prefix and no timestamp of our own, only when
stderr really is the stream JOURNAL_STREAM names."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.journal import priority

ROOT = Path(__file__).resolve().parents[1]
LOG_THREE = ("from daemon.journal import setup_logging; import logging; setup_logging('debug'); "
             "log = logging.getLogger('antiphon'); log.debug('d'); log.warning('careful'); log.error('bad\\nline two')")


def lines_logged(tmp_path: Path, journal: str | None) -> list[str]:
    """Run a child that logs, its stderr a file; JOURNAL_STREAM "self" names that very file."""
    out = tmp_path / "stderr"
    with out.open("wb") as stderr:
        info = os.fstat(stderr.fileno())
        env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
        if journal is not None:
            env["JOURNAL_STREAM"] = f"{info.st_dev}:{info.st_ino}" if journal == "self" else journal
        subprocess.run([sys.executable, "-c", LOG_THREE], cwd=ROOT, env=env, stderr=stderr, check=True)
    return out.read_text().splitlines()


def test_journal_lines_carry_the_priority_and_no_timestamp(tmp_path: Path) -> None:
    assert lines_logged(tmp_path, "self") == [
        "<7>DEBUG antiphon: d", "<4>WARNING antiphon: careful", "<3>ERROR antiphon: bad", "<3>line two",
    ]


@pytest.mark.parametrize("journal", [None, "1:2", "garbage"])
def test_a_terminal_or_an_inherited_journal_stream_gets_timestamps(tmp_path: Path, journal: str | None) -> None:
    lines = lines_logged(tmp_path, journal)
    assert len(lines) == 4 and not any(line.startswith("<") for line in lines)
    assert lines[1].endswith(" WARNING antiphon: careful") and lines[1][:4].isdigit()  # the year of asctime


def test_priorities_follow_syslog() -> None:
    assert [priority(n) for n in (5, 10, 20, 25, 30, 40, 50)] == [7, 7, 6, 6, 4, 3, 2]
