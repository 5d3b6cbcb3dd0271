"""A user featurizes fast: the overlapped pipeline, its resume points, and the GPU-decode path (run on the CPU)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from alexfeat import FeatureStore
from alexfeat.featurizer.background import BackgroundWriter
from alexfeat.featurizer.decode import ImageDataset, Preprocess, decode_image, make_loader
from alexfeat.featurizer.gpu_decode import (EncodedDataset, apply_orientation, collate_encoded, decode_on_device,
                                               device_decodable)
from alexfeat.featurizer.featurize import featurize
from alexfeat.featurizer.run import FeaturizeConfig
from alexfeat.featurizer.featurizer import build_featurizer
from alexfeat.store.paths import partial_path, progress_path
from alexfeat.store.writer import StoreWriter
from tests.conftest import COLORS, SHARED, make_image

SMALL = ("--resize", "72", "--crop", "64")


def _folder(root: Path, n: int = 40) -> Path:
    for i in range(n):
        make_image(root / ("blue" if i % 2 else "red") / f"{i:03d}.jpg", COLORS["blue" if i % 2 else "red"],
                   size=(48 + i % 5, 40), seed=i)
    (root / "red" / "broken.jpg").write_bytes(b"broken")
    return root


def _config(images: Path, out: Path, weights: Path, **kwargs) -> FeaturizeConfig:
    return FeaturizeConfig(images=images, out=out, weights=str(weights), layers=("pool5", "fc7"), batch_size=4,
                           workers=0, quiet=True, resize=72, crop=64, **kwargs)


KILL_BETWEEN_FLUSHES = """
import os, signal, sys
from pathlib import Path
from alexfeat.featurizer import sink as run
from alexfeat.store import writer as store
from alexfeat.featurizer.featurize import featurize
from alexfeat.featurizer.run import FeaturizeConfig

run._MIN_SAVE_SECONDS = 0  # save on the batch count alone, so the kill lands at a known place
flushes = []
real_flush, real_write = store.StoreWriter.flush, store.StoreWriter.write_rows

def flush(self):
    real_flush(self)
    flushes.append(1)

