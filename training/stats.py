"""What a folder of MIDI files gives as training data: files, notes kept and dropped, tokens, windows.

`windows` counts our 257-token windows at stride 1. `windows_unmerged` counts them as the paper's code
did: it kept notes with the same start and pitch that our codec merges, 3 tokens each, so per file
it adds 3 * dropped['merged'] tokens before counting windows.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from training.dataset import load_streams, windows_in
from training.token_cache import TokenizedFile

# The paper's window counts (Section 5.1) for the reference data's two folders.
PAPER_WINDOWS = {("reference", "train"): 639_470, ("reference", "test"): 70_248}
MERGED_TOKENS = 3  # a note is (OFFSET, PITCH, DURATION)


def paper_windows_for(folder: Path) -> int | None:
    """The paper's count when `folder` is the reference data's train/ or test/ folder."""
    return PAPER_WINDOWS.get(tuple(folder.resolve().parts[-2:]))


def folder_stats(folder: str | os.PathLike, report=None) -> dict:
    """Stats of one folder of MIDI files (recursively); raises DataError when nothing is readable."""
    folder = Path(folder)
    loaded, skipped = load_streams(folder, report)
    return stats_of(folder, loaded, skipped)


def stats_of(folder: Path, loaded: list[TokenizedFile], skipped: list[str]) -> dict:
    dropped: Counter = Counter()
    for item in loaded:
        dropped.update(item.dropped)
    stats = {
        "folder": str(folder),
        "files": len(loaded),
        "skipped": skipped,
        "notes": {"kept": sum(item.notes for item in loaded), "dropped": dict(sorted(dropped.items()))},
        "tokens": sum(len(item.tokens) for item in loaded),
        "windows": sum(windows_in(len(item.tokens)) for item in loaded),
        "windows_unmerged": sum(
            windows_in(len(item.tokens) + MERGED_TOKENS * item.dropped.get("merged", 0)) for item in loaded
        ),
    }
    paper = paper_windows_for(folder)
    if paper is not None:
        stats["paper_windows"] = paper
        stats["windows_vs_paper_percent"] = round(100.0 * (stats["windows"] - paper) / paper, 3)
        stats["windows_unmerged_vs_paper_percent"] = round(100.0 * (stats["windows_unmerged"] - paper) / paper, 3)
    return stats


def data_stats(folder: str | os.PathLike, report=None) -> dict:
    """Stats of a data folder; with train/ and test/ subfolders, their totals plus each under 'splits'."""
    folder = Path(folder)
    parts = [folder / "train", folder / "test"]
    if not all(part.is_dir() for part in parts):
        return folder_stats(folder, report)
    splits = {part.name: folder_stats(part, report) for part in parts}
    dropped: Counter = Counter()
    for split in splits.values():
        dropped.update(split["notes"]["dropped"])
    return {
        "folder": str(folder),
        "files": sum(s["files"] for s in splits.values()),
        "skipped": [line for s in splits.values() for line in s["skipped"]],
        "notes": {"kept": sum(s["notes"]["kept"] for s in splits.values()), "dropped": dict(sorted(dropped.items()))},
        "tokens": sum(s["tokens"] for s in splits.values()),
        "windows": sum(s["windows"] for s in splits.values()),
        "windows_unmerged": sum(s["windows_unmerged"] for s in splits.values()),
        "splits": splits,
    }


def format_stats(stats: dict, indent: str = "") -> list[str]:
    """Human-readable lines of a stats dict."""
    dropped = stats["notes"]["dropped"]
    lines = [
        f"{indent}{stats['folder']}",
        f"{indent}  files read     {stats['files']:>10,}",
        f"{indent}  files skipped  {len(stats['skipped']):>10,}",
    ]
    lines += [f"{indent}    {line}" for line in stats["skipped"]]
    lines.append(f"{indent}  notes kept     {stats['notes']['kept']:>10,}")
    lines.append(f"{indent}  notes dropped  {sum(dropped.values()):>10,}" + (
        "  (" + ", ".join(f"{reason} {count:,}" for reason, count in dropped.items()) + ")" if dropped else ""))
    lines.append(f"{indent}  tokens         {stats['tokens']:>10,}")
    lines.append(f"{indent}  windows        {stats['windows']:>10,}  (257 tokens, stride 1)")
    lines.append(f"{indent}  windows_unmerged {stats['windows_unmerged']:>8,}  (merged duplicates kept, as the paper counted)")
    if "paper_windows" in stats:
        lines.append(
            f"{indent}  paper          {stats['paper_windows']:>10,}  (windows {stats['windows_vs_paper_percent']:+.2f}%, "
            f"unmerged {stats['windows_unmerged_vs_paper_percent']:+.2f}%)"
        )
    for split in stats.get("splits", {}).values():
        lines += format_stats(split, indent + "  ")
    return lines
