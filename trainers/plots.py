"""Training curves of one run, and test accuracy of several runs on one chart."""

from __future__ import annotations

from pathlib import Path

from alexfeat.featurizer.atomic import atomic_savefig
from alexfeat.featurizer.errors import AlexfeatError
from alexfeat.trainers.run_dir import RunDir

__all__ = ["plot_curves", "plot_compare"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(run: RunDir) -> None:
    """Loss and accuracy against epoch, train/val/test, with round boundaries dashed."""
    rows = run.metrics()
    if not rows:
        return
    plt = _pyplot()
    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for split in ("train", "val", "test"):
        if any(r[f"{split}_loss"] is not None for r in rows):
            ax_loss.plot(epochs, [r[f"{split}_loss"] for r in rows], marker=".", label=split)
            ax_acc.plot(epochs, [r[f"{split}_acc"] for r in rows], marker=".", label=split)
    for prev, row in zip(rows, rows[1:]):
        if row["round"] != prev["round"]:
            for ax in (ax_loss, ax_acc):
                ax.axvline(prev["epoch"] + 0.5, color="grey", linestyle="--", linewidth=0.8)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(run.path.name)
    fig.tight_layout()
    atomic_savefig(fig, run.curves_path, dpi=110)
    plt.close(fig)


def plot_compare(runs: list[Path], out: Path) -> None:
    """Test accuracy against epoch for each run folder, on one chart."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for path in runs:
        rows = RunDir.open(path).metrics()
        if not rows:
            raise AlexfeatError(f"{path} has no finished epoch yet")
        ax.plot([r["epoch"] for r in rows], [r["test_acc"] for r in rows], marker=".",
                label=f"{Path(path).name} (last {rows[-1]['test_acc']:.3f})")
    ax.set(xlabel="epoch", ylabel="test accuracy", title="test accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_savefig(fig, out, dpi=110)
    plt.close(fig)
