"""A user trains AlexNet from scratch and fine-tunes a pretrained network, layer by layer."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from alexfeat import FeatureStore
from alexfeat.errors import AlexfeatError
from alexfeat.featurizer.decode import Preprocess, decode_image, resize_image
from alexfeat.featurizer.arch import Arch
from alexfeat.featurizer.models import build_network, load_model
from tests.conftest import load_checkpoint, make_class_folder
from alexfeat.trainers.config import TrainConfig, apply_recipe
from alexfeat.trainers.engine import plan_rounds
from alexfeat.trainers.groups import layer_groups, replace_head, set_trainable

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


def test_bf16_precision_runs_the_network_in_bfloat16_on_the_cpu_and_still_learns(cli, folders, tmp_path):
    train, test = folders
    seen: dict[str, set] = {}

    def record(module, args, output):
        if isinstance(module, torch.nn.Conv2d) and torch.is_grad_enabled():
            seen.setdefault(current, set()).add(output.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        for current in ("default", "bf16"):
            precision = () if current == "default" else ("--precision", current)
            result = cli("train-scratch", train, "--test-dir", test, "-o", tmp_path / current, "--epochs", "8",
                         "--optimizer", "adam", "--lr", "0.001", *precision, *TINY)
            assert result.exit_code == 0, result.output
    finally:
        handle.remove()
    assert seen == {"default": {torch.float32}, "bf16": {torch.bfloat16}}  # the default: fp32 on the CPU
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["precision"] == "bf16"
    assert float(metrics(tmp_path / "bf16")[-1]["test_acc"]) >= 0.9
    assert load_checkpoint(tmp_path / "bf16" / "best.pt")["state_dict"]["features.0.weight"].dtype == torch.float32


def test_cached_images_are_augmented_in_the_main_process_on_the_cpu_unless_workers_are_given(tmp_path):
    from alexfeat.trainers.data import Split
    from alexfeat.trainers.engine import _augment_workers

    cpu, labels = torch.device("cpu"), torch.zeros(2, dtype=torch.long)
    cached = Split([torch.zeros(3, 8, 8, dtype=torch.uint8)] * 2, labels, ["a.jpg", "b.jpg"])
    on_disk = Split([tmp_path / "a.jpg", tmp_path / "b.jpg"], labels, ["a.jpg", "b.jpg"])
    config = TrainConfig("scratch", tmp_path, tmp_path, tmp_path / "run")
    assert _augment_workers(config, cpu, cached) == 0
    assert _augment_workers(replace(config, workers=2), cpu, cached) == 2
    assert _augment_workers(config, cpu, on_disk) >= 1


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


def test_a_checkpoint_is_evaluated_and_predicts_at_a_larger_test_crop_with_flip_averaging(cli, folders, tmp_path,
                                                                                          tiny_alexnet):
    _, test = folders
    options = ("--crop", "80", "--tta", "flip")  # trained at 64 of 73: a crop alone keeps that ratio (80 of 91)
    out = tmp_path / "pred.csv"
    result = cli("predict", tiny_alexnet, test, "--out", out, "--workers", "0", "-q", *options)
    assert result.exit_code == 0, result.output
    rows = {r["path"]: r for r in csv.DictReader(out.open())}
    loaded = load_model(Arch(), str(tiny_alexnet))
    pre = Preprocess(resize=91, crop=80, mean=loaded.preprocess.mean, std=loaded.preprocess.std)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (pre.mean, pre.std))
    paths = sorted(rows)
    x = torch.stack([resize_image(decode_image(test / p, 91), pre) for p in paths]).float().div(255).sub(mean).div(std)
    with torch.no_grad():
        expected = torch.softmax((loaded.net(x) + loaded.net(x.flip(-1))) / 2, 1)  # the logits are averaged
    got = torch.tensor([[float(rows[p]["prob_blue"]), float(rows[p]["prob_red"])] for p in paths])
    assert torch.allclose(got, expected, atol=1e-4), (got, expected)

    report = tmp_path / "r.json"
    result = cli("evaluate", tiny_alexnet, test, "--report", report, *options, "--device", "cpu", "--batch-size", "5",
                 "--workers", "1")
    assert result.exit_code == 0, result.output
    scored = json.loads(report.read_text())
    assert "flip TTA, crop 80 of 91, trained at 64 of 73" in scored["model"]
    assert scored["accuracy"] == pytest.approx(sum(
        r["prediction"] == Path(p).parent.name for p, r in rows.items()) / len(rows))
    for command in ("predict", "evaluate"):  # a .joblib model's features come from its store's settings
        output = "--out" if command == "predict" else "--report"
        result = cli(command, tmp_path / "svm.joblib", test, output, tmp_path / "x", "--crop", "80", "--tta", "none")
        assert result.exit_code == 2 and "--crop does not apply to a .joblib model" in result.output, result.output
        assert "--tta" not in result.output.split("apply")[0]  # --tta none changes nothing: not refused
        if command == "evaluate":
            result = cli(command, tmp_path / "svm.joblib", test, output, tmp_path / "x", "--batch-size", "8")
            assert result.exit_code == 2 and "--batch-size does not apply to a .joblib model" in result.output
        result = cli(command, tiny_alexnet, tmp_path / "feats.h5", output, tmp_path / "x")
        assert result.exit_code == 2 and "runs on images, not on the feature store" in result.output
        result = cli(command, tmp_path / "missing.pt", test, output, tmp_path / "x")
        assert result.exit_code == 2 and "checkpoint " in result.output and "does not exist" in result.output
    result = cli("evaluate", tiny_alexnet, test, "--report", report, "--overwrite", "--crop", "16")
    assert result.exit_code == 2 and "cannot run on 16x16 inputs" in result.output
    assert "the smallest --crop it runs on is 63" in result.output
    assert json.loads(report.read_text()) == scored  # the earlier report is kept


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
    # val.csv lists the validation rows: evaluating best.pt on it gives the validation accuracy it was chosen by.
    val = list(csv.DictReader((run / "val.csv").open()))
    assert len(val) == 7 and {r["label"] for r in val} == {"blue", "red"}  # 25% of the 28 decoded images
    assert all(Path(r["path"]).parent.name == r["label"] and Path(r["path"]).is_relative_to(train) for r in val)
    report = tmp_path / "val.json"
    assert cli("evaluate", run / "best.pt", run / "val.csv", "--report", report).exit_code == 0
    assert json.loads(report.read_text())["accuracy"] == pytest.approx(ckpt["metrics"]["val_acc"])
    result = cli("evaluate", run / "best.pt", run / "val.csv", "--report", report, "--overwrite", "--resize", "90")
    assert result.exit_code == 2 and "--resize does not apply" in result.output  # pad mode resizes the longer side


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
        extra = () if "--resume" in args else TINY[:-1] if args[0] == "train-scratch" else ("--workers", "0")
        result = cli(*args, *extra)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and "Traceback" not in result.output
    result = cli("train-scratch", train, "--test-dir", test, "-o", tmp_path / "r5" / "a" / "b", *TINY[:-1],
                 "--image-size", "48")
    assert result.exit_code == 2 and "alexnet cannot run on 48x48 inputs (--image-size)" in result.output
    assert "the smallest --image-size it runs on is 63" in result.output
    result = cli("finetune", train, "--test-dir", test, "-o", tmp_path / "r6", "--model", "vit_b_16", "--weights",
                 "none", "--schedule", "full", "--image-size", "64", "--workers", "0")
    assert result.exit_code == 2 and "vit_b_16 cannot run on 64x64 inputs (--image-size)" in result.output
    assert "it runs on --image-size 224, its default" in result.output
    assert not any((tmp_path / f"r{i}").exists() for i in range(1, 7))  # a refused run leaves no folder behind


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


TIMM_MODELS = ("efficientnet_lite0", "resnet18", "convnext_atto", "vit_tiny_patch16_224",
               "deit_tiny_distilled_patch16_224", "swin_tiny_patch4_window7_224", "mobilenetv3_small_050",
               "densenet121", "regnetx_002", "levit_128s", "vgg11", "beit_base_patch16_224", "poolformer_s12")


@pytest.mark.filterwarnings("ignore::FutureWarning")  # GoogLeNet and Inception announce an init change
def test_every_torchvision_and_timm_model_divides_into_ordered_layer_groups():
    import torchvision

    from alexfeat.featurizer.models import empty_network

    names = torchvision.models.list_models(module=torchvision.models) + [f"timm:{n}" for n in TIMM_MODELS]
    assert len(names) > 80
    for name in names:
        net = empty_network(Arch(model=name, num_classes=2))  # meta device: no weights, no forward
        groups = layer_groups(net, name)
        order = {p: i for i, (p, _) in enumerate(net.named_parameters())}
        placed = [p for params in groups.values() for p in params]
        assert sorted(placed) == sorted(order), f"{name}: a parameter is in no group or in two"
        head = list(groups)[-1]
        from alexfeat.trainers.groups import head_modules

        for module in head_modules(net):
            assert all(p in groups[head] for p, _ in net.get_submodule(module).named_parameters(prefix=module)), name
        firsts = [min(order[p] for p in params) for params in list(groups.values())[:-1]]
        assert firsts == sorted(firsts), f"{name}: groups out of input-to-output order"
    convnext = layer_groups(empty_network(Arch(model="convnext_tiny", num_classes=2)), "convnext_tiny")
    assert list(convnext)[-1] == "head" and "classifier.0.weight" in convnext["head"]  # the head norm trains with it
    vit = layer_groups(empty_network(Arch(model="vit_b_16", num_classes=2)), "vit_b_16")
    assert len(vit) == 14 and "encoder.ln.weight" in vit["head"]  # patch embedding, 12 encoder layers, head


@pytest.mark.parametrize("model, size", [("alexnet", 64), ("resnet18", 64), ("mobilenet_v3_small", 64),
                                         ("efficientnet_b0", 64), ("convnext_tiny", 64), ("vit_b_16", 224),
                                         ("timm:efficientnet_lite0", 64)])
def test_one_training_step_trains_exactly_the_unfrozen_groups(model, size):
    torch.manual_seed(0)
    net = build_network(Arch(model=model))
    replace_head(net, 2)  # as finetune does (torchvision's ViT would start from an all-zero head)
    groups = layer_groups(net, model)
    names = list(groups)
    set_trainable(net, groups, names[-2:])  # round 2 of layer-wise fine-tuning
    before = {k: v.detach().clone() for k, v in net.named_parameters()}
    optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    net.train()
    loss = torch.nn.functional.cross_entropy(net(torch.randn(2, 3, size, size)), torch.tensor([0, 1]))
    loss.backward()
    optimizer.step()
    changed = {k for k, v in net.named_parameters() if not torch.equal(v, before[k])}
    assert torch.isfinite(loss)
    assert changed <= set(groups[names[-1]]) | set(groups[names[-2]]), f"{model}: a frozen parameter moved"
    assert any(p in changed for p in groups[names[-1]]) and any(p in changed for p in groups[names[-2]])


def test_list_groups_shows_parameter_counts_and_until_takes_those_names(cli, folders, tmp_path):
    result = cli("finetune", "--list-groups", "--model", "convnext_tiny")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[0] == "features.0" and lines[-1].split()[:2] == ["head", "770,536"]
    train, test = folders
    result = cli("finetune", train, "--test-dir", test, "-o", tmp_path / "r", "--model", "convnext_tiny",
                 "--weights", "none", "--until", "layer4", "--workers", "0")
    assert result.exit_code == 2 and "use one of features.0" in result.output


def test_alexnet_layer_names_come_from_one_definition():
    from alexfeat.featurizer.backends.alexnet import ALEXNET_LAYERS, alexnet_layout

    assert ALEXNET_LAYERS["conv1"] == "features.1" and ALEXNET_LAYERS["conv5"] == "features.11"
    for batch_norm in (False, True):
        layout = alexnet_layout(batch_norm)
        net = build_network(Arch(batch_norm=batch_norm))
        for name, modules in layout.modules.items():
            kind = torch.nn.Conv2d if name.startswith("conv") else torch.nn.Linear
            assert isinstance(net.get_submodule(modules[0]), kind), (batch_norm, name)
            assert len(modules) == (2 if batch_norm and name.startswith("conv") else 1)
        assert all(isinstance(net.get_submodule(layout.nodes[f"conv{i}"]), torch.nn.ReLU) for i in range(1, 6))
        assert list(layer_groups(net, "alexnet")) == list(layout.modules)


@pytest.fixture
def tiny_alexnet(cli, folders, tmp_path) -> Path:
    """A small trained checkpoint: pretrained weights for fine-tuning tests."""
    train, test = folders
    run = tmp_path / "pretrained"
    assert cli("train-scratch", train, "--test-dir", test, "-o", run, "--epochs", "1", *TINY).exit_code == 0
    return run / "best.pt"


def test_epochs_is_the_total_and_layerwise_divides_it(cli, folders, tmp_path, tiny_alexnet):
    train, test = folders
    common = ("finetune", train, "--test-dir", test, "--weights", tiny_alexnet, "--until", "fc6", "--batch-size", "8",
              "--workers", "0", "-q")
    assert cli(*common, "-o", tmp_path / "r4", "--epochs", "4").exit_code == 0
    assert [r["round"] for r in metrics(tmp_path / "r4")] == ["1", "2", "3", "3"]  # the deepest round gets the rest
    settings = json.loads((tmp_path / "r4" / "config.json").read_text())
    assert settings["epochs"] == 4 and settings["until"] == "fc6"
    assert not {"dropout", "width_mult", "grayscale", "batch_norm", "recipe"} & set(settings)  # scratch's only
    scratch = json.loads((tiny_alexnet.parent / "config.json").read_text())
    assert scratch["dropout"] == 0.5 and not {"weights", "schedule", "until", "train_bn", "lr_decay"} & set(scratch)
    with pytest.raises(AlexfeatError, match="--dropout applies to train-scratch only"):
        TrainConfig("finetune", train, test, tmp_path / "x", dropout=0.2)  # would be ignored: refused
    result = cli(*common, "-o", tmp_path / "r2", "--epochs", "2")
    assert result.exit_code == 2 and "cannot be divided among the 3 rounds" in result.output
    result = cli(*common, "-o", tmp_path / "both", "--epochs", "3", "--epochs-per-round", "1")
    assert result.exit_code == 2 and "not both" in result.output
    result = cli(*common[:-3], "--schedule", "full", "--epochs-per-round", "2", "-o", tmp_path / "full")
    assert result.exit_code == 2 and "--epochs-per-round applies to --schedule layerwise only" in result.output
    result = cli("finetune", "--resume", tmp_path / "r4", "-q")  # finished; layer-wise runs do not extend
    assert result.exit_code == 0 and "already finished its 4 epochs, so there is nothing to train: a layer-wise " \
        f"run cannot be extended; start a new one from its weights (--weights {tmp_path / 'r4' / 'best.pt'})" \
        in result.output
    result = cli("finetune", train, "--test-dir", test, "-o", tmp_path / "other", "--weights", tiny_alexnet,
                 "--model", "resnet18", "--schedule", "head", "--workers", "0")
    assert result.exit_code == 2 and f"{tiny_alexnet} is a checkpoint of alexnet, not resnet18: pass --model " \
        "alexnet" in result.output


def test_options_that_would_be_ignored_or_cannot_train_are_refused_before_any_work(cli, folders, tmp_path):
    train, test = folders
    scratch = ("train-scratch", train, "--test-dir", test, "-o", tmp_path / "run", *TINY)
    finetune = ("finetune", train, "--test-dir", test, "-o", tmp_path / "run", "--weights", "none", "--workers", "0")
    cases = [
        ((*scratch, "--lr", "nan"), "--lr must be a finite number, not nan"),
        ((*scratch, "--lr", "-1"), "--lr must be positive"),
        ((*scratch, "--lr", "0"), "--lr must be positive"),
        ((*scratch, "--epochs", "3", "--warmup-epochs", "3"),
         "--warmup-epochs 3 leaves no epoch of the cosine schedule, which runs over 3 epochs (--epochs): use fewer"),
        ((*finetune, "--schedule", "full", "--until", "fc6"), "--until does not apply with --schedule full"),
        ((*finetune, "--schedule", "head", "--discriminative-lr"),
         "--discriminative-lr does not apply with --schedule head"),
        ((*finetune, "--lr-decay", "0.3"), "--lr-decay does not apply without --discriminative-lr"),
        (("finetune", "--list-groups", "-o", tmp_path / "run", "--until", "fc6"),
         "--out, --until do not apply with --list-groups"),
    ]
    for args, message in cases:
        result = cli(*args)
        assert result.exit_code == 2 and message in result.output, (args, result.output)
    assert not (tmp_path / "run").exists()


def test_a_run_folder_is_never_left_in_a_state_neither_resume_nor_a_new_run_accepts(cli, folders, tmp_path,
                                                                                     monkeypatch):
    from alexfeat.trainers import engine

    train, test = folders
    run = tmp_path / "run"
    command = ("train-scratch", train, "--test-dir", test, "-o", run, "--epochs", "2", *TINY)
    with monkeypatch.context() as patch:  # Ctrl-C before the first checkpoint: nothing to resume
        patch.setattr(engine._Trainer, "save", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
        assert cli(*command).exit_code == 130
    assert not run.exists()
    assert cli(*command).exit_code == 0  # so the same command starts it again
    result = cli("finetune", "--resume", run, "--epochs", "3")
    assert result.exit_code == 2 and f"{run} is a train-scratch run: continue it with alexfeat train-scratch " \
        f"--resume {run}" in result.output
    result = cli("train-scratch", train, "--resume", run, "--epochs", "3")
    assert result.exit_code == 2 and "TRAIN_DIR cannot be given with it" in result.output
    settings = (run / "config.json").read_text()
    train.rename(tmp_path / "moved")
    result = cli("train-scratch", "--resume", run, "-q")  # nothing to do, said before it would decode the images
    assert result.exit_code == 0 and f"{run} already finished its 2 epochs, so there is nothing to train: pass " \
        "--epochs N" in result.output
    assert "trained 2 epochs: test acc " in result.output  # the run's summary, as at its end
    result = cli("train-scratch", "--resume", run, "--epochs", "3", "-q")
    assert result.exit_code == 2 and "does not exist" in result.output
    assert (run / "config.json").read_text() == settings  # the failed extension changed nothing
    (run / "config.json").write_text("garbage")
    for args in (("info", run), ("train-scratch", "--resume", run, "--epochs", "3")):
        result = cli(*args)
        assert result.exit_code == 2 and "config.json cannot be read as a run's settings" in result.output


def test_resume_extends_a_finished_run_and_refuses_other_options(cli, folders, tmp_path, capsys):
    train, test = folders
    run = tmp_path / "run"
    assert cli("train-scratch", train, "--test-dir", test, "-o", run, "--epochs", "2", *TINY).exit_code == 0
    result = cli("train-scratch", "--resume", run, "--lr", "0.1", "-q")
    assert result.exit_code == 2 and "--lr cannot be given with it" in result.output
    result = cli("train-scratch", "--resume", run, "--epochs", "4", "--workers", "0", "-q")
    assert result.exit_code == 0, result.output
    assert "extending" in result.output and "cosine over epochs 1-4" in result.output
    rows = metrics(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    # the cosine schedule over 4 epochs: epoch 3 runs at half the initial rate
    assert float(rows[2]["lr"]) == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi * 2 / 4)))
    assert json.loads((run / "config.json").read_text())["epochs"] == 4
    result = cli("train-scratch", "--resume", run, "--epochs", "3", "-q")
    assert result.exit_code == 2 and "already trained 4 epochs" in result.output


def test_weight_averaging_evaluates_and_saves_the_mean_of_the_epochs_and_resumes_exactly(cli, folders, tmp_path):
    train, test = folders
    settings = ("--batch-norm", "--augment", "standard", "--lr", "0.02", "--val-split", "0.25", *TINY)
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert cli("train-scratch", train, "--test-dir", test, "-o", whole, "--epochs", "4", "--swa-from", "3",
               "--swa-lr", "0.005", *settings).exit_code == 0
    # the same run in two steps: 2 epochs, then extended to 4 with averaging from epoch 3
    assert cli("train-scratch", train, "--test-dir", test, "-o", parts, "--epochs", "2", *settings).exit_code == 0
    result = cli("train-scratch", "--resume", parts, "--epochs", "3", "--swa-from", "3", "--swa-lr", "0.005", "-q")
    assert result.exit_code == 0, result.output
    assert "cosine over epochs 1-2, then 0.005 with weights averaged from epoch 3 to 3" in result.output
    third = load_checkpoint(parts / "last.pt")
    assert cli("train-scratch", "--resume", parts, "--epochs", "4", "-q").exit_code == 0
    rows = metrics(whole)
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.02, 0.01, 0.005, 0.005])  # cosine over 2, then flat
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(metrics(parts)) == strip(rows)

    assert "weights: the mean of those after epochs 3-4 (--swa-from)" in cli("info", whole / "last.pt").output
    assert "weights averaged from epoch 3" in cli("info", whole).output
    last, best = load_checkpoint(whole / "last.pt"), load_checkpoint(whole / "best.pt")
    assert last["swa_count"] == 2 and "train_state_dict" not in best and "swa_count" not in best
    trained = last["train_state_dict"]
    for name, _ in build_network(Arch(**last["arch"])).named_parameters():  # the mean of epochs 3 and 4
        mean = (third["train_state_dict"][name] + trained[name]) / 2
        assert torch.allclose(last["state_dict"][name], mean, atol=1e-6), name
        assert not torch.equal(last["state_dict"][name], trained[name]), name
    # batch-norm statistics re-estimated for the mean, not copied from the trained network
    assert not torch.allclose(last["state_dict"]["features.1.running_var"], trained["features.1.running_var"])
    # what was evaluated is what was saved: predict on the validation split gives the recorded loss
    out = tmp_path / "val-pred.csv"
    assert cli("predict", whole / "last.pt", whole / "val.csv", "--out", out, "--workers", "0", "-q").exit_code == 0
    predicted = list(csv.DictReader(out.open()))
    loss = -sum(math.log(float(r[f"prob_{Path(r['path']).parent.name}"])) for r in predicted) / len(predicted)
    assert loss == pytest.approx(float(rows[-1]["val_loss"]), rel=1e-4)

    result = cli("train-scratch", "--resume", whole, "--epochs", "5", "--swa-from", "4", "-q")
    assert result.exit_code == 2 and "averaged its weights since epoch 3: --swa-from cannot change" in result.output
    result = cli("train-scratch", "--resume", parts, "--epochs", "5", "--swa-from", "0", "-q")
    assert result.exit_code == 2 and "cannot change" in result.output
    result = cli("train-scratch", "--resume", whole, "--swa-lr", "0.1", "-q")  # finished: it would change nothing
    assert result.exit_code == 2 and "--swa-lr would change none of them: give --epochs too" in result.output
    result = cli("train-scratch", train, "--test-dir", test, "-o", tmp_path / "lr", "--swa-lr", "0.1", *TINY)
    assert result.exit_code == 2 and "give --swa-from too" in result.output
    result = cli("train-scratch", train, "--test-dir", test, "-o", tmp_path / "late", "--epochs", "2",
                 "--swa-from", "3", *TINY)
    assert result.exit_code == 2 and "--swa-from must be between 1 and --epochs (2)" in result.output
    result = cli("finetune", train, "--test-dir", test, "-o", tmp_path / "ft", "--weights", whole / "best.pt",
                 "--swa-from", "1", "-q")
    assert result.exit_code == 2 and "--swa-from applies to train-scratch and finetune --schedule full" in result.output
    # fine-tuning keeps the pretrained batch-norm statistics (no --train-bn): the average keeps them too
    ft = tmp_path / "ft-full"
    assert cli("finetune", train, "--test-dir", test, "-o", ft, "--weights", whole / "best.pt", "--schedule", "full",
               "--epochs", "2", "--swa-from", "2", "--image-size", "64", "--batch-size", "8", "--workers", "0",
               "-q").exit_code == 0
    averaged = load_checkpoint(ft / "last.pt")["state_dict"]
    assert torch.equal(averaged["features.1.running_var"], best["state_dict"]["features.1.running_var"])


def test_layerwise_resume_across_a_round_boundary_matches_an_uninterrupted_run(folders, tmp_path, tiny_alexnet):
    train, test = folders
    settings = ("--weights", tiny_alexnet, "--until", "fc6", "--epochs", "3", "--augment", "flip",
                "--batch-size", "8", "--workers", "0", "-q")

    def alexfeat(*args) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "alexfeat", *map(str, args)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert alexfeat("finetune", train, "--test-dir", test, "-o", reference, *settings).wait() == 0
    proc = alexfeat("finetune", train, "--test-dir", test, "-o", killed, *settings)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not (
            (killed / "metrics.csv").exists() and len(metrics(killed)) >= 1):
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)  # round 1 (the head) has just ended
    proc.wait()
    assert load_checkpoint(killed / "last.pt")["round"] == 1 and len(metrics(killed)) < 3
    resumed = alexfeat("finetune", "--resume", killed, "-q")
    assert resumed.wait() == 0, resumed.stderr.read()
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(metrics(killed)) == strip(metrics(reference))
    assert [r["round"] for r in metrics(killed)] == ["1", "2", "3"]


def test_checkpoints_are_lean_atomic_and_the_run_folder_is_locked(cli, folders, tmp_path):
    from alexfeat.trainers.run_dir import RunDir

    train, test = folders
    run = tmp_path / "no" / "such" / "parents" / "run"  # -o creates missing parent folders
    result = cli("train-scratch", train, "--test-dir", test, "-o", run, "--epochs", "2", "--keep-every", "2", *TINY)
    assert result.exit_code == 0 and "holds best.pt, last.pt, 1 epoch_N.pt snapshot, metrics.csv" in result.output
    best, last = load_checkpoint(run / "best.pt"), load_checkpoint(run / "last.pt")
    assert "optimizer" not in best and best["config"]["epochs"] == 2 and "test_acc" in best["metrics"]
    assert last["optimizer"] is not None and last["round_epoch"] == 2
    weights = sum(v.numel() * v.element_size() for v in best["state_dict"].values())
    assert (run / "best.pt").stat().st_size < 1.1 * weights < (run / "last.pt").stat().st_size  # SGD momentum
    assert (run / "epoch_2.pt").exists() and not (run / "epoch_1.pt").exists()
    stale = run / ".last.pt.killed.tmp"  # what a run killed while writing leaves behind
    stale.write_bytes(b"x" * 1000)
    holder = RunDir.open(run).lock()  # another process training in this folder
    assert not stale.exists()
    result = cli("train-scratch", "--resume", run, "--epochs", "3", "-q")
    assert result.exit_code == 2 and "another run is writing the run folder" in result.output
    holder.unlock()
    assert cli("train-scratch", "--resume", run, "--epochs", "3", "-q").exit_code == 0


def test_export_writes_the_plain_state_dict(cli, folders, tmp_path, tiny_alexnet):
    out = tmp_path / "weights" / "alexnet.pth"
    result = cli("export", tiny_alexnet, out)
    assert result.exit_code == 0 and "2 classes: blue, red" in result.output
    state = torch.load(out, weights_only=True)
    net = build_network(Arch(width_mult=0.125, num_classes=2))
    net.load_state_dict(state)  # a plain state dict, loadable by any tool
    assert cli("export", tiny_alexnet, out).exit_code == 2  # never overwrites silently


def test_small_data_recipe_tta_and_labelled_plots(cli, folders, tmp_path):
    train, test = folders
    run = tmp_path / "recipe $^$ [b]"  # plots and reports show paths as text, not as math or markup
    result = cli("train-scratch", train, "--test-dir", test, "-o", run, "--recipe", "small-data", "--epochs", "3",
                 "--lr", "0.001", "--mixup", "0.2", "--cutmix", "1", *TINY)
    assert result.exit_code == 0, result.output
    config = json.loads((run / "config.json").read_text())
    assert config["batch_norm"] and config["augment"] == "strong" and config["label_smoothing"] == 0.1
    assert config["recipe"] == "small-data"
    assert config["warmup_epochs"] == 1  # the recipe's 3, shortened: the 2 epochs before averaging keep one
    assert config["lr"] == 0.001 and config["mixup"] == 0.2 and config["cutmix"] == 1.0  # given: kept
    assert config["epochs"] == 3 and config["swa_from"] == 3  # your --epochs: the recipe's last 12% averaged
    assert apply_recipe({"recipe": "small-data", "epochs": 80}, set())["epochs"] == 250
    assert apply_recipe({"recipe": "small-data", "epochs": 100}, {"epochs"})["swa_from"] == 89
    assert apply_recipe({"recipe": "small-data", "epochs": 100}, {"epochs"})["warmup_epochs"] == 3
    help_text = re.sub(r"[│\s]+", " ", cli("train-scratch", "--help").output)  # the recipe, as the help shows it
    assert "small-data = --batch-norm --augment strong --label-smoothing 0.1" in help_text
    rows = metrics(run)
    assert float(rows[0]["lr"]) < float(rows[1]["lr"]) > float(rows[2]["lr"])  # warming up, then averaging
    assert "features.1.running_mean" in load_checkpoint(run / "best.pt")["state_dict"]
    report = tmp_path / "r.json"
    result = cli("evaluate", run / "best.pt", test, "--tta", "flip", "--report", report, "--plot", tmp_path / "cm.png")
    assert result.exit_code == 0, result.output
    assert f"{run / 'best.pt'} (flip TTA) on {test}" in result.output
    assert "flip TTA" in json.loads(report.read_text())["model"]
    result = cli("plot", run, run, "--labels", "one", "-o", tmp_path / "cmp.png")
    assert result.exit_code == 2 and "one per run" in result.output
    assert cli("plot", run, run, "--labels", "a,b", "-o", tmp_path / "cmp.png").exit_code == 0
    curves = (run / "curves.png").read_bytes()
    for out in (run / "curves.png", run / "compare.png"):
        result = cli("plot", run, "-o", out, "--overwrite")  # a run folder's files are its trainer's
        assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
        assert "is in the run folder" in result.output and "write the chart outside it" in result.output
    assert (run / "curves.png").read_bytes() == curves and not (run / "compare.png").exists()


def test_the_curves_of_a_one_epoch_run_have_whole_epoch_ticks(tmp_path, monkeypatch):
    from alexfeat.trainers import plots
    from alexfeat.trainers.run_dir import RunDir

    figures = []
    monkeypatch.setattr(plots, "atomic_savefig", lambda fig, path, **kw: figures.append(fig))
    for epochs in (1, 2, 30):
        config = TrainConfig("scratch", tmp_path, tmp_path, tmp_path, epochs=epochs)
        run = RunDir.create(tmp_path / f"run{epochs}", config)
        for epoch in range(1, epochs + 1):
            run.append_metrics({"epoch": epoch, "round": 1, "lr": 0.01, "train_loss": 1.0, "train_acc": 0.5,
                                "test_loss": 1.0, "test_acc": 0.5})
        plots.plot_curves(run)
        for ax in figures.pop().axes:
            low, high = ax.get_xlim()
            shown = [t for t in ax.get_xticks() if low <= t <= high]
            assert shown and all(float(t).is_integer() for t in shown), (epochs, shown)


def test_models_with_auxiliary_training_outputs_are_refused_before_any_work(cli, folders, tmp_path):
    train, test = folders
    for command in ("train-scratch", "finetune"):
        result = cli(command, train, "--test-dir", test, "-o", tmp_path / command, "--model", "googlenet")
        assert result.exit_code == 2 and "auxiliary outputs" in result.output, result.output
        assert not (tmp_path / command).exists()
