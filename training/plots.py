"""The run's log: one JSON line per epoch, and a PNG of the loss curves."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_log(path: str | os.PathLike, history: list[dict]) -> None:
    """Rewrite the whole log from the run's history (atomically), so it always matches the checkpoint."""
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text("".join(json.dumps(record) + "\n" for record in history))
    os.replace(temporary, path)


def plot_losses(path: str | os.PathLike, history: list[dict], title: str) -> None:
    """Train and test loss per epoch, the best epoch marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [record["epoch"] for record in history]
    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=100)
    axes.plot(epochs, [r["train_loss"] for r in history], marker="o", label="train (epoch mean)")
    axes.plot(epochs, [r["test_loss"] for r in history], marker="o", label="test")
    if history:
        best = min(history, key=lambda r: r["test_loss"])
        axes.axvline(best["epoch"], color="grey", linestyle=":", label=f"best epoch {best['epoch']}: {best['test_loss']:.4f}")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("epoch")
    axes.set_ylabel("mean NLL per token (nats)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    path = Path(path)
    temporary = path.with_name(path.stem + ".tmp" + path.suffix)
    figure.savefig(temporary)
    plt.close(figure)
    os.replace(temporary, path)
