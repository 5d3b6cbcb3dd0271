"""A user points evaluate, predict, plot, export and info at a trainer's run folder and its files,
and gets each mistake named in one line."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from alexfeat.featurizer.arch import Arch
from alexfeat.featurizer.models import build_network
from tests.conftest import make_class_folder, save_checkpoint

TINY = ("--width-mult", "0.125", "--batch-norm", "--image-size", "64", "--batch-size", "8", "--workers", "0", "-q")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path]:
    """A finished two-epoch train-scratch run (thin AlexNet with batch-norm, held-out validation) and its
    test folder; tests read it and write elsewhere."""
    from alexfeat.cli.app import app

    root = tmp_path_factory.mktemp("tools")
    train, test = make_class_folder(root / "train", per_class=8), make_class_folder(root / "test", per_class=4)
    result = CliRunner().invoke(app, [str(a) for a in ("train-scratch", train, "--test-dir", test, "-o", root / "s2",
                                                       "--epochs", "2", "--val-split", "0.25", *TINY)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return root / "s2", test


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1, result.output
    return result.output.strip()


def test_a_run_folder_or_another_file_given_as_the_model_is_named_with_what_to_pass(cli, run, tmp_path):
    folder, test = run
    best = folder / "best.pt"
    for args in (("evaluate", folder, test), ("evaluate", folder, test, "--workers", "0"), ("predict", folder, test),
                 ("featurize", test, tmp_path / "f.h5", "--weights", folder),
                 ("finetune", test, "--test-dir", test, "-o", tmp_path / "ft", "--weights", folder),
                 ("export", folder, tmp_path / "x.pth"), ("serve", folder, "--crop", "100"),
                 ("serve", folder, "--tta", "flip")):
        assert one_line_error(cli(*args)) == f"error: {folder} is a run folder: pass {best} (or last.pt)", args
    assert not (tmp_path / "ft").exists()
    assert one_line_error(cli("evaluate", test, test)) == f"error: {test} is a folder, not a model file"
    for name in ("config.json", "metrics.csv"):
        for args in (("evaluate", folder / name, test), ("evaluate", folder / name, test, "--workers", "0"),
                     ("serve", folder / name, "--port", "18791")):  # refused before a server starts
            message = one_line_error(cli(*args))
            assert f"{folder / name} is neither a classifier model from fit-* (.joblib) nor a trainer checkpoint" \
                   in message


def test_a_figure_named_with_an_extension_matplotlib_cannot_write_is_refused_before_any_work(cli, run, tmp_path,
                                                                                              monkeypatch):
    folder, test = run
    import alexfeat.classifiers.checkpoint_model as infer

    def must_not_score(*args, **kwargs):
        raise AssertionError("scored before refusing the figure's name")

    monkeypatch.setattr(infer, "evaluate_checkpoint", must_not_score)
    message = one_line_error(cli("evaluate", folder / "best.pt", test, "--plot", tmp_path / "new" / "c.txt"))
    assert not (tmp_path / "new").exists()
    assert "c.txt: a figure cannot be written as .txt; name a .png file (or " in message and ".pdf" in message
    message = one_line_error(cli("plot", folder, "-o", tmp_path / "new" / "x.txt"))
    assert "x.txt: a figure cannot be written as .txt" in message
    assert not list(tmp_path.glob("*.txt")) and not (tmp_path / "new").exists()
    assert cli("plot", folder, "-o", tmp_path / "x.svg").exit_code == 0 and (tmp_path / "x.svg").read_text()[:5] \
        in ("<?xml", "<svg ")


def test_plot_never_writes_over_a_run_folder_file_it_reads_even_with_overwrite(cli, run, tmp_path):
    folder, _ = run
    metrics = folder / "metrics.csv"
    before = metrics.read_bytes()
    alias = tmp_path / "metrics.png"
    os.link(metrics, alias)  # another name for the same file is still the input
    for out in (metrics, folder / ".." / folder.name / "config.json", alias):
        message = one_line_error(cli("plot", folder, "-o", out, "--overwrite"))
        assert message.startswith(f"error: output {out} is also an input (") and "choose another output" in message
    assert metrics.read_bytes() == before


@pytest.fixture
def with_broken(run, tmp_path) -> Path:
    """The run's test folder plus a truncated JPEG (its first 500 bytes) among the blue images."""
    _, test = run
    folder = tmp_path / "with-broken"
    shutil.copytree(test, folder)
    (folder / "blue" / "trunc.jpg").write_bytes((test / "blue" / "blue_00.jpg").read_bytes()[:500])
    return folder


