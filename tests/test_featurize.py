"""A user featurizes image folders into HDF5 stores."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from alexfeat import FeatureStore
from alexfeat.featurizer.decode import Preprocess, decode_image, resize_image
from alexfeat.store.paths import partial_path, progress_path
from tests.conftest import COLORS, make_class_folder, make_image

SMALL = ("--resize", "72", "--crop", "64")  # AlexNet runs on 64x64 inputs too; keeps tests fast


def test_featurize_class_folders_with_cached_imagenet_weights(cli, images_dir, torch_home, tmp_path):
    out = tmp_path / "feats.h5"
    result = cli("featurize", images_dir, out, "--workers", "1", "--quiet")
    assert result.exit_code == 0, result.output
    assert "wrote 12 images" in result.output and "0 skipped" in result.output
    with FeatureStore.open(out) as store:
        assert store.layers == ["pool5", "fc6", "fc7"]
        assert store.dim("pool5") == 9216 and store.dim("fc6") == 4096 and store.dim("fc7") == 4096
        assert store.classes == ["blue", "red"]
        assert store.labels.tolist() == [0] * 6 + [1] * 6
        assert store.paths[0] == "blue/blue_00.jpg"
        attrs = store.attrs
        assert attrs["weights"] == "AlexNet_Weights.IMAGENET1K_V1"
        assert attrs["model"] == "alexnet" and attrs["complete"] is True
        assert attrs["preprocess"]["crop"] == 224 and attrs["preprocess"]["resize"] == 256
        assert attrs["alexfeat_version"] and attrs["created"]
        assert (store.features("fc7") >= 0).all()  # after ReLU
    assert not partial_path(out).exists() and not progress_path(out).exists()


def test_stored_layers_equal_a_direct_torchvision_computation(images_dir, alexnet_weights, tmp_path, cli):
    out = tmp_path / "feats.h5"
    result = cli("featurize", images_dir, out, "--weights", alexnet_weights, "--layers",
                 "pool5,fc6-pre,fc6,fc7-pre,fc7,fc8", "--workers", "0", "-q")
    assert result.exit_code == 0, result.output
    net = torchvision.models.alexnet()
    net.load_state_dict(torch.load(alexnet_weights, weights_only=True))
    net.eval()
    pre = Preprocess()
    with FeatureStore.open(out) as store:
        files = [images_dir / p for p in store.paths]
        x = torch.stack([resize_image(decode_image(f, 224), pre) for f in files]).float() / 255
        x = (x - torch.tensor(pre.mean)[:, None, None]) / torch.tensor(pre.std)[:, None, None]
        with torch.no_grad():
            pool5 = torch.flatten(net.avgpool(net.features(x)), 1)
            c = net.classifier
            fc6_pre = c[1](pool5)
            fc6 = torch.relu(fc6_pre)
            fc7_pre = c[4](fc6)
            fc7 = torch.relu(fc7_pre)
            fc8 = c[6](fc7)
        expected = {"pool5": pool5, "fc6-pre": fc6_pre, "fc6": fc6, "fc7-pre": fc7_pre, "fc7": fc7, "fc8": fc8}
        for layer, want in expected.items():
            got = store.features(layer)
            np.testing.assert_allclose(got, want.numpy(), rtol=1e-3, atol=1e-4 * float(want.abs().max()),
                                       err_msg=layer)
        assert (store.features("fc6-pre") < 0).any()  # an in-place ReLU did not leak into the -pre layer


def test_preprocessing_matches_torchvision_reference_transforms(images_dir):
    reference = torchvision.models.AlexNet_Weights.IMAGENET1K_V1.transforms()
    from PIL import Image

    for f in sorted(images_dir.rglob("*.*"))[:4]:
        ours = resize_image(decode_image(f, 224), Preprocess()).float() / 255
        theirs = reference(Image.open(f).convert("RGB"))
        theirs = theirs * torch.tensor(reference.std)[:, None, None] + torch.tensor(reference.mean)[:, None, None]
        assert ours.shape == theirs.shape == (3, 224, 224)
        assert (ours - theirs).abs().mean() < 2 / 255


def test_bad_files_are_skipped_with_reasons(cli, bad_images_dir, alexnet_weights, tmp_path):
    out = tmp_path / "mixed.h5"
    result = cli("featurize", bad_images_dir, out, "--weights", alexnet_weights, "--layers", "fc7",
                 "--workers", "1", "-q", *SMALL)
    assert result.exit_code == 0, result.output
    assert "wrote 4 images" in result.output and "4 skipped" in result.output
    assert "warning: skipped 4" in result.output
    with FeatureStore.open(out) as store:
        assert sorted(store.paths) == [f"good_{i}.jpg" for i in range(4)]
        assert (store.labels == -1).all() and store.classes == []
        reasons = dict(store.skipped)
    assert set(reasons) == {"truncated.jpg", "empty.png", "notes.jpg", "bomb.png"}
    assert "truncated" in reasons["truncated.jpg"].lower()
    assert "DecompressionBomb" in reasons["bomb.png"]
    assert "cannot identify" in reasons["notes.jpg"]


def test_every_image_mode_becomes_rgb(tmp_path):
    base = np.zeros((40, 60, 3), dtype=np.uint8)
    base[:, :30] = (250, 10, 10)  # red left half
    from PIL import Image

    rgb = Image.fromarray(base)
    cases = {
        "gray.png": rgb.convert("L"),
        "palette.gif": rgb.convert("P"),
        "rgba.png": rgb.convert("RGBA"),
        "cmyk.jpg": rgb.convert("CMYK"),
        "photo.webp": rgb,
        "scan.tiff": rgb,
        "pic.bmp": rgb,
    }
    for name, im in cases.items():
        im.save(tmp_path / name)
        out = decode_image(tmp_path / name, 32)
        assert out.dtype == torch.uint8 and out.shape == (3, 40, 60), name
    sixteen = Image.fromarray((np.arange(60 * 40).reshape(40, 60) * 27).astype(np.uint16))
    sixteen.save(tmp_path / "deep.png")
    deep = decode_image(tmp_path / "deep.png", 32)
    assert deep.shape == (3, 40, 60) and deep.max() > 200  # scaled from 16 bits, not clipped at 255
    assert len(torch.unique(deep[0])) > 100
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    rgb.save(tmp_path / "rotated.jpg", exif=exif)
    rotated = decode_image(tmp_path / "rotated.jpg", 32)
    assert rotated.shape == (3, 60, 40)
    assert rotated[0, :5].float().mean() > 200 and rotated[0, -5:].float().mean() < 60  # red half now on top


def test_list_file_flat_folder_and_other_models(cli, tmp_path, alexnet_weights):
    folder = make_class_folder(tmp_path / "imgs", per_class=2)
    listing = tmp_path / "list.csv"
    listing.write_text("path,label\n" + "".join(f"imgs/{p.parent.name}/{p.name},{p.parent.name}\n"
                                                  for p in sorted(folder.rglob("*.*"))))
    out = tmp_path / "list.h5"
    result = cli("featurize", listing, out, "--weights", alexnet_weights, "--layers", "conv5,fc7",
                 "--pool", "avg", "--dtype", "float16", "--workers", "0", "-q", *SMALL)
    assert result.exit_code == 0, result.output
    with FeatureStore.open(out) as store:
        assert store.classes == ["blue", "red"] and store.labels.tolist() == [0, 0, 1, 1]
        assert store.dim("conv5") == 256 and store.features("conv5").dtype == np.float16
        assert store.attrs["preprocess"]["crop"] == 64 and store.attrs["weights"].startswith("file:alexnet_random.pth")
    flat = tmp_path / "flat"
    for i in range(3):
        make_image(flat / "sub" / f"{i}.png", COLORS["red"], seed=i)
    out2 = tmp_path / "resnet.h5"
    result = cli("featurize", flat, out2, "--model", "resnet18", "--weights", "none", "--layers",
                 "pre_logits,logits,layer4.1.bn2", "--pool", "max", "--workers", "0", "-q", *SMALL)
    assert result.exit_code == 0, result.output
    with FeatureStore.open(out2) as store:
        assert store.dim("pre_logits") == 512 and store.dim("logits") == 1000 and store.dim("layer4.1.bn2") == 512
        assert store.paths == ["sub/0.png", "sub/1.png", "sub/2.png"]
        # layer4.1.bn2 is modified in place by "out += identity" later; the stored value must be pre-addition
        assert (store.features("layer4.1.bn2") < 0).any()


def test_weights_none_is_seeded_and_repeatable(cli, images_dir, tmp_path):
    outs = []
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        out = tmp_path / f"{name}.h5"
        assert cli("featurize", images_dir, out, "--weights", "none", "--seed", seed, "--layers", "fc6",
                   "--workers", "0", "-q", *SMALL).exit_code == 0
        with FeatureStore.open(out) as store:
            outs.append(store.features("fc6"))
    np.testing.assert_array_equal(outs[0], outs[1])
    assert not np.allclose(outs[0], outs[2])


@pytest.mark.parametrize(
    "args, message",
    [
        (("{missing}", "{out}"), "does not exist"),
        (("{missing}[b]", "{out}"), "missing[b] does not exist"),  # brackets are text, not terminal markup
        (("{empty}", "{out}"), "holds no image files"),
        (("{images}", "{out}", "--model", "notanet"), "unknown model 'notanet'"),
        (("{images}", "{out}", "--layers", "fc9"), "unknown layer 'fc9'"),
        (("{images}", "{existing}"), "exists: pass --overwrite"),
        (("{images}", "{out}", "--weights", "{missing}"), "does not exist"),
        (("{images}", "{out}", "--mean", "0.5,0.5"), "--mean needs 3"),
        (("{images}", "{out}", "--weights", "{notweights}"), "is not a PyTorch state dict"),
        (("{images}", "{out}", "--weights", "none", "--crop", "16"),
         "Output size is too small; the smallest --crop it runs on is 63"),
        (("{images}", "{out}", "--weights", "none", "--model", "vit_b_16", "--crop", "32"),
         "vit_b_16 cannot run on 32x32 inputs (--crop): Wrong image height! Expected 224 but got 32!; it runs on "
         "--crop 224, its default"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_2(cli, images_dir, tmp_path, torch_home, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "existing.h5").write_bytes(b"keep me")
    (tmp_path / "notweights.pth").write_text("nope")
    values = dict(missing=tmp_path / "missing", empty=tmp_path / "empty", images=images_dir,
                  out=tmp_path / "out.h5", existing=tmp_path / "existing.h5", notweights=tmp_path / "notweights.pth")
    result = cli("featurize", *[a.format(**values) for a in args], "-q", "--workers", "0")
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out.h5").exists() and not partial_path(tmp_path / "out.h5").exists()
    assert (tmp_path / "existing.h5").read_bytes() == b"keep me"


def test_offline_without_cached_weights_says_where_to_put_them(cli, images_dir, tmp_path, empty_torch_home):
    result = cli("featurize", images_dir, tmp_path / "o.h5", "--no-download", "-q")
    assert result.exit_code == 2
    assert "alexnet-owt-7be5be79.pth" in result.output and str(empty_torch_home) in result.output
    assert "--weights PATH" in result.output


def test_layers_command_lists_aliases(cli):
    result = cli("layers", "--model", "alexnet")
    assert result.exit_code == 0
    assert "pool5" in result.output and "fc7-pre" in result.output and "classifier.5" in result.output


def test_timm_model_with_shared_weights_file(cli, images_dir, tmp_path):
    pytest.importorskip("timm")
    weights = SHARED_WEIGHTS
    if not weights.exists():
        pytest.skip(f"{weights} is absent")
    out = tmp_path / "lite0.h5"
    result = cli("featurize", images_dir, out, "--model", "timm:efficientnet_lite0", "--weights", weights,
                 "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5", "--layers", "pre_logits", "--workers", "0", "-q")
    assert result.exit_code == 0, result.output
    with FeatureStore.open(out) as store:
        assert store.dim("pre_logits") == 1280
        assert store.attrs["preprocess"]["mean"] == [0.5, 0.5, 0.5]
        assert "f71a0103ef2245f5" in store.attrs["weights"]


SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights" / "efficientnet_lite0_imagenet_timm.pth"


def test_kill_9_then_resume_gives_the_identical_store(tmp_path, alexnet_weights):
    folder = tmp_path / "many"
    for i in range(120):
        make_image(folder / ("blue" if i % 2 else "red") / f"{i:03d}.png", COLORS["blue" if i % 2 else "red"],
                   size=(48, 40), seed=i)
    (folder / "red" / "broken.png").write_bytes(b"broken")
    env = dict(os.environ)

    def alexfeat(out: Path, *extra: str, **kwargs):
        cmd = [sys.executable, "-m", "alexfeat", "featurize", str(folder), str(out), "--weights", str(alexnet_weights),
               "--layers", "pool5,fc7", "--batch-size", "4", "--workers", "1", "-q", *extra]
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)

    reference = tmp_path / "reference.h5"
    assert alexfeat(reference).wait() == 0

    out = tmp_path / "resumed.h5"
    proc = alexfeat(out)
    deadline = time.time() + 120
    while time.time() < deadline:
        p = progress_path(out)
        if p.exists() and json.loads(p.read_text())["next_index"] >= 40:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists() and partial_path(out).exists()
    killed_at = json.loads(progress_path(out).read_text())["next_index"]
    assert 0 < killed_at < 121

    again = alexfeat(out)
    assert again.wait() == 2 and "--overwrite" in again.stderr.read()  # the partial run is not silently replaced
    resumed = alexfeat(out, "--resume")
    assert resumed.wait() == 0, resumed.stderr.read()
    with FeatureStore.open(reference) as ref, FeatureStore.open(out) as got:
        assert got.paths == ref.paths and len(got) == 120
        assert got.labels.tolist() == ref.labels.tolist()
        assert got.skipped == ref.skipped == [("red/broken.png", got.skipped[0][1])]
        for layer in ("pool5", "fc7"):
            np.testing.assert_array_equal(got.features(layer), ref.features(layer))


def test_help_answers_without_loading_torch():
    code = "import sys, alexfeat.cli.app; sys.exit('torch' in sys.modules or 'sklearn' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent).returncode == 0


def test_large_jpegs_decode_at_reduced_size_but_never_below_the_resize(tmp_path):
    big = make_image(tmp_path / "big.jpg", COLORS["red"], size=(1200, 1000))
    assert decode_image(big, 256).shape == (3, 500, 600)  # DCT-scaled by 1/2; 1/4 would give 250 < 256
    assert decode_image(big, 100).shape == (3, 125, 150)  # 1/8 still leaves 125 >= 100
    pre = Preprocess()
    assert pre.decode_size == 256
    out = resize_image(decode_image(big, pre.decode_size), pre)
    assert out.shape == (3, 224, 224)


def test_an_unreadable_file_is_skipped_with_its_reason(tmp_path, alexnet_weights, monkeypatch):
    # Tests run as root, which can read a chmod-000 file; so the refusal is simulated where it would come.
    from alexfeat.featurizer import decode
    from alexfeat.featurizer.featurize import featurize
    from alexfeat.featurizer.run import FeaturizeConfig

    folder = tmp_path / "imgs"
    for i in range(3):
        make_image(folder / f"{i}.png", COLORS["blue"], seed=i)
    real_open = decode.Image.open

    def guarded_open(path, *args, **kwargs):
        if Path(path).name == "1.png":
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(decode.Image, "open", guarded_open)
    result = featurize(FeaturizeConfig(images=folder, out=tmp_path / "o.h5", weights=str(alexnet_weights),
                                       layers=("fc7",), workers=0, quiet=True, resize=72, crop=64))
    assert result.rows == 2
    assert result.skipped == [("1.png", "PermissionError: [Errno 13] Permission denied: '" + str(folder / "1.png") + "'")]
