"""A user trains AlexNet from scratch and fine-tunes a pretrained network, layer by layer."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from alexfeat.featurizer import FeatureStore
from alexfeat.featurizer.checkpoint import load_checkpoint
from alexfeat.featurizer.models import Arch, build_network
from tests.conftest import make_class_folder
from alexfeat.trainers.config import TrainConfig
from alexfeat.trainers.engine import plan_rounds
from alexfeat.trainers.groups import layer_groups, set_trainable

TINY = ("--width-mult", "0.125", "--image-size", "64", "--batch-size", "8", "--workers", "0", "-q")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    return make_class_folder(tmp_path / "train", per_class=16), make_class_folder(tmp_path / "test", per_class=6)


def metrics(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_scratch_run_learns_a_separable_task(cli, folders, tmp_path):
    train, test = folders
    run = tmp_path / "scratch"
    result = cli("train-scratch", train, "--test-dir", test, "-o", run, "--epochs", "8", "--optimizer", "adam",
                 "--lr", "0.001", "--augment", "flip", *TINY)
    assert result.exit_code == 0, result.output
    assert "trained 8 epochs" in result.output
    rows = metrics(run)
    assert [int(r["epoch"]) for r in rows] == list(range(1, 9))
    assert list(rows[0]) == ["epoch", "round", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss",
                             "test_acc", "seconds"]
    assert float(rows[-1]["test_acc"]) >= 0.9 and float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert float(rows[-1]["lr"]) < float(rows[0]["lr"])  # cosine schedule
    for name in ("config.json", "last.pt", "best.pt", "curves.png", "skipped.csv"):
        assert (run / name).exists(), name
    config = json.loads((run / "config.json").read_text())
    assert config["width_mult"] == 0.125 and config["optimizer"] == "adam" and config["epochs"] == 8
    ckpt = load_checkpoint(run / "best.pt")
    assert ckpt["arch"]["num_classes"] == 2 and ckpt["classes"] == ["blue", "red"] and ckpt["preprocess"]["crop"] == 64


def test_kill_9_and_ctrl_c_then_resume_give_the_uninterrupted_metrics(folders, tmp_path):
    train, test = folders
    env = dict(os.environ)

    def alexfeat(*args: str | Path) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "alexfeat", *map(str, args)], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    settings = ("--epochs", "5", "--augment", "standard", "--dropout", "0.5", "--val-split", "0.25", *TINY)
    reference = tmp_path / "reference"
    assert alexfeat("train-scratch", train, "--test-dir", test, "-o", reference, *settings).wait() == 0

    def interrupt_after(run: Path, epochs: int, sig: int) -> subprocess.Popen:
        proc = alexfeat("train-scratch", train, "--test-dir", test, "-o", run, *settings)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if (run / "metrics.csv").exists() and len(metrics(run)) >= epochs:
                break
            time.sleep(0.01)
        proc.send_signal(sig)
        proc.wait()
        return proc

    killed = tmp_path / "killed"
    interrupt_after(killed, 2, signal.SIGKILL)
    assert 2 <= len(metrics(killed)) < 5
    interrupted = tmp_path / "interrupted"
    proc = interrupt_after(interrupted, 1, signal.SIGINT)
    assert proc.returncode == 130 and "--resume" in proc.stderr.read()
    assert load_checkpoint(interrupted / "last.pt")["epoch"] >= 1

    for run in (killed, interrupted):
        again = alexfeat("train-scratch", train, "--test-dir", test, "-o", run, *settings)
        assert again.wait() == 2 and "already holds a run" in again.stderr.read()
        resumed = alexfeat("train-scratch", "--resume", run, "-q")
        assert resumed.wait() == 0, resumed.stderr.read()
        got, want = metrics(run), metrics(reference)
        assert len(got) == len(want) == 5
        for g, w in zip(got, want):
            assert {k: v for k, v in g.items() if k != "seconds"} == {k: v for k, v in w.items() if k != "seconds"}
        final, ref = load_checkpoint(run / "last.pt"), load_checkpoint(reference / "last.pt")
        for key, value in ref["state_dict"].items():
            assert torch.equal(final["state_dict"][key], value), key


def test_layerwise_rounds_unfreeze_one_group_each(tmp_path):
    net = build_network(Arch(num_classes=2))
    groups = layer_groups(net, "alexnet")
    assert list(groups) == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]
    config = TrainConfig("finetune", tmp_path, tmp_path, tmp_path, until="conv4", epochs_per_round=3)
    rounds = plan_rounds(config, list(groups))
    assert [r.trainable for r in rounds] == [("fc8",), ("fc7", "fc8"), ("fc6", "fc7", "fc8"),
                                             ("conv5", "fc6", "fc7", "fc8"), ("conv4", "conv5", "fc6", "fc7", "fc8")]
    assert all(r.epochs == 3 for r in rounds)
    set_trainable(net, groups, ["conv5", "fc6", "fc7", "fc8"])
    trainable = {name for name, p in net.named_parameters() if p.requires_grad}
    assert trainable == {f"{m}.{w}" for m in ("features.10", "classifier.1", "classifier.4", "classifier.6")
                         for w in ("weight", "bias")}
    assert plan_rounds(TrainConfig("finetune", tmp_path, tmp_path, tmp_path, schedule="head", epochs=4),
                       list(groups)) == [rounds[0].__class__(1, ("fc8",), 4)]


def test_layerwise_finetune_leaves_frozen_layers_untouched(cli, folders, tmp_path, alexnet_weights):
    train, test = folders
    run = tmp_path / "ft"
    result = cli("finetune", train, "--test-dir", test, "-o", run, "--weights", alexnet_weights, "--until", "fc6",
                 "--epochs-per-round", "1", "--image-size", "64", "--batch-size", "8", "--lr", "0.01",
                 "--discriminative-lr", "--workers", "0", "-q")
    assert result.exit_code == 0, result.output
    assert [r["round"] for r in metrics(run)] == ["1", "2", "3"]
    pretrained = torch.load(alexnet_weights, weights_only=True)
    tuned = load_checkpoint(run / "last.pt")["state_dict"]
    for key, value in pretrained.items():
        if key.startswith("features."):
            assert torch.equal(tuned[key], value), f"{key} is frozen but changed"
        elif key.startswith(("classifier.1", "classifier.4")):
            assert not torch.equal(tuned[key], value), f"{key} was unfrozen but did not change"
    assert tuned["classifier.6.weight"].shape == (2, 4096)  # the new head


def test_checkpoints_are_reusable_by_featurize_predict_and_evaluate(cli, folders, tmp_path):
    train, test = folders
    run = tmp_path / "run"
    assert cli("train-scratch", train, "--test-dir", test, "-o", run, "--epochs", "3", "--optimizer", "adam",
               "--lr", "0.001", *TINY).exit_code == 0
    store = tmp_path / "feats.h5"
    result = cli("featurize", test, store, "--weights", run / "best.pt", "--layers", "fc7,fc8", "--workers", "0", "-q")
    assert result.exit_code == 0, result.output
    with FeatureStore.open(store) as s:
        assert s.dim("fc7") == 512 and s.dim("fc8") == 2 and s.attrs["preprocess"]["crop"] == 64
    out = tmp_path / "pred.csv"
    result = cli("predict", run / "best.pt", test, "--out", out, "--workers", "0", "-q")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 12 and list(rows[0]) == ["path", "prediction", "prob_blue", "prob_red", "error"]
    assert all(abs(float(r["prob_blue"]) + float(r["prob_red"]) - 1) < 1e-4 for r in rows)
    report = tmp_path / "r.json"
    result = cli("evaluate", run / "best.pt", test, "--report", report)
    assert result.exit_code == 0, result.output
    best = load_checkpoint(run / "best.pt")["metrics"]["test_acc"]
    assert json.loads(report.read_text())["accuracy"] == pytest.approx(best)
    assert cli("plot", run, run, "-o", tmp_path / "cmp.png").exit_code == 0 and (tmp_path / "cmp.png").exists()


def test_options_for_small_and_odd_data(cli, tmp_path):
    train = make_class_folder(tmp_path / "train", per_class=12)
    for extra in range(4):  # imbalanced: blue has 4 more images
        (train / "blue" / f"copy_{extra}.jpg").write_bytes((train / "blue" / "blue_00.jpg").read_bytes())
    (train / "red" / "broken.jpg").write_bytes(b"not a jpeg")
    test = make_class_folder(tmp_path / "test", per_class=4)
    run = tmp_path / "gray"
    result = cli("train-scratch", train, "--test-dir", test, "-o", run, "--epochs", "2", "--grayscale",
                 "--resize-mode", "pad", "--balanced", "--val-split", "0.25", "--label-smoothing", "0.1",
                 "--lr-schedule", "step", "--optimizer", "adamw", "--no-cache", *TINY)
    assert result.exit_code == 0, result.output
    ckpt = load_checkpoint(run / "best.pt")
    assert ckpt["arch"]["in_chans"] == 1 and ckpt["preprocess"]["mode"] == "pad"
    assert ckpt["state_dict"]["features.0.weight"].shape[1] == 1
    assert metrics(run)[0]["val_acc"] != ""
    skipped = list(csv.DictReader((run / "skipped.csv").open()))
    assert len(skipped) == 1 and skipped[0]["path"].endswith("broken.jpg")


def test_bad_training_input_is_a_clear_error(cli, tmp_path, folders):
    train, test = folders
    one_class = make_class_folder(tmp_path / "one", per_class=2)
    import shutil

    shutil.rmtree(one_class / "red")
    other = make_class_folder(tmp_path / "other", per_class=2)
    (other / "red").rename(other / "green")
    cases = [
        (("train-scratch", one_class, "--test-dir", test, "-o", tmp_path / "r1"), "at least two class"),
        (("train-scratch", train, "--test-dir", other, "-o", tmp_path / "r2"), "differ"),
        (("train-scratch", train, "-o", tmp_path / "r3"), "missing --test-dir"),
        (("train-scratch", "--resume", tmp_path), "not an alexfeat run folder"),
        (("finetune", train, "--test-dir", test, "-o", tmp_path / "r4", "--weights", "none", "--until", "fc9"),
         "not a layer group"),
    ]
    for args, message in cases:
        result = cli(*args, *TINY[:-1] if args[0] == "train-scratch" else ("--workers", "0"))
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and "Traceback" not in result.output


def test_finetune_keeps_batch_norm_statistics_unless_asked(cli, folders, tmp_path):
    train, test = folders
    initial = build_network(Arch(model="resnet18"))
    torch.manual_seed(0)
    weights = tmp_path / "resnet18.pth"
    torch.save(initial.state_dict(), weights)
    common = ("--model", "resnet18", "--weights", weights, "--schedule", "full", "--epochs", "1", "--image-size",
              "32", "--batch-size", "8", "--workers", "0", "-q")
    for run, extra in ((tmp_path / "kept", ()), (tmp_path / "trained", ("--train-bn",))):
        assert cli("finetune", train, "--test-dir", test, "-o", run, *common, *extra).exit_code == 0
        state = load_checkpoint(run / "last.pt")["state_dict"]
        same_stats = torch.equal(state["layer1.0.bn1.running_mean"], initial.state_dict()["layer1.0.bn1.running_mean"])
        assert same_stats == (not extra)
        assert not torch.equal(state["layer1.0.bn1.weight"], initial.state_dict()["layer1.0.bn1.weight"])
        assert not torch.equal(state["layer1.0.conv1.weight"], initial.state_dict()["layer1.0.conv1.weight"])


def test_resume_from_a_corrupt_checkpoint_is_a_clear_error(cli, folders, tmp_path):
    train, test = folders
    run = tmp_path / "run"
    assert cli("train-scratch", train, "--test-dir", test, "-o", run, "--epochs", "1", *TINY).exit_code == 0
    (run / "last.pt").write_bytes(b"half a checkpoint")
    result = cli("train-scratch", "--resume", run, "-q")
    assert result.exit_code == 2 and "last.pt is not a PyTorch state dict" in result.output
    assert "Traceback" not in result.output