def test_evaluate_says_which_images_it_skipped_as_predict_does(cli, run, with_broken, tmp_path):
    folder, _ = run
    report = tmp_path / "r.json"
    result = cli("evaluate", folder / "best.pt", with_broken, "--workers", "0", "--report", report)
    assert result.exit_code == 0, result.output
    warning = [line for line in result.output.splitlines() if line.startswith("warning: skipped")]
    assert warning == [f"warning: skipped {Path('blue', 'trunc.jpg')}: OSError: Truncated File Read"]
    assert "n=8 (1 skipped)" in result.output
    scores = json.loads(report.read_text())
    assert scores["n"] == 8 and [path for path, _ in scores["skipped"]] == [str(Path("blue", "trunc.jpg"))]
    predicted = cli("predict", folder / "best.pt", with_broken, "--workers", "0", "-q")
    assert warning[0] in predicted.output.splitlines()  # the same words


def test_predict_lists_every_input_in_input_order_with_the_skipped_ones_reasons(cli, run, tmp_path):
    folder, test = run
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "trunc.jpg").write_bytes((test / "blue" / "blue_00.jpg").read_bytes()[:500])
    (bad / "text.jpg").write_text("not an image")
    shutil.copy(test / "red" / "red_00.jpg", bad / "ok.jpg")
    inputs = [bad / "trunc.jpg", bad / "text.jpg", bad / "ok.jpg"]
    result = cli("predict", folder / "best.pt", *inputs, "--workers", "0", "-q")
    assert result.exit_code == 0, result.output
    table = [line.split() for line in result.output.splitlines() if not line.startswith("warning:")]
    assert [row[0] for row in table] == ["path", *map(str, inputs)]
    assert table[1][1:3] == ["(skipped)", "OSError:"] and table[2][1] == "(skipped)" and table[3][1] in ("blue", "red")
    out = tmp_path / "b.csv"
    result = cli("predict", folder / "best.pt", *inputs, "--workers", "0", "-q", "-o", out)
    assert result.exit_code == 0 and f"wrote 3 rows to {out}: 1 predicted, 2 skipped" in result.output
    rows = list(csv.DictReader(out.open()))
    assert [r["path"] for r in rows] == list(map(str, inputs))
    assert [bool(r["error"]) for r in rows] == [True, True, False] and rows[2]["prediction"] in ("blue", "red")


def test_a_file_given_where_a_folder_of_class_folders_is_expected_is_named_as_a_file(cli, run, tmp_path):
    _, test = run
    image = test / "red" / "red_00.jpg"
    message = one_line_error(cli("train-scratch", image, "--test-dir", test, "-o", tmp_path / "e1", *TINY))
    assert message == (f"error: the training folder {image} is a file, not a folder: pass a folder with one "
                       f"sub-folder per class (or a list file with a label column)")
    message = one_line_error(cli("train-scratch", test, "--test-dir", image, "-o", tmp_path / "e1", *TINY))
    assert message.startswith(f"error: the test folder {image} is a file, not a folder")
    unlabelled = tmp_path / "list.txt"
    unlabelled.write_text(f"{image}\n")
    message = one_line_error(cli("train-scratch", unlabelled, "--test-dir", test, "-o", tmp_path / "e1", *TINY))
    assert message.startswith(f"error: the training list {unlabelled} has no labels: give it a label column")
    assert not (tmp_path / "e1").exists()


def test_a_corrupt_or_foreign_checkpoint_gets_a_short_whole_reason(cli, run, tmp_path):
    folder, _ = run
    truncated = tmp_path / "last.pt"
    truncated.write_bytes((folder / "last.pt").read_bytes()[:100_000])
    reason = "(torch could not read it: {})"
    message = one_line_error(cli("info", truncated))
    assert message == f"error: {truncated} is not a PyTorch state dict or alexfeat checkpoint " \
                      + reason.format("a truncated or corrupt zip archive")
    for args in (("export", folder / "config.json", tmp_path / "x.pth"), ("info", tmp_path / "x.pt")):
        (tmp_path / "x.pt").write_bytes(b"")
        message = one_line_error(cli(*args))
        assert message.endswith(reason.format("not a PyTorch file")), message
    assert not (tmp_path / "x.pth").exists()


