"""A user featurizes awkward inputs: partial labels, odd class folders, huge images, bad settings."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from alexfeat import FeatureStore
from alexfeat.store.paths import partial_path
from tests.conftest import COLORS, make_class_folder, make_image

SMALL = ("--resize", "72", "--crop", "64")
FAST = ("--workers", "0", "-q", *SMALL)


def test_a_list_with_some_empty_labels_keeps_the_others(cli, tmp_path, alexnet_weights):
    folder = make_class_folder(tmp_path / "imgs", per_class=2)
    files = sorted(p.relative_to(tmp_path).as_posix() for p in folder.rglob("*.*"))
    rows = [f"{f},{Path(f).parent.name}" for f in files]
    rows[1] = files[1] + ","  # one row lost its label
    (tmp_path / "list.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    out = tmp_path / "list.h5"
    result = cli("featurize", tmp_path / "list.csv", out, "--weights", alexnet_weights, "--layers", "fc7", *FAST)
    assert result.exit_code == 0, result.output
    assert "1 of 4 rows of list.csv have no label" in result.output
    with FeatureStore.open(out) as store:
        assert store.classes == ["blue", "red"]
        assert store.labels.tolist() == [0, -1, 1, 1]


def test_an_empty_class_folder_is_left_out_with_a_warning(cli, tmp_path, alexnet_weights):
    folder = make_class_folder(tmp_path / "imgs", per_class=2)
    (folder / "green").mkdir()
    out = tmp_path / "out.h5"
    result = cli("featurize", folder, out, "--weights", alexnet_weights, "--layers", "fc7", *FAST)
    assert result.exit_code == 0, result.output
    assert "class folder green/ holds no images: left out" in result.output
    with FeatureStore.open(out) as store:
        assert store.classes == ["blue", "red"] and store.labels.tolist() == [0, 0, 1, 1]


@pytest.mark.parametrize("case", ["case", "loose"])
def test_ambiguous_class_folders_are_refused(cli, tmp_path, alexnet_weights, case):
    folder = make_class_folder(tmp_path / "imgs", per_class=2)
    if case == "case":
        make_image(folder / "Blue" / "x.png", COLORS["blue"])
        message = "differ only in case: Blue vs blue"
    else:
        make_image(folder / "stray.jpg", COLORS["blue"])
        message = "images beside them (stray.jpg) whose class is unknown"
    out = tmp_path / "out.h5"
    result = cli("featurize", folder, out, "--weights", alexnet_weights, "--layers", "fc7", *FAST)
    assert result.exit_code == 2 and message in result.output
    assert not out.exists() and not partial_path(out).exists()


def test_a_broken_symlink_is_skipped_with_its_reason(cli, tmp_path, alexnet_weights):
    folder = make_class_folder(tmp_path / "imgs", per_class=2)
    (folder / "red" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    out = tmp_path / "out.h5"
    result = cli("featurize", folder, out, "--weights", alexnet_weights, "--layers", "fc7", *FAST)
    assert result.exit_code == 0, result.output
    assert "wrote 4 images" in result.output and "1 skipped" in result.output
    with FeatureStore.open(out) as store:
        assert dict(store.skipped)["red/gone.jpg"].startswith("FileNotFoundError")


@pytest.mark.parametrize("args, message", [
    (("--std", "0,0,0"), "--std must be positive"),
    (("--std", "0.5,0.5"), "--std needs 3 comma-separated values"),
    (("--resize", "50", "--crop", "64"), "--resize 50 is smaller than --crop 64"),
])
def test_preprocessing_that_cannot_work_is_refused(cli, images_dir, tmp_path, alexnet_weights, args, message):
    out = tmp_path / "out.h5"
    result = cli("featurize", images_dir, out, "--weights", alexnet_weights, "--layers", "fc7", "--workers", "0",
                 "-q", *SMALL, *args)
    assert result.exit_code == 2 and message in result.output, result.output
    assert not out.exists() and not partial_path(out).exists()


def test_a_model_with_non_finite_activations_names_the_layer(cli, images_dir, tmp_path, alexnet_weights):
    state = torch.load(alexnet_weights)
    state["classifier.4.weight"][0, 0] = float("nan")  # fc7's first unit
    torch.save(state, tmp_path / "nan.pth")
    out = tmp_path / "out.h5"
    result = cli("featurize", images_dir, out, "--weights", tmp_path / "nan.pth", "--layers", "fc6,fc7", *FAST)
    assert result.exit_code == 2
    assert "layer fc7 produced NaN or infinite activations" in result.output
    assert not out.exists() and not partial_path(out).exists()  # refused before the store was made


def test_fit_with_a_validation_split_never_imports_torch(blobs, tmp_path):
    train, _ = blobs["separable"]
    code = ("import sys; from alexfeat.classifiers.fit import FitConfig, fit_classifier; "
            f"r = fit_classifier(FitConfig('logreg', {str(train)!r}, out={str(tmp_path / 'm.joblib')!r}, "
            "val_split=0.2)); assert r.val['n'] == 36; sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent).returncode == 0


def test_pooling_applies_to_pool5_and_the_store_says_what_was_done(cli, images_dir, tmp_path, alexnet_weights):
    out = tmp_path / "max.h5"
    result = cli("featurize", images_dir, out, "--weights", alexnet_weights, "--layers", "pool5,conv5,fc7",
                 "--pool", "max", *FAST)
    assert result.exit_code == 0, result.output
    with FeatureStore.open(out) as store:
        assert store.dim("pool5") == 256 and store.dim("conv5") == 256 and store.dim("fc7") == 4096
        assert store.attrs["pooling"] == {"pool5": "max", "conv5": "max", "fc7": "none"}
        # At 64x64 the last max-pool covers conv5's whole 3x3 map: both maxima are the same numbers.
        np.testing.assert_allclose(store.features("pool5"), store.features("conv5"))
    flat = tmp_path / "flat.h5"
    assert cli("featurize", images_dir, flat, "--weights", alexnet_weights, "--layers", "pool5", *FAST).exit_code == 0
    with FeatureStore.open(flat) as store:
        assert store.dim("pool5") == 9216 and store.attrs["pooling"] == {"pool5": "none"}  # the flatten node: already a vector


def test_module_names_from_the_group_listing_are_layers(cli, images_dir, tmp_path):
    out = tmp_path / "resnet.h5"
    result = cli("featurize", images_dir, out, "--model", "resnet18", "--weights", "none", "--layers",
                 "layer4,pre_logits", "--pool", "avg", *FAST)
    assert result.exit_code == 0, result.output
    with FeatureStore.open(out) as store:
        # layer4's output averaged over space is exactly what resnet's avgpool + flatten gives.
        np.testing.assert_allclose(store.features("layer4"), store.features("pre_logits"), rtol=1e-5, atol=1e-6)
    assert "Module names" in cli("layers", "--model", "resnet18", "--all").output


def _trainer_checkpoint(path: Path, model: str) -> Path:
    from tests.conftest import save_checkpoint
    from alexfeat.featurizer.arch import Arch
    from alexfeat.featurizer.models import build_network

    arch = Arch(model=model, num_classes=2)
    save_checkpoint(path, {"state_dict": build_network(arch).state_dict(), "arch": arch.to_dict(),
                           "preprocess": {"resize": 72, "crop": 64}, "classes": ["blue", "red"]})
    return path


def test_a_trainer_checkpoint_brings_its_model_and_default_layer(cli, images_dir, tmp_path):
    pytest.importorskip("timm")
    ckpt = _trainer_checkpoint(tmp_path / "best.pt", "timm:test_efficientnet")
    out = tmp_path / "ft.h5"
    result = cli("featurize", images_dir, out, "--weights", ckpt, "--workers", "0", "-q")
    assert result.exit_code == 0, result.output
    with FeatureStore.open(out) as store:
        assert store.attrs["model"] == "timm:test_efficientnet" and store.layers == ["pre_logits"]
    result = cli("featurize", images_dir, tmp_path / "x.h5", "--weights", ckpt, "--model", "resnet18", *FAST)
    assert result.exit_code == 2
    assert "is a checkpoint of timm:test_efficientnet, not resnet18" in result.output


def test_a_state_dict_of_another_model_is_one_short_line(cli, images_dir, tmp_path, alexnet_weights):
    result = cli("featurize", images_dir, tmp_path / "x.h5", "--model", "resnet18", "--weights", alexnet_weights,
                 *FAST)
    assert result.exit_code == 2
    assert "does not fit resnet18: 122 keys missing, 16 unexpected (first: conv1.weight)" in result.output
    assert "pass --model" in result.output and len(result.output) < 400


def test_timm_preprocessing_is_timms_own(tmp_path):
    pytest.importorskip("timm")
    from alexfeat.featurizer.arch import Arch
    from alexfeat.featurizer.models import load_model

    pre = load_model(Arch(model="timm:resnet18"), "none").preprocess
    assert (pre.resize, pre.crop, pre.interpolation) == (235, 224, "bicubic")  # floor(224 / 0.95), as timm does


def test_a_renamed_copy_of_the_weights_is_the_same_weights(cli, tmp_path, alexnet_weights):
    images = make_class_folder(tmp_path / "imgs", per_class=3)
    store = tmp_path / "feats.h5"
    assert cli("featurize", images, store, "--weights", alexnet_weights, "--layers", "fc7", *FAST).exit_code == 0
    assert cli("fit-logreg", store, "-o", tmp_path / "m.joblib").exit_code == 0
    copy = tmp_path / "copied-and-renamed.pth"
    copy.write_bytes(alexnet_weights.read_bytes())
    result = cli("predict", tmp_path / "m.joblib", images, "--weights", copy, "-q", "--workers", "0")
    assert result.exit_code == 0, result.output
    again = tmp_path / "again.h5"
    assert cli("featurize", images, again, "--weights", copy, "--layers", "fc7", *FAST).exit_code == 0
    result = cli("evaluate", tmp_path / "m.joblib", again)
    assert result.exit_code == 0, result.output


def test_weights_identity_reads_the_stored_text_back():
    from alexfeat.store.weights_id import WeightsId

    digest = "ab" * 32
    for text in (f"file:a.pth sha256:{digest}", "none(seed=-3)", "AlexNet_Weights.IMAGENET1K_V1"):
        assert str(WeightsId.parse(text)) == text
    assert WeightsId.parse(f"file:a.pth sha256:{digest}") == WeightsId.parse(f"file:b.pt sha256:{digest}")
    assert WeightsId.parse("none(seed=1)") != WeightsId.parse("none(seed=2)")


def test_a_checkpoint_cannot_predict_from_a_store(cli, tmp_path, blobs):
    ckpt = _trainer_checkpoint(tmp_path / "best.pt", "alexnet")
    result = cli("predict", ckpt, blobs["separable"][0])
    assert result.exit_code == 2
    assert "runs on images, not on the feature store" in result.output


def test_predict_csv_accounts_for_every_input(cli, tmp_path, bad_images_dir):
    ckpt = _trainer_checkpoint(tmp_path / "best.pt", "alexnet")
    out = tmp_path / "preds.csv"
    result = cli("predict", ckpt, bad_images_dir, "--out", out, "-q", "--workers", "0")
    assert result.exit_code == 0, result.output
    rows = {row["path"]: row for row in csv.DictReader(out.open())}
    assert len(rows) == 8
    assert rows["good_0.jpg"]["prediction"] in ("blue", "red") and rows["good_0.jpg"]["error"] == ""
    assert rows["notes.jpg"]["prediction"] == "" and rows["notes.jpg"]["error"].startswith("UnidentifiedImageError")
    assert "DecompressionBomb" in rows["bomb.png"]["error"]


_PEAK_PER_IMAGE = """
import resource, sys
from pathlib import Path
from alexfeat.featurizer.decode import ImageDataset, Preprocess
ds = ImageDataset([Path(p) for p in sys.argv[1:]], Preprocess())
ds[0]  # the first call loads decoders and resamplers
for i in range(1, len(ds)):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _, image, reason = ds[i]
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024
    print(Path(sys.argv[1 + i]).name, grown, reason if image is None else tuple(image.shape), sep="|")
