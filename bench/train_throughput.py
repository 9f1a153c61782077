"""Training throughput (tokens/s) of both full-size models: forward, backward and Adamax step on
batches of 257-token windows, as `antiphon-train fit` runs them.

    .venv/bin/python bench/train_throughput.py [--threads 1] [--batch-size 8] [--steps 10] [--device cpu]

Tokens are random ids: the cost of a step does not depend on which tokens a window holds.
"""

from __future__ import annotations

import argparse
import time

import torch

from daemon.codec import VOCAB_SIZE
from daemon.model import build_model, default_config, parameter_count
from training.dataset import WINDOW
from training.fit import autocast_for, pick_device, window_loss


def measure(kind: str, batch_size: int, steps: int, warmup: int, device: torch.device) -> tuple[float, float]:
    """(tokens/s, seconds per step) over `steps` timed steps after `warmup` untimed ones."""
    torch.manual_seed(0)
    model = build_model(default_config(kind)).to(device).train()
    optimizer = torch.optim.Adamax(model.parameters(), lr=1e-3)
    batch = torch.randint(0, VOCAB_SIZE, (batch_size, WINDOW), device=device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast_for(device, kind, amp=True):
            loss = window_loss(model, batch)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    began = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - began
    return batch_size * (WINDOW - 1) * steps / seconds, seconds / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default=None)
    parser.add_argument("--models", nargs="+", default=["lstm", "transformer"], choices=["lstm", "transformer"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"{args.steps} timed steps after {args.warmup} warm-up")
    for kind in args.models:
        tokens_per_s, per_step = measure(kind, args.batch_size, args.steps, args.warmup, device)
        parameters = parameter_count(build_model(default_config(kind)))
        print(f"{kind:12s} {parameters:>10,} parameters  {tokens_per_s:>10,.0f} tokens/s  {per_step * 1000:>8.1f} ms/step")


if __name__ == "__main__":
    main()