def write_rows(self, start, features):
    real_write(self, start, features)
    if len(flushes) == 2:  # rows written after the second resume point, before the third
        print(f"killed after writing rows {start}-{start + len(features['fc7'])}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

store.StoreWriter.flush, store.StoreWriter.write_rows = flush, write_rows
images, out, weights = sys.argv[1:]
featurize(FeaturizeConfig(images=Path(images), out=Path(out), weights=weights, layers=("pool5", "fc7"), batch_size=4,
                          workers=0, quiet=True, resize=72, crop=64, flush_batches=3, flush_seconds=60))
"""


def test_kill_9_between_resume_points_then_resume_gives_the_identical_store(tmp_path, alexnet_weights):
    images = _folder(tmp_path / "imgs")
    reference = featurize(_config(images, tmp_path / "reference.h5", alexnet_weights))
    out = tmp_path / "killed.h5"
    proc = subprocess.run([sys.executable, "-c", KILL_BETWEEN_FLUSHES, str(images), str(out), str(alexnet_weights)],
                          capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    assert "killed after writing rows 24-28" in proc.stderr
    saved = json.loads(progress_path(out).read_text())
    assert saved["next_index"] == 24 and saved["rows"] == 24  # two resume points of 3 batches of 4

    resumed = featurize(_config(images, out, alexnet_weights, resume=True))
    assert resumed.rows == reference.rows == 40 and resumed.skipped == reference.skipped
    with FeatureStore.open(tmp_path / "reference.h5") as ref, FeatureStore.open(out) as got:
        assert got.paths == ref.paths
        for layer in ("pool5", "fc7"):
            np.testing.assert_array_equal(got.features(layer), ref.features(layer))


def test_resume_points_are_saved_every_few_batches_not_every_batch(tmp_path, alexnet_weights, monkeypatch):
    from alexfeat.featurizer import sink as run

    monkeypatch.setattr(run, "_MIN_SAVE_SECONDS", 0)
    saved = []
    real_save = run.Progress.save
    monkeypatch.setattr(run.Progress, "save", lambda self, path: (saved.append(self.next_index), real_save(self, path)))
    featurize(_config(_folder(tmp_path / "imgs"), tmp_path / "o.h5", alexnet_weights, flush_batches=4,
                                flush_seconds=60))
    # 41 inputs in 11 batches: saved at creation, after batches 4 and 8, and at the end
    assert saved == [0, 16, 32, 41]


def test_a_write_error_in_the_writer_thread_is_the_usual_clean_error_and_the_run_resumes(
        cli, tmp_path, alexnet_weights, monkeypatch):
    images = _folder(tmp_path / "imgs")
    out = tmp_path / "o.h5"
    real_write = StoreWriter.write_rows
    calls = []

    def failing_write(self, start, features):
        calls.append(threading.current_thread().name)
        if len(calls) == 6:
            raise OSError(28, "No space left on device")  # what h5py raises on a full disk
        real_write(self, start, features)

    monkeypatch.setattr(StoreWriter, "write_rows", failing_write)
    args = (images, out, "--weights", alexnet_weights, "--layers", "pool5,fc7", "--batch-size", "4",
            "--workers", "0", "-q", *SMALL)
    result = cli("featurize", *args)
    assert result.exit_code == 2
    assert f"cannot write {out}.partial: the disk is full (No space left on device)" in " ".join(result.output.split())
    assert "--resume" in result.output
    assert "Traceback" not in result.output
    assert set(calls) == {"alexfeat-writer"}  # no HDF5 write on the forward-pass thread
    monkeypatch.setattr(StoreWriter, "write_rows", real_write)
    resumed = cli("featurize", *args, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "wrote 40 images" in resumed.output and "1 skipped" in resumed.output


def test_background_writer_keeps_order_bounds_its_queue_and_raises_the_handlers_error():
    seen, release = [], threading.Event()

    def slow(item):
        release.wait()
        seen.append(item)

    with BackgroundWriter(slow, depth=2) as bg:
        bg.put(0)
        bg.put(1)
        bg.put(2)  # the thread holds 0, the queue 1 and 2: full
        blocked = threading.Thread(target=bg.put, args=(3,))
        blocked.start()
        time.sleep(0.3)
        assert blocked.is_alive()  # a slow disk slows the producer instead of filling memory
        release.set()
        blocked.join()
        bg.put(4)
    assert seen == [0, 1, 2, 3, 4]

    failure = OSError(28, "No space left on device")

    def fails_on_two(item):
        if item == 2:
            raise failure

    with pytest.raises(OSError) as raised:
        with BackgroundWriter(fails_on_two) as bg:
            for i in range(100):
                bg.put(i)
    assert raised.value is failure


def test_summary_names_workers_threads_and_decoder_and_threads_are_restored(cli, tmp_path, alexnet_weights):
    before = torch.get_num_threads()
    result = cli("featurize", _folder(tmp_path / "imgs", 6), tmp_path / "o.h5", "--weights", alexnet_weights,
                 "--layers", "fc7", "--workers", "0", "--threads", "1", "-q", *SMALL)
    assert result.exit_code == 0, result.output
    assert "(0 decoding workers, 1 torch thread, JPEGs decoded on the CPU, network in fp32" in result.output
    assert torch.get_num_threads() == before
    with FeatureStore.open(tmp_path / "o.h5") as store:
        assert store.attrs["decode"] == "cpu"


def test_compression_option_stores_the_same_features(cli, tmp_path, alexnet_weights):
    images = _folder(tmp_path / "imgs", 10)
    for compression in ("none", "lzf", "gzip"):
        result = cli("featurize", images, tmp_path / f"{compression}.h5", "--weights", alexnet_weights,
                     "--layers", "pool5,fc7", "--workers", "0", "--compression", compression, "-q", *SMALL)
        assert result.exit_code == 0, result.output
    with h5py.File(tmp_path / "none.h5", "r") as plain, h5py.File(tmp_path / "lzf.h5", "r") as lzf, \
            h5py.File(tmp_path / "gzip.h5", "r") as gz:
        assert plain["features/fc7"].compression is None
        assert lzf["features/fc7"].compression == "lzf" and gz["features/fc7"].compression == "gzip"
        for layer in ("pool5", "fc7"):
            np.testing.assert_array_equal(lzf[f"features/{layer}"][:], plain[f"features/{layer}"][:])
            np.testing.assert_array_equal(gz[f"features/{layer}"][:], plain[f"features/{layer}"][:])
    bad = cli("featurize", images, tmp_path / "x.h5", "--compression", "zstd", "-q")
    assert bad.exit_code == 2 and "zstd" in bad.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_decode_gpu_without_cuda_is_one_clear_line(cli, tmp_path, alexnet_weights):
    images = _folder(tmp_path / "imgs", 4)
    for device in ("auto", "cpu"):
        result = cli("featurize", images, tmp_path / "o.h5", "--weights", alexnet_weights, "--device", device,
                     "--decode", "gpu", "-q")
        assert result.exit_code == 2
        assert "--decode gpu needs the network on a CUDA device" in result.output
        assert not (tmp_path / "o.h5").exists() and not partial_path(tmp_path / "o.h5").exists()


def test_compile_option_compiles_the_network_once(cli, tmp_path, alexnet_weights, monkeypatch):
    # Compiling AlexNet takes ~50 s on these 2 cores, too long for the suite: check the wiring,
    # with torch.compile recording what it is given and returning the network unchanged.
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda module, **kw: (compiled.append((type(module).__name__, kw)), module)[1])
    result = cli("featurize", _folder(tmp_path / "imgs", 6), tmp_path / "o.h5", "--weights", alexnet_weights,
                 "--layers", "fc7", "--workers", "0", "--compile", "-q", *SMALL)
    assert result.exit_code == 0, result.output
    assert compiled == [("LayerExtractor", {"dynamic": False})]


def _jpeg_with_orientation(path: Path, orientation: int, size=(64, 40), **save) -> Path:
    rng = np.random.default_rng(orientation)
    im = Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8))
    exif = im.getexif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, exif=exif.tobytes(), quality=90, **save)
    return path


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torchvision 0.29's decoders
def test_exif_orientation_is_applied_identically_on_both_paths(tmp_path):
    from torchvision.io import ImageReadMode, decode_jpeg

    for orientation in range(1, 9):
        path = _jpeg_with_orientation(tmp_path / f"o{orientation}.jpg", orientation)
        data = path.read_bytes()
        assert device_decodable(data) == orientation
        raw = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        upright = decode_image(path, 256)  # the CPU path: PIL's exif_transpose
        assert upright.shape[1:] == ((64, 40) if orientation >= 5 else (40, 64))
        assert torch.equal(apply_orientation(raw, orientation), upright), orientation


def _mixed_folder(root: Path) -> Path:
    """What nvJPEG gets and what falls back to the CPU path, in one folder."""
    root.mkdir(parents=True)
    for i in range(5):
        make_image(root / f"a{i}_plain.jpg", COLORS["red"], size=(60 + 9 * i, 50), seed=i)
    _jpeg_with_orientation(root / "b_rotated.jpg", 6, size=(90, 60))
    make_image(root / "c_big.jpg", COLORS["blue"], size=(400, 300), seed=7)  # CPU path: reduced-size decoding
    rgb = np.asarray(Image.open(root / "a0_plain.jpg"))
    Image.fromarray(rgb).convert("CMYK").save(root / "d_cmyk.jpg")
    Image.fromarray(rgb).save(root / "e_progressive.jpg", progressive=True)
    Image.fromarray(rgb).convert("L").save(root / "f_gray.jpg")
    Image.fromarray(rgb).save(root / "g.png")
    good = (root / "a1_plain.jpg").read_bytes()
    (root / "h_truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "i_text.jpg").write_text("not an image")
    return root


def test_batched_decode_path_matches_the_cpu_path(tmp_path, alexnet_weights):
    """The --decode gpu code run on the CPU (decode_jpeg on a list of CPU tensors): same rows, same skips,
    same pixels but for the large JPEG (decoded at full size, not at reduced DCT size), features within 2%."""
    folder = _mixed_folder(tmp_path / "mixed")
    files = sorted(folder.iterdir())
    pre = Preprocess(resize=72, crop=64)
    kinds = {f.name: device_decodable(f.read_bytes()) for f in files}
    assert [name for name, o in kinds.items() if o is not None] == [
        "a0_plain.jpg", "a1_plain.jpg", "a2_plain.jpg", "a3_plain.jpg", "a4_plain.jpg", "b_rotated.jpg",
        "c_big.jpg", "f_gray.jpg", "h_truncated.jpg"]

    cpu = list(make_loader(ImageDataset(files, pre), 16, 0))
    batched = [decode_on_device(b, files, pre, torch.device("cpu"))
               for b in make_loader(EncodedDataset(files, pre), 16, 0, collate_fn=collate_encoded)]
    assert len(cpu) == len(batched) == 1
    cpu, batched = cpu[0], batched[0]
    assert batched.indices == cpu.indices and len(cpu.indices) == 11
    assert batched.failures == cpu.failures and [files[i].name for i, _ in cpu.failures] == [
        "h_truncated.jpg", "i_text.jpg"]
    diff = (batched.images.int() - cpu.images.int()).abs().amax(dim=(1, 2, 3))
    big = cpu.indices.index(files.index(folder / "c_big.jpg"))
    assert diff[big] > 0 and diff[[k for k in range(len(diff)) if k != big]].max() == 0

    fz = build_featurizer("alexnet", str(alexnet_weights), ("fc7",), "none", torch.device("cpu"),
                          overrides=dict(resize=72, crop=64))
    ours, theirs = fz(batched.images)["fc7"], fz(cpu.images)["fc7"]
    assert np.abs(ours - theirs).max() <= 0.02 * np.abs(theirs).max()


def test_batched_decode_path_keeps_the_pixel_limit(tmp_path):
    files = [make_image(tmp_path / "small.jpg", COLORS["red"], size=(60, 50)),
             make_image(tmp_path / "large.jpg", COLORS["blue"], size=(200, 150))]
    pre = Preprocess(resize=72, crop=64)
    cpu = ImageDataset(files, pre, max_pixels=10_000)
    batch = collate_encoded([EncodedDataset(files, pre, max_pixels=10_000)[i] for i in range(2)])
    decoded = decode_on_device(batch, files, pre, torch.device("cpu"))
    assert decoded.indices == [0] and decoded.failures == [(1, cpu[1][2])]
    assert "max-pixels" in decoded.failures[0][1]


def test_loader_batches_arrive_channels_last_from_shared_memory_with_the_same_pixels(tmp_path):
    """A worker builds each batch in the layout the network runs in (no transpose on the forward
    path) and in shared memory (handing it over copies nothing); the pixels are the decoded ones."""
    files = [make_image(tmp_path / f"{k}.jpg", color, size=(90 + 7 * k, 70)) for k, color in
             enumerate(COLORS.values())]
    pre = Preprocess(resize=72, crop=64)
    expected = [ImageDataset(files, pre)[k][1] for k in range(len(files))]
    for workers in (0, 1):
        batch = next(iter(make_loader(ImageDataset(files, pre), len(files), workers)))
        assert batch.images.is_contiguous(memory_format=torch.channels_last)
        assert batch.images.is_shared() == (workers > 0)
        assert torch.equal(batch.images, torch.stack(expected))


PHOTOS = SHARED / "data" / "dogs-vs-cats" / "test" / "cats"


@pytest.mark.skipif(not PHOTOS.is_dir(), reason="needs ../shared/data/dogs-vs-cats")
def test_batched_decode_of_real_photos_equals_the_cpu_path(tmp_path):
    files = sorted(PHOTOS.glob("*.jpg"))[:32]
    pre = Preprocess()
    cpu = next(iter(make_loader(ImageDataset(files, pre), 32, 0)))
    batched = decode_on_device(next(iter(make_loader(EncodedDataset(files, pre), 32, 0, collate_fn=collate_encoded))),
                               files, pre, torch.device("cpu"))
    assert batched.indices == cpu.indices == list(range(32))
    assert torch.equal(batched.images, cpu.images)


def test_workers_threads_and_decoder_are_chosen_from_the_machine(monkeypatch):
    from alexfeat.featurizer import device as dev

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(dev.os, "cpu_count", lambda: 2)
    assert dev.default_workers(cpu) == 1 and dev.default_threads(cpu, 1) == 2
    assert dev.resolve_decode("auto", cpu) == "cpu"
    monkeypatch.setattr(dev.os, "cpu_count", lambda: 16)
    assert dev.default_workers(cpu) == 4 and dev.default_threads(cpu, 4) == 16
    # A bf16 network costs a fifth of the CPU time: decoding gets its share of the cores (not on 2 cores).
    assert dev.default_workers(cpu, precision="bf16") == 7
    monkeypatch.setattr(dev.os, "cpu_count", lambda: 2)
    assert dev.default_workers(cpu, precision="bf16") == 1
    monkeypatch.setattr(dev.os, "cpu_count", lambda: 16)
    # On a GPU: reading bytes for nvJPEG needs few workers, decoding on the CPU all the cores.
    assert dev.resolve_decode("auto", cuda) == "gpu" and dev.resolve_decode("cpu", cuda) == "cpu"
    assert dev.default_workers(cuda, "gpu") == 4 and dev.default_workers(cuda, "cpu") == 16
    assert dev.default_threads(cuda, 4) == 4
