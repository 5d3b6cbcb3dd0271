"""A user writes onto a real small disk (a 3 MB tmpfs) that is too small, fills up mid-run, or is read-only.

Every HDF5 write path answers one line (exit 2) and leaves either the resumable partial (featurize) or
nothing (merge, a plain or virtual store). The file system is real: the suite mounts one where it runs
as root (CI does), and skips with the reason elsewhere.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from alexfeat import FeatureStore
from tests.conftest import make_class_folder

SMALL = ("--weights", "none", "--layers", "fc6,fc7", "--resize", "72", "--crop", "64", "--workers", "0", "-q")


def _mount(folder: Path, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(("size=3m", *options)), "tmpfs", str(folder)],
                          capture_output=True, text=True)


@pytest.fixture
def disk(tmp_path: Path):
    """A real 3 MB file system at tmp_path/disk, unmounted afterwards."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mounted = _mount(folder)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=True)


def _remount(folder: Path, option: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{option}", str(folder)], check=True, capture_output=True)


def _one_line_error(result, *words: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1, result.output
    for word in words:
        assert word in result.output, result.output


def _fill(disk: Path) -> None:
    """Fill the disk to its last byte with a file named filler."""
    with open(disk / "filler", "wb") as f:
        try:
            while True:
                f.write(bytes(1 << 16))
                f.flush()
        except OSError:
            pass  # full


def _fill_when(disk: Path, appears: str) -> threading.Thread:
    """Another program filling the disk once ``appears`` exists (the run has created its store)."""

    def fill() -> None:
        end = time.monotonic() + 60
        while not (disk / appears).exists() and time.monotonic() < end:
            time.sleep(0.005)
        _fill(disk)

    thread = threading.Thread(target=fill, daemon=True)
    thread.start()
    return thread


def test_a_store_larger_than_the_disk_is_refused_before_it_is_written(cli, disk, tmp_path):
    images = make_class_folder(tmp_path / "imgs", per_class=60)  # 120 x (4096 + 4096) float32: 3.9 MB
    out = disk / "f.h5"
    _one_line_error(cli("featurize", images, out, *SMALL), "needs 3.9 MB", "free", str(out))
    # Compressed, its uncompressed size is still the bound: HDF5 cannot close a compressed store on a full disk.
    _one_line_error(cli("featurize", images, out, *SMALL, "--compression", "gzip"), "needs 3.9 MB", "uncompressed")
    assert list(disk.iterdir()) == []


def test_a_disk_that_fills_mid_run_keeps_the_finished_batches_and_resume_finishes(cli, disk, tmp_path):
    images = make_class_folder(tmp_path / "imgs", per_class=8)  # 0.5 MB of features: fits, until it fills
    out = disk / "f.h5"
    filler = _fill_when(disk, "f.h5.partial.json")
    result = cli("featurize", images, out, *SMALL, "--batch-size", "2")
    filler.join()
    _one_line_error(result, "disk is full", "--resume", "f.h5.partial")
    assert sorted(p.name for p in disk.iterdir()) == ["f.h5.partial", "f.h5.partial.json", "filler"]
    (disk / "filler").unlink()  # the user frees some space
    resumed = cli("featurize", images, out, *SMALL, "--batch-size", "2", "--resume")
    assert resumed.exit_code == 0, resumed.output
    with FeatureStore.open(out) as store:
        assert len(store) == 16
    assert sorted(p.name for p in disk.iterdir()) == ["f.h5"]


def test_merge_onto_a_small_or_full_disk_leaves_nothing(cli, disk, tmp_path):
    images = make_class_folder(tmp_path / "imgs", per_class=60)
    parts = tmp_path / "parts"
    assert cli("featurize", images, "--parts", parts, "--part-size", "40", *SMALL).exit_code == 0
    _one_line_error(cli("merge", parts, disk / "m.h5"), "needs 3.9 MB", "free")
    assert list(disk.iterdir()) == []
    _fill(disk)
    _one_line_error(cli("merge", parts, disk / "v.h5", "--virtual"), "disk is full", "v.h5.partial")
    assert sorted(p.name for p in disk.iterdir()) == ["filler"]


def test_a_read_only_disk_is_one_line_for_every_writer(cli, disk, tmp_path):
    images = make_class_folder(tmp_path / "imgs", per_class=2)
    parts = tmp_path / "parts"
    assert cli("featurize", images, "--parts", parts, "--part-size", "2", *SMALL).exit_code == 0
    _remount(disk, "ro")
    try:
        _one_line_error(cli("featurize", images, disk / "f.h5", *SMALL), "Read-only file system")
        _one_line_error(cli("featurize", images, "--parts", disk / "p", *SMALL), "Read-only file system")
        _one_line_error(cli("merge", parts, disk / "m.h5"), "Read-only file system")
        _one_line_error(cli("merge", parts, disk / "v.h5", "--virtual"), "Read-only file system")
        assert list(disk.iterdir()) == []
    finally:
        _remount(disk, "rw")
