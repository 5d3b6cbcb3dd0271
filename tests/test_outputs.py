"""Nothing a user has is lost: every command that writes follows one output rule, and runs lock their output."""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

import pytest

from alexfeat import FeatureStore
from alexfeat.errors import AlexfeatError
from alexfeat.lock import RunLock
from alexfeat.store.paths import lock_path, partial_path
from tests.conftest import hold_lock, make_class_folder

SMALL = ("--weights", "none", "--layers", "fc7", "--resize", "72", "--crop", "64", "--workers", "0", "-q")


def _one_line_error(result, *words: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1, result.output
    for word in words:
        assert word in result.output, result.output


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.suffix == ".tmp")


@pytest.fixture
def fitted(cli, blobs, tmp_path):
    train, test = blobs["separable"]
    model = tmp_path / "m.joblib"
    assert cli("fit-logreg", train, "-o", model).exit_code == 0
    return train, test, model


def test_fit_never_writes_over_its_own_store(cli, blobs, tmp_path):
    train, _ = blobs["separable"]
    before = train.read_bytes()
    (tmp_path / "sub").mkdir()
    os.symlink(train, tmp_path / "link.h5")
    for out in (train, tmp_path / "sub" / ".." / train.name, tmp_path / "link.h5"):
        for extra in ((), ("--overwrite",)):
            result = cli("fit-logreg", train, "-o", out, *extra)
            _one_line_error(result, "is also an input")
    assert train.read_bytes() == before
    with FeatureStore.open(train) as store:
        assert len(store) == 180


@pytest.mark.parametrize("command", ["fit-svm", "fit-logreg", "fit-mlp"])
def test_fit_refuses_an_existing_model_without_overwrite(cli, blobs, tmp_path, command):
    train, _ = blobs["separable"]
    out = tmp_path / "keep.joblib"
    out.write_bytes(b"my model")
    _one_line_error(cli(command, train, "-o", out), "exists", "--overwrite")
    assert out.read_bytes() == b"my model"
    assert cli(command, train, "-o", out, "--overwrite").exit_code == 0
    assert out.read_bytes() != b"my model"


def test_the_python_api_is_safe_by_default(blobs, tmp_path):
    import alexfeat

    out = tmp_path / "keep.joblib"
    out.write_bytes(b"my model")
    with pytest.raises(AlexfeatError, match="overwrite=True"):
        alexfeat.fit("logreg", blobs["separable"][0], out=out)
    assert out.read_bytes() == b"my model"


def test_missing_output_folders_are_created(cli, fitted, tmp_path):
    train, test, model = fitted
    deep = tmp_path / "new" / "deeper"
    assert cli("fit-logreg", train, "-o", deep / "m.joblib").exit_code == 0
    result = cli("evaluate", model, test, "--report", deep / "r" / "report.json", "--plot", deep / "p" / "cm.png")
    assert result.exit_code == 0, result.output
    assert cli("predict", model, test, "--out", deep / "csv" / "pred.csv").exit_code == 0
    assert sorted(p.name for p in deep.rglob("*") if p.is_file()) == ["cm.png", "m.joblib", "pred.csv", "report.json"]


def test_evaluate_and_predict_outputs_are_never_inputs_or_existing_files(cli, fitted, tmp_path):
    train, test, model = fitted
    model_bytes, test_bytes = model.read_bytes(), test.read_bytes()
    taken = tmp_path / "taken.json"
    taken.write_text("mine")
    for args, words in [
        (("evaluate", model, test, "--report", model, "--overwrite"), ("is also an input",)),
        (("evaluate", model, test, "--plot", test), ("is also an input",)),
        (("evaluate", model, test, "--report", taken), ("exists", "--overwrite")),
        (("evaluate", model, test, "--report", tmp_path / "x", "--plot", tmp_path / "x"), ("same file",)),
        (("predict", model, test, "--out", test, "--overwrite"), ("is also an input",)),
        (("predict", model, test, "--out", taken), ("exists", "--overwrite")),
    ]:
        _one_line_error(cli(*args), *words)
    assert model.read_bytes() == model_bytes and test.read_bytes() == test_bytes and taken.read_text() == "mine"
    assert cli("predict", model, test, "--out", taken, "--overwrite").exit_code == 0
    assert taken.read_text().startswith("path,prediction")


def test_featurize_never_writes_over_its_image_list(cli, tmp_path):
    images = make_class_folder(tmp_path / "imgs", per_class=2)
    listing = tmp_path / "list.csv"
    listing.write_text("".join(f"{p.relative_to(tmp_path)},{p.parent.name}\n" for p in sorted(images.rglob("*.*"))))
    before = listing.read_text()
    _one_line_error(cli("featurize", listing, listing, "--overwrite", *SMALL), "is also an input")
    assert listing.read_text() == before
    out = tmp_path / "new" / "folder" / "f.h5"
    assert cli("featurize", listing, out, *SMALL).exit_code == 0 and out.exists()


