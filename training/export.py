"""A run's best weights as a weights folder to ship: the weights (fp16 on request), their config
with the run's provenance, the training log and the loss curves; never the checkpoint."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from daemon.weights import load_weights, save_weights

RUN_RECORDS = ("train_log.jsonl", "loss.png")


def export_weights(run: str | Path, out: str | Path, half: bool = False) -> Path:
    """Write OUT from the weights folder RUN; raises WeightsError naming what is wrong with RUN."""
    run, out = Path(run), Path(out)
    loaded = load_weights(run)
    provenance = dict(loaded.meta.get("provenance", {}))
    provenance["stored_as"] = "float16" if half else "float32"
    save_weights(out, loaded.model, loaded.config, provenance, dtype=torch.float16 if half else torch.float32)
    for name in RUN_RECORDS:
        if (run / name).is_file():
            shutil.copyfile(run / name, out / name)
    return out
