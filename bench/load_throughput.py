"""Reading a big folder of MIDI files: files/s with a cold and a warm token cache, peak memory, and
the peak memory of an `antiphon-train fit` start-up on that folder.

    nice -n 19 .venv/bin/python bench/load_throughput.py --data ../shared/data/reference --copies 10

The folder is made at run time in a temporary directory: --copies copies of DATA's train/ and test/
files under new names, each copy with its own bytes (an unknown chunk after the last track, which
MIDI readers skip) so that every file is a cache entry of its own. Each phase runs in a process of
its own with an empty or warm cache of its own; peak RSS is that process's (and its parsing workers').
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

READ = """
import json, sys, time
from training.folder_reader import read_folder
from training.token_cache import TokenCache
began = time.perf_counter()
counts = {"parsed": 0, "cached": 0, "files": 0, "tokens": 0}
for split in ("train", "test"):
    read = read_folder(sys.argv[1] + "/" + split, None, TokenCache(sys.argv[2]), workers=int(sys.argv[3]) or None,
                       progress=False)
    counts["parsed"] += read.parsed
    counts["cached"] += read.cached
    counts["files"] += len(read.files) + len(read.skipped)
    counts["tokens"] += sum(len(item.tokens) for item in read.files)
result = dict(counts, seconds=time.perf_counter() - began)
"""
FIT = """
import sys
from training.cli import main
result = {"code": main(sys.argv[1:])}
"""
PEAK = """
import json as _json, resource as _resource
result["rss_mib"] = max(_resource.getrusage(who).ru_maxrss for who in (_resource.RUSAGE_SELF, _resource.RUSAGE_CHILDREN)) / 1024
print(_json.dumps(result))
"""


def make_folder(data: Path, into: Path, copies: int) -> int:
    """`copies` copies of data/train and data/test under new names, each copy's bytes its own."""
    count = 0
    for split in ("train", "test"):
        (into / split).mkdir(parents=True)
        for path in sorted((data / split).iterdir()):
            content = path.read_bytes()
            for copy in range(copies):
                tag = f"copy {copy}".encode()
                (into / split / f"{copy:03d}-{path.name}").write_bytes(content + b"XCPY" + struct.pack(">I", len(tag)) + tag)
                count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a data folder with train/ and test/")
    parser.add_argument("--copies", type=int, default=10)
    parser.add_argument("--workers", type=int, default=0, help="parsing processes (0: one per CPU)")
    parser.add_argument("--model", default="transformer", choices=("transformer", "lstm"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="load-throughput-"))
    try:
        files = make_folder(args.data, work / "data", args.copies)
        print(f"{files:,} files ({args.copies} copies of {args.data}), {args.workers or os.cpu_count()} workers", flush=True)
        tokens = 0
        for phase in ("cold", "warm"):
            result, _ = run_child(READ, [str(work / "data"), str(work / "cache"), str(args.workers)])
            tokens = result["tokens"]
            print(f"{phase}: {result['files'] / result['seconds']:8.1f} files/s  ({result['files']:,} files, "
                  f"{result['parsed']:,} parsed, {result['cached']:,} from the cache, {result['tokens']:,} tokens, "
                  f"{result['seconds']:.1f} s)  peak RSS {result['rss_mib']:,.0f} MiB", flush=True)
        env = dict(os.environ, XDG_CACHE_HOME=str(work / "xdg"), PYTHONPATH=str(ROOT))
        shutil.copytree(work / "cache", work / "xdg" / "antiphon" / "tokens")
        fit = ["fit", str(work / "data"), "--model", args.model, "--out", str(work / "run"), "--max-steps", "0",
               "--threads", "1", "--no-progress"]
        result, seconds = run_child(FIT, fit, env)
        print(f"fit start-up (warm cache, {args.model}, --max-steps 0): {seconds:.1f} s, peak RSS {result['rss_mib']:,.0f} MiB "
              f"for {tokens:,} tokens; every window materialised would be {tokens * 257 * 2 / 2**30:,.1f} GiB of int16")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_child(code: str, arguments: list[str], env: dict | None = None) -> tuple[dict, float]:
    """(the JSON the child printed last, with its peak RSS in MiB, its own or its parsing
    workers' whichever is larger, as "rss_mib"; seconds)."""
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code + PEAK, *arguments], capture_output=True, cwd=ROOT, env=env, text=True)
    seconds = time.perf_counter() - began
    if done.returncode:
        raise SystemExit(f"{arguments[:3]} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]), seconds


if __name__ == "__main__":
    main()