"""


def test_huge_images_decode_in_bounded_memory(tmp_path):
    from PIL import Image

    from tests.conftest import bomb_png

    make_image(tmp_path / "warmup.jpg", COLORS["red"])
    Image.new("RGB", (12000, 9000), COLORS["red"]).save(tmp_path / "phone_108mp.jpg", quality=80)
    strip = np.random.default_rng(0).integers(0, 255, (10, 100000, 3), dtype=np.uint8)
    Image.fromarray(strip).save(tmp_path / "strip_100000x10.png")  # took 5.7 GB before
    Image.new("RGB", (6000, 4000), COLORS["blue"]).save(tmp_path / "big_24mp.png")
    bomb_png(tmp_path / "png_225mp.png", side=15000)  # 900 MB of raster: refused, not attempted
    bomb_png(tmp_path / "png_400mp.png", side=20000)  # over the pixel limit
    names = ["warmup.jpg", "phone_108mp.jpg", "strip_100000x10.png", "big_24mp.png", "png_225mp.png", "png_400mp.png"]
    run = subprocess.run([sys.executable, "-c", _PEAK_PER_IMAGE, *[str(tmp_path / n) for n in names]],
                         capture_output=True, text=True, cwd=Path(__file__).parent, timeout=120)
    assert run.returncode == 0, run.stderr
    results = {name: (int(grown), outcome) for name, grown, outcome in (line.split("|") for line in
                                                                          run.stdout.splitlines())}
    for name in ("phone_108mp.jpg", "strip_100000x10.png", "big_24mp.png"):
        assert results[name][1] == "(3, 224, 224)", results
    assert results["phone_108mp.jpg"][0] < 100  # DCT-scaled to 1/8 while decoding
    assert max(grown for grown, _ in results.values()) < 1000
    assert "needs 900 MB to decode" in results["png_225mp.png"][1]
    assert "over the limit of 250" in results["png_400mp.png"][1] and "--max-pixels" in results["png_400mp.png"][1]


def test_max_pixels_sets_the_decompression_bomb_limit(cli, tmp_path, alexnet_weights):
    folder = make_class_folder(tmp_path / "imgs", per_class=2)
    make_image(folder / "red" / "large.jpg", COLORS["red"], size=(1200, 1000))
    out = tmp_path / "out.h5"
    result = cli("featurize", folder, out, "--weights", alexnet_weights, "--layers", "fc7", "--max-pixels",
                 "1000000", *FAST)
    assert result.exit_code == 0, result.output
    with FeatureStore.open(out) as store:
        assert len(store) == 4 and "over the limit of 1" in dict(store.skipped)["red/large.jpg"]
