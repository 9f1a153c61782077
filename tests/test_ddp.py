"""`fit` under torchrun: two CPU processes on the gloo backend stay in sync and resume exactly, and
only the first one parses the MIDI files (the other reads the token cache it filled)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file
from tiny_midi import TINY_LSTM, write_split

from training.checkpoint import load_checkpoint

# Each process trains, then writes the parameters it ended with and a line about its run, each to
# files of its own (two processes printing to one stdout interleave their lines).
WORKER = """
import os, sys
import torch
from safetensors.torch import save_file
import training.folder_reader as reader
from training.fit import Limits, Recipe, Run

torch.set_num_threads(1)
parsed = []
parse_all = reader._parse_all
def counted(paths, workers):
    parsed.extend(paths)
    return parse_all(paths, workers)
reader._parse_all = counted
data, out, epochs, resume = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "resume"
recipe = None if resume else Recipe.paper(
    "lstm", model_config={config}, epoch_fraction=0.05, eval_windows=64, augment_transpose=True
)
run = Run(data, out, recipe, Limits(max_epochs=epochs, patience=10), resume, "cpu", True, False, print)
result = run.run()
rank = os.environ["RANK"]
save_file({{k: v.contiguous() for k, v in run.model.state_dict().items()}}, f"{{out}}/rank{{rank}}.safetensors")
with open(f"{{out}}/rank{{rank}}.txt", "w") as summary:
    summary.write(f"rank {{rank}} world {{os.environ['WORLD_SIZE']}} steps {{result.step}} parsed {{len(parsed)}}")
"""


def torchrun(worker: Path, data: Path, out: Path, epochs: int, mode: str, cache: Path) -> None:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        str(worker), str(data), str(out), str(epochs), mode,
    ]
    # gloo on the loopback interface only (it would otherwise bind the address the hostname resolves to)
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", PYTHONPATH=str(Path(__file__).resolve().parents[1]),
               XDG_CACHE_HOME=str(cache))
    env.pop("CACHE_DIRECTORY", None)
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def losses(records: list[dict]) -> list[float]:
    return [value for record in records for value in (record["train_loss"], record["test_loss"])]


@pytest.mark.slow
def test_two_gloo_processes_stay_in_sync_and_resume_exactly(tmp_path):
    data = write_split(tmp_path / "data", train=6, test=2)
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER.format(config=repr(TINY_LSTM)))

    cache = tmp_path / "cache"
    torchrun(worker, data, tmp_path / "one", 2, "fresh", cache)
    # 48 windows an epoch in steps of 2 processes x 8 windows; the 8 files parsed once, by the first
    for rank, parsed in ((0, 8), (1, 0)):
        assert (tmp_path / "one" / f"rank{rank}.txt").read_text() == f"rank {rank} world 2 steps 6 parsed {parsed}"
    assert len([entry for entry in (cache / "antiphon").rglob("*.tokens")]) == 8
    ranks = [load_file(str(tmp_path / "one" / f"rank{r}.safetensors")) for r in (0, 1)]
    assert set(ranks[0]) == set(ranks[1])
    for name, tensor in ranks[0].items():
        assert tensor.equal(ranks[1][name]), f"{name} differs between the processes"
    log = [json.loads(line) for line in (tmp_path / "one" / "train_log.jsonl").read_text().splitlines()]
    assert [r["steps"] for r in log] == [3, 6]
    checkpoint = load_checkpoint(tmp_path / "one" / "checkpoint")
    assert checkpoint.state["world_size"] == 2 and len(checkpoint.state["augment"]) == 2
    assert {"torch_cpu/rank0", "torch_cpu/rank1"} <= set(checkpoint.rng)
    # the processes draw different augmentations and dropout masks
    assert checkpoint.state["augment"][0] != checkpoint.state["augment"][1]
    assert not checkpoint.rng["torch_cpu/rank0"].equal(checkpoint.rng["torch_cpu/rank1"])

    torchrun(worker, data, tmp_path / "split", 1, "fresh", cache)
    torchrun(worker, data, tmp_path / "split", 2, "resume", cache)
    resumed = [json.loads(line) for line in (tmp_path / "split" / "train_log.jsonl").read_text().splitlines()]
    assert len(resumed) == 2 and losses(resumed) == pytest.approx(losses(log), abs=1e-6)
    final = load_file(str(tmp_path / "split" / "rank0.safetensors"))
    assert all(final[name].allclose(tensor, atol=1e-6) for name, tensor in ranks[0].items())
