"""Training curves of one run, and test accuracy of several runs on one chart."""

from __future__ import annotations

from pathlib import Path

from alexfeat.atomic import atomic_savefig
from alexfeat.errors import AlexfeatError
from alexfeat.figures import figure_format, pyplot
from alexfeat.output import refuse_input, same_file
from alexfeat.trainers.run_dir import RunDir

__all__ = ["plot_curves", "plot_compare", "check_compare_output"]


def integer_ticks():
    """Epochs are whole numbers: no tick at 2.5, nor at 0.96 when one epoch spans the axis (the locator falls
    back to fractions unless it may show a single tick)."""
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True, min_n_ticks=1)


def plot_curves(run: RunDir) -> None:
    """Loss and accuracy against epoch, train/val/test, with round boundaries and the start of weight
    averaging dashed."""
    rows = run.metrics()
    if not rows:
        return
    plt = pyplot()
    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for split in ("train", "val", "test"):
        if any(r[f"{split}_loss"] is not None for r in rows):
            ax_loss.plot(epochs, [r[f"{split}_loss"] for r in rows], marker=".", label=split)
            ax_acc.plot(epochs, [r[f"{split}_acc"] for r in rows], marker=".", label=split)
    marks = [(row["epoch"], f"round {row['round']}") for prev, row in zip(rows, rows[1:])
             if row["round"] != prev["round"]]
    if marks:
        marks.insert(0, (rows[0]["epoch"], f"round {rows[0]['round']}"))
    swa_from = run.config().swa_from
    if swa_from and rows[0]["epoch"] <= swa_from <= rows[-1]["epoch"]:
        marks.append((swa_from, "weight averaging"))
    for ax in (ax_loss, ax_acc):
        for epoch, text in marks:
            ax.axvline(epoch - 0.5, color="grey", linestyle="--", linewidth=0.8)
            ax.text(epoch - 0.4, 1.0, text, transform=ax.get_xaxis_transform(), fontsize=7, color="grey", va="top",
                    rotation=90)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(integer_ticks())
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(run.path.name)
    fig.tight_layout()
    atomic_savefig(fig, run.curves_path, dpi=110)
    plt.close(fig)


def check_compare_output(runs: list[Path], out: Path) -> list[RunDir]:
    """The run folders, once ``out`` is known to lie outside them (a run folder's files are its trainer's:
    ``curves.png`` included) and to be a format matplotlib writes."""
    folders = [RunDir.open(path) for path in runs]
    refuse_input(out, [f for run in folders for f in (run.metrics_path, run.config_path)])
    for run in folders:
        if same_file(Path(out).parent, run.path):
            raise AlexfeatError(f"{out} is in the run folder {run.path}, whose files are its trainer's: "
                                f"write the chart outside it")
    figure_format(out)
    return folders


def plot_compare(runs: list[Path], out: Path, labels: list[str] | None = None) -> None:
    """Test accuracy against epoch for each run folder, on one chart, labelled by folder name or ``labels``."""
    if labels is not None and len(labels) != len(runs):
        raise AlexfeatError(f"--labels gives {len(labels)} names for {len(runs)} runs: give one per run")
    folders = check_compare_output(runs, out)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (path, run) in enumerate(zip(runs, folders)):
        rows = run.metrics()
        if not rows:
            raise AlexfeatError(f"{path} has no finished epoch yet")
        name = labels[i] if labels else Path(path).resolve().name
        ax.plot([r["epoch"] for r in rows], [r["test_acc"] for r in rows], marker=".",
                label=f"{name} (last {rows[-1]['test_acc']:.3f})")
    ax.xaxis.set_major_locator(integer_ticks())
    ax.set(xlabel="epoch", ylabel="test accuracy", title="test accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_savefig(fig, out, dpi=110)
    plt.close(fig)