def test_plot_refuses_an_existing_chart_without_overwrite(cli, tmp_path):
    from alexfeat.trainers.config import TrainConfig
    from alexfeat.trainers.run_dir import RunDir

    run = RunDir.create(tmp_path / "run", TrainConfig("scratch", tmp_path, tmp_path, tmp_path / "run"))
    run.append_metrics({"epoch": 1, "round": 1, "test_acc": 0.5})
    chart = tmp_path / "compare.png"
    chart.write_bytes(b"an older chart")
    _one_line_error(cli("plot", run.path, "-o", chart), "exists", "--overwrite")
    assert chart.read_bytes() == b"an older chart"
    assert cli("plot", run.path, "-o", chart, "--overwrite").exit_code == 0
    assert chart.read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, ("disk is full",)), (errno.EROFS, ("Read-only",)),
                                         (errno.EACCES, ("Permission denied",))])
def test_a_full_disk_or_read_only_folder_is_one_line_and_leaves_nothing(cli, fitted, tmp_path, monkeypatch, code,
                                                                       words):
    import joblib

    train, test, model = fitted
    out = tmp_path / "out"
    out.mkdir()

    def failing_write(*args, **kwargs):
        target = Path(args[1] if len(args) > 1 else args[0])  # joblib.dump(value, path) / fig.savefig(path)
        target.write_bytes(b"half a file")  # what a writer leaves when the disk fills mid-way
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(joblib, "dump", failing_write)
    _one_line_error(cli("fit-logreg", train, "-o", out / "m.joblib"), *words)
    import matplotlib.figure

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, path, **kw: failing_write(path))
    _one_line_error(cli("evaluate", model, test, "--plot", out / "cm.png"), *words)
    monkeypatch.setattr(Path, "write_text", lambda self, text: failing_write(self))
    _one_line_error(cli("evaluate", model, test, "--report", out / "r.json"), *words)
    assert list(out.iterdir()) == [] and _leftovers(tmp_path) == []


def test_an_unwritable_folder_is_one_line(cli, fitted, tmp_path, monkeypatch):
    import tempfile

    train, test, model = fitted

    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    _one_line_error(cli("predict", model, test, "--out", tmp_path / "p.csv"), "cannot write", "Read-only")
    assert not (tmp_path / "p.csv").exists()


def test_ctrl_c_while_writing_leaves_the_old_file_whole(cli, fitted, tmp_path, monkeypatch):
    import joblib

    train, _, model = fitted
    before = model.read_bytes()

    def interrupted(value, path, *args, **kwargs):
        Path(path).write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(joblib, "dump", interrupted)
    result = cli("fit-logreg", train, "-o", model, "--overwrite")
    assert result.exit_code == 130
    assert model.read_bytes() == before and _leftovers(tmp_path) == []


def test_a_second_featurize_on_the_same_store_is_refused_while_the_first_runs(cli, tmp_path):
    images = make_class_folder(tmp_path / "imgs", per_class=2)
    out = tmp_path / "f.h5"
    holder = hold_lock(lock_path(out))
    try:
        for extra in ((), ("--overwrite",), ("--resume",)):
            _one_line_error(cli("featurize", images, out, *SMALL, *extra), "another run is writing", str(out))
        assert not out.exists() and not partial_path(out).exists()
    finally:
        holder.send_signal(signal.SIGKILL)  # the operating system releases a killed run's lock
        holder.wait()
    result = cli("featurize", images, out, *SMALL)
    assert result.exit_code == 0, result.output
    assert out.exists() and not lock_path(out).exists()


def test_a_run_lock_is_exclusive_and_reusable(tmp_path):
    path = tmp_path / "run.lock"
    with RunLock(path, "the run folder r"):
        with pytest.raises(AlexfeatError, match="another run is writing the run folder r"):
            RunLock(path, "the run folder r").acquire()
    assert not path.exists()
    with RunLock(path, "the run folder r"):
        assert path.exists()


def test_merge_never_writes_over_one_of_its_parts(cli, tmp_path):
    images = make_class_folder(tmp_path / "imgs", per_class=2)
    parts = tmp_path / "new" / "parts"  # missing parents are created for --parts too
    assert cli("featurize", images, "--parts", parts, "--part-size", "2", *SMALL).exit_code == 0
    first = sorted(parts.glob("*.h5"))[0]
    before = first.read_bytes()
    _one_line_error(cli("merge", parts, first, "--overwrite"), "is also an input")
    assert first.read_bytes() == before
    assert cli("merge", parts, tmp_path / "merged.h5").exit_code == 0
    _one_line_error(cli("merge", parts, tmp_path / "merged.h5"), "exists", "--overwrite")
