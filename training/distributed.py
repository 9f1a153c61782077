"""This process's place under torchrun, and the device it trains on."""

from __future__ import annotations

import os

import torch

from training.recipe import FitError


class Distributed:
    """This process's place under torchrun (one process of one when run directly)."""

    def __init__(self, device: torch.device):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.active = self.world > 1
        if self.active and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def any(self, flag: bool) -> bool:
        """True on every process when `flag` is true on any (so all stop at the same step)."""
        if not self.active:
            return flag
        value = torch.tensor([1.0 if flag else 0.0])
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
        return bool(value.item() > 0)

    def sum(self, values: list[float]) -> list[float]:
        if not self.active:
            return values
        tensor = torch.tensor(values, dtype=torch.float64)
        torch.distributed.all_reduce(tensor)
        return tensor.tolist()

    def gather(self, item):
        if not self.active:
            return [item]
        items = [None] * self.world
        torch.distributed.all_gather_object(items, item)
        return items

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def check_in_sync(self, model: torch.nn.Module) -> None:
        """Under DDP every process must hold the same parameters; a drift is a bug, so stop loudly."""
        if not self.active:
            return
        total = sum(p.detach().double().sum().item() for p in model.parameters())
        sums = self.gather(total)
        if max(sums) - min(sums) > 1e-9 * max(1.0, abs(sums[0])):
            raise FitError(f"processes out of sync: parameter sums {sums}")

    def main_first(self, work):
        """`work()` on the main process first, then on the others (e.g. the main one fills a cache
        that the others then read)."""
        if not self.main:
            self.barrier()
        result = work()
        if self.main:
            self.barrier()
        return result

    def close(self) -> None:
        if self.active and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def pick_device(name: str | None, local_rank: int = 0) -> torch.device:
    if name is None or name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FitError(f"device {name!r} asked for but CUDA is not available here")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device
