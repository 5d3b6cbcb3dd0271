"""The command line looks finished: real metavars in --help, layer shapes, info on unfinished work."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from alexfeat.lock import RunLock
from alexfeat.store.paths import lock_path, partial_path, progress_path
from alexfeat.store.provenance import Provenance
from alexfeat.store.writer import Progress, StoreWriter
from tests.conftest import hold_lock, make_class_folder

COMMANDS = ("featurize", "merge", "layers", "info", "fit-svm", "fit-logreg", "fit-mlp", "evaluate", "predict",
            "train-scratch", "finetune", "plot", "demo")


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_shows_real_metavars(command):
    from alexfeat.cli.app import app

    args = [command, "--help"] if command else ["--help"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "100"}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    usage = next(line for line in result.output.splitlines() if "Usage:" in line)
    assert "{" not in usage and not re.search(r"<[a-z]", result.output), result.output  # {images}, <bool>, <str>
    if command == "featurize":
        assert "Usage: alexfeat featurize [OPTIONS] IMAGES... [OUT]" in usage
        assert re.search(r"--batch-size\s+INT", result.output) and re.search(r"--pool\s+\[none\|avg\|max\]",
                                                                             result.output)
        assert re.search(r"--overwrite\s+Replace", result.output)  # a flag shows no type at all


def test_layers_prints_each_layers_output_shape(cli):
    result = cli("layers", "--model", "alexnet")
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines()[1:]}
    assert "256x13x13 (43264 values)" in lines["conv5"] and lines["fc7"].endswith("4096")
    assert "224x224" in result.output.splitlines()[0]


def test_info_on_an_unfinished_store_says_how_far_it_got(cli, tmp_path):
    out = tmp_path / "f.h5"
    writer = StoreWriter.create(out, 10, {"fc7": 8}, "float32", Provenance(model="alexnet", layers=("fc7",)))
    writer.write_rows(0, {"fc7": np.ones((3, 8), np.float32)})
    writer.close()
    Progress("fp", next_index=4, rows=3, skipped=[(2, "truncated")]).save(progress_path(out))
    for name in (out, partial_path(out)):
        result = cli("info", name)
        assert result.exit_code == 0, result.output
        assert "4 of 10 images done (3 rows written, 1 skipped), 6 to go" in result.output
        assert "--resume" in result.output and "layer fc7: dimension 8" in result.output
    holder = hold_lock(lock_path(out))
    try:
        assert "a featurize run is writing it now" in cli("info", out).output
    finally:
        holder.kill()
        holder.wait()
    assert not RunLock.is_held(lock_path(out))


def test_info_on_a_run_folder(cli, tmp_path):
    from alexfeat.trainers.config import TrainConfig
    from alexfeat.trainers.run_dir import RunDir

    run = RunDir.create(tmp_path / "run", TrainConfig("scratch", tmp_path, tmp_path, tmp_path / "run", epochs=5))
    for epoch, acc in enumerate((0.5, 0.75, 0.625), start=1):
        run.append_metrics({"epoch": epoch, "round": 1, "test_acc": acc})
    torch.save({"w": torch.zeros(250_000)}, run.last_path)
    result = cli("info", run.path)
    assert result.exit_code == 0, result.output
    assert "scratch run" in result.output and "3 epoch(s) done of 5" in result.output
    assert "best.pt: epoch 2, chosen by test (no --val-split: an optimistic choice) accuracy 0.7500" in result.output
    assert "test accuracy: last 0.6250\n" in result.output
    assert "last.pt: 1.0 MB" in result.output


def test_ctrl_c_in_featurize_says_interrupted_once(cli, tmp_path, monkeypatch):
    import alexfeat.featurizer.featurize as featurize

    def interrupted(config):
        raise KeyboardInterrupt

    monkeypatch.setattr(featurize, "featurize", interrupted)
    result = cli("featurize", make_class_folder(tmp_path / "imgs", per_class=1), tmp_path / "f.h5", "-q")
    assert result.exit_code == 130
    assert result.output.count("interrupted") == 1 and "--resume" in result.output


def test_ctrl_c_in_training_says_interrupted_once(cli, tmp_path, monkeypatch):
    import alexfeat.trainers.engine as engine

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine._Trainer, "_epoch", interrupted)
    train, test = make_class_folder(tmp_path / "train", per_class=2), make_class_folder(tmp_path / "test", per_class=1)
    result = cli("train-scratch", train, "--test-dir", test, "-o", tmp_path / "run", "--width-mult", "0.125",
                 "--image-size", "64", "--workers", "0", "-q")
    assert result.exit_code == 130
    assert result.output.count("interrupted") == 1 and "--resume" in result.output


def test_a_short_run_shows_its_rate_not_dashes():
    from rich.progress import Progress as Bar

    from alexfeat.progress import _RateColumn

    with Bar(_RateColumn(), disable=True) as bar:
        task = bar.add_task("featurize", total=10, resumed_at=0)
        bar.advance(task, 10)  # one update: too few for rich's own speed estimate
        rendered = _RateColumn().render(bar.tasks[0]).plain
    assert "--" not in rendered and rendered.endswith("img/s") and float(rendered.split()[0]) > 0


def test_the_cli_offers_exactly_the_core_choice_lists(blobs):
    import typer.main

    from alexfeat.classifiers.choices import KERNELS, SCALES
    from alexfeat.classifiers.fit import FitConfig
    from alexfeat.cli.app import app
    from alexfeat.choices import COMPRESSIONS, DECODES, DEVICES, DTYPES, ENGINES, POOLS, RESIZE_MODES
    from alexfeat.errors import AlexfeatError
    from alexfeat.trainers.config import AUGMENTS, LR_SCHEDULES, OPTIMIZERS, SCHEDULES

    expected = {
        "featurize": {"pool": POOLS, "dtype": DTYPES, "device": DEVICES, "decode": DECODES, "engine": ENGINES,
                      "compression": COMPRESSIONS},
        "fit-svm": {"kernel": KERNELS, "scale": SCALES},
        "predict": {"device": DEVICES},
        "train-scratch": {"optimizer": OPTIMIZERS, "augment": AUGMENTS, "resize_mode": RESIZE_MODES,
                          "lr_schedule": LR_SCHEDULES, "device": DEVICES},
        "finetune": {"schedule": SCHEDULES},
    }
    commands = typer.main.get_command(app).commands
    for command, options in expected.items():
        params = {p.name: p for p in commands[command].params}
        for name, choices in options.items():
            offered = tuple(getattr(c, "value", c) for c in params[name].type_descriptor.choices)
            assert offered == choices, (command, name)
    with pytest.raises(AlexfeatError, match="unknown --kernel 'poly': use linear, rbf"):
        FitConfig("svm", blobs["separable"][0], kernel="poly")  # refused when the settings are made, not mid-fit