@pytest.mark.parametrize("command", ["evaluate", "predict", "featurize"])
def test_an_image_side_past_4096_is_refused_up_front(cli, run, tmp_path, command):
    folder, test = run
    args = {"evaluate": (folder / "best.pt", test), "predict": (folder / "best.pt", test),
            "featurize": (test, tmp_path / "f.h5", "--weights", "none")}[command]
    for option in ("--crop", "--resize"):
        result = cli(command, *args, option, "100000", "--workers", "0")
        assert result.exit_code == 2 and f"'{option}'" in result.output and "4096" in result.output, result.output
    assert not (tmp_path / "f.h5").exists()


def test_every_command_taking_an_image_side_bounds_it_at_4096():
    import typer.main

    from alexfeat.cli.app import app

    group = typer.main.get_command(app)
    bounded = {(name, param.name): (param.min, param.max) for name, command in group.commands.items()
               for param in command.params if param.name in ("resize", "crop", "image_size")}
    assert {name for name, _ in bounded} == {"featurize", "evaluate", "predict", "serve", "train-scratch", "finetune"}
    assert {bounds[1] for bounds in bounded.values()} == {4096}


def test_info_on_a_run_folder_says_what_best_pt_holds_and_labels_a_later_test_peak(cli, tmp_path):
    from alexfeat.trainers.config import TrainConfig
    from alexfeat.trainers.run_dir import RunDir

    run = RunDir.create(tmp_path / "run", TrainConfig("scratch", tmp_path, tmp_path, tmp_path / "run", epochs=3,
                                                      val_split=0.2))
    for epoch, (val, test) in enumerate(((0.8, 0.75), (0.7, 0.625), (0.8, 0.875)), start=1):
        run.append_metrics({"epoch": epoch, "round": 1, "val_acc": val, "test_acc": test})
    result = cli("info", run.path)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "  best.pt: epoch 1, chosen by validation accuracy 0.8000; its test accuracy 0.7500" in lines
    assert "  val accuracy: last 0.8000" in lines
    assert "  test accuracy: last 0.8750; peak 0.8750 at epoch 3 (not what best.pt holds)" in lines
    assert "best test accuracy" not in result.output


def test_export_of_a_network_no_model_describes_says_to_featurize_from_the_checkpoint(cli, run, tmp_path):
    folder, test = run
    out = tmp_path / "s2.pth"
    result = cli("export", folder / "best.pt", out)
    assert result.exit_code == 0 and out.exists(), result.output
    assert (f"warning: {out} holds alexnet weights that no --model describes (--width-mult 0.125): featurize "
            f"--weights cannot rebuild it from this file; use featurize --weights {folder / 'best.pt'}"
            in result.output.splitlines())
    assert "does not fit alexnet" in cli("featurize", test, tmp_path / "a.h5", "--weights", out, "--workers", "0",
                                         "-q").output  # what the warning spares the user
    assert cli("featurize", test, tmp_path / "b.h5", "--weights", folder / "best.pt", "--workers", "0",
               "-q").exit_code == 0
    standard = Arch(model="squeezenet1_1", num_classes=2)  # small; --model squeezenet1_1 rebuilds it
    save_checkpoint(tmp_path / "sq.pt", {"state_dict": build_network(standard).state_dict(),
                                         "arch": standard.to_dict()})
    result = cli("export", tmp_path / "sq.pt", tmp_path / "sq.pth")
    assert result.exit_code == 0 and "warning" not in result.output, result.output


def test_predict_takes_several_folders_and_files_in_the_order_given(cli, run, tmp_path):
    folder, test = run
    out = tmp_path / "p.csv"
    single = test / "blue" / "blue_01.png"
    result = cli("predict", folder / "best.pt", test / "red", single, test / "blue", "-o", out, "--workers", "0", "-q")
    assert result.exit_code == 0, result.output
    paths = [row["path"] for row in csv.DictReader(out.open())]
    reds, blues = sorted((test / "red").iterdir()), sorted((test / "blue").iterdir())
    assert paths == [p.as_posix() for p in (*reds, single, *blues)]
    assert f"wrote 9 rows to {out}: 9 predicted" in result.output
    message = one_line_error(cli("predict", folder / "best.pt", test / "red", tmp_path / "missing", "--workers", "0"))
    assert message == f"error: {tmp_path / 'missing'} does not exist"
