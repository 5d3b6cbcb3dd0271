"""--precision auto|fp32|bf16: one rule for every command, recorded in the store, checked by merge and predict."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from alexfeat.errors import AlexfeatError
from alexfeat.featurizer import device as device_module
from alexfeat.featurizer import featurizer as featurizer_module
from alexfeat.featurizer.device import _bf16_from_flags, cpu_bf16, resolve_precision
from alexfeat.featurizer.featurizer import build_featurizer, precision_note
from alexfeat.store.reader import FeatureStore

FAST = ("--resize", "72", "--crop", "64", "--layers", "fc7", "--workers", "0", "--quiet")
CPU = torch.device("cpu")


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_auto_is_bf16_where_native_and_the_default_is_bf16_on_cuda_and_fp32_on_every_cpu(monkeypatch):
    monkeypatch.setattr(device_module, "cpu_bf16", lambda: "AMX")
    assert resolve_precision("auto", CPU) == "bf16"
    assert resolve_precision(None, CPU) == "fp32"  # the default: a store's features do not depend on the CPU
    monkeypatch.setattr(device_module, "cpu_bf16", lambda: None)
    assert resolve_precision("auto", CPU) == "fp32" and resolve_precision(None, CPU) == "fp32"
    assert resolve_precision("bf16", CPU) == "bf16" and resolve_precision("fp32", CPU) == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", torch.device("cuda")) == "bf16" == resolve_precision(None, torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # a V100
    assert resolve_precision("auto", torch.device("cuda")) == "fp32" == resolve_precision(None, torch.device("cuda"))
    with pytest.raises(AlexfeatError, match="unknown --precision 'fp16': use auto, fp32, bf16"):
        resolve_precision("fp16", CPU)


def test_native_bf16_is_read_from_the_cpu_flags(monkeypatch, tmp_path):
    assert _bf16_from_flags({"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}) == "AMX"  # Sapphire Rapids
    assert _bf16_from_flags({"avx512f", "avx512_bf16"}) == "AVX512-BF16"  # Zen 4, Cooper Lake
    assert _bf16_from_flags({"avx2", "avx512f"}) is None  # Ice Lake, Zen 3
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9654\nflags\t\t: fpu avx512f avx512_bf16\n\n"
                       "processor\t: 1\nflags\t\t: fpu avx512f avx512_bf16\n")
    real_path = device_module.Path
    monkeypatch.setattr(device_module, "Path", lambda p: real_path(cpuinfo) if p == "/proc/cpuinfo" else real_path(p))
    assert cpu_bf16.__wrapped__() == "AVX512-BF16"


def test_the_summary_says_when_this_cpu_could_run_bf16(monkeypatch, alexnet_weights):
    fz = build_featurizer("alexnet", str(alexnet_weights), ("fc7",), "none", CPU, overrides={"resize": 72, "crop": 64})
    monkeypatch.setattr(featurizer_module, "cpu_bf16", lambda: "AMX")
    assert precision_note(fz).startswith("this CPU computes bf16 natively (AMX): --precision auto (bf16 here) featurized")
    monkeypatch.setattr(featurizer_module, "cpu_bf16", lambda: None)
    assert precision_note(fz) == ""
    fz.precision = "bf16"
    assert "no native bf16" in precision_note(fz)


def test_bf16_featurize_records_its_precision_and_stays_close_to_fp32(cli, images_dir, alexnet_weights, tmp_path):
    stores = {}
    for precision in ("fp32", "bf16"):
        stores[precision] = tmp_path / f"{precision}.h5"
        result = cli("featurize", images_dir, stores[precision], "--weights", alexnet_weights, *FAST,
                     "--precision", precision)
        assert result.exit_code == 0, result.output
        assert f"network in {precision}" in result.output
    with FeatureStore.open(stores["fp32"]) as a, FeatureStore.open(stores["bf16"]) as b:
        assert (a.provenance.precision, b.provenance.precision) == ("fp32", "bf16")
        x32, x16 = a.features("fc7"), b.features("fc7")
        assert x16.dtype == np.float32 and a.paths == b.paths
    assert not np.array_equal(x32, x16)  # bf16 did run
    assert cosine(x32, x16).min() > 0.99
    assert "precision: bf16" in cli("info", stores["bf16"]).output.replace('"', "").replace("'", "")


def test_a_store_written_before_precision_was_recorded_reads_as_fp32(cli, images_dir, alexnet_weights, tmp_path):
    store = tmp_path / "old.h5"
    assert cli("featurize", images_dir, store, "--weights", alexnet_weights, *FAST).exit_code == 0
    with h5py.File(store, "a") as f:
        del f.attrs["precision"]
    with FeatureStore.open(store) as s:
        assert s.provenance.precision == "fp32"


def test_merge_refuses_parts_of_different_precision(cli, images_dir, alexnet_weights, tmp_path):
    parts = tmp_path / "parts"
    for shard, precision in (("0/2", "fp32"), ("1/2", "bf16")):
        result = cli("featurize", images_dir, "--parts", parts, "--shard", shard, "--weights", alexnet_weights, *FAST,
                     "--precision", precision)
        assert result.exit_code == 0, result.output
    result = cli("merge", parts, tmp_path / "merged.h5")
    assert result.exit_code == 2 and "different precision" in result.output and "'bf16'" in result.output
    assert not (tmp_path / "merged.h5").exists()
    # A rerun of a shard in the other precision keeps nothing of what was written in this one.
    result = cli("featurize", images_dir, "--parts", parts, "--shard", "1/2", "--weights", alexnet_weights, *FAST)
    assert result.exit_code == 2 and "written with --precision bf16, this run fp32" in result.output


def test_predict_on_images_in_another_precision_than_the_model_warns(cli, images_dir, alexnet_weights, tmp_path):
    store, model = tmp_path / "train.h5", tmp_path / "logreg.joblib"
    assert cli("featurize", images_dir, store, "--weights", alexnet_weights, *FAST).exit_code == 0
    assert cli("fit-logreg", store, "-o", model).exit_code == 0
    out = {}
    for precision in ("fp32", "bf16"):
        out[precision] = tmp_path / f"{precision}.csv"
        result = cli("predict", model, images_dir, "--weights", alexnet_weights, "--precision", precision, "-q",
                     "--out", out[precision])
        assert result.exit_code == 0, result.output
        warned = "this model was fitted on fp32 features and these images run in bf16" in result.output
        assert warned == (precision == "bf16")
    rows = {p: [line.split(",")[1] for line in out[p].read_text().splitlines()[1:]] for p in out}
    assert rows["bf16"] == rows["fp32"]  # the same classes, as measured on real photos (docs/precision.md)
    # Without --precision, images run in the precision of the model's features: no warning either way.
    bf16_store, bf16_model = tmp_path / "bf16.h5", tmp_path / "bf16.joblib"
    assert cli("featurize", images_dir, bf16_store, "--weights", alexnet_weights, "--precision", "bf16",
               *FAST).exit_code == 0
    assert cli("fit-logreg", bf16_store, "-o", bf16_model).exit_code == 0
    for fitted in (model, bf16_model):
        result = cli("predict", fitted, images_dir, "--weights", alexnet_weights, "-q")
        assert result.exit_code == 0 and "fitted on" not in result.output, result.output
    # On a store nothing runs: --precision is refused there.
    result = cli("predict", model, store, "--precision", "bf16")
    assert result.exit_code == 2 and "--precision" in result.output


def test_serve_runs_the_network_in_the_precision_asked(alexnet_weights, cli):
    from alexfeat.serve.config import ServeConfig
    from alexfeat.serve.model import load_served_model

    served = {p: load_served_model(ServeConfig(weights=str(alexnet_weights), layers=("fc7",), precision=p,
                                               overrides={"resize": 72, "crop": 64}))
              for p in ("fp32", "bf16")}
    assert {p: m.describe()["precision"] for p, m in served.items()} == {"fp32": "fp32", "bf16": "bf16"}
    image = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
    x32, x16 = (served[p].run([image])[0].features["fc7"][None] for p in ("fp32", "bf16"))
    assert cosine(x32, x16).min() > 0.99
    result = cli("serve", "--features-only", "--weights", alexnet_weights, "--precision", "fp16")
    assert result.exit_code == 2 and "fp16" in result.output


def test_the_trainers_share_the_choices_and_the_rule(tmp_path):
    from alexfeat.cli.common import Precision
    from alexfeat.trainers.config import TrainConfig

    assert [p.value for p in Precision] == ["auto", "fp32", "bf16"]
    with pytest.raises(AlexfeatError, match="precision"):
        TrainConfig("scratch", tmp_path, tmp_path, tmp_path / "run", precision="fp16")


def test_a_checkpoint_predicts_and_evaluates_in_bf16(cli, tmp_path):
    from tests.test_compat import DATA, read_predictions

    out = tmp_path / "bf16.csv"
    result = cli("predict", DATA / "run" / "best.pt", DATA / "images", "--precision", "bf16", "-q", "--out", out)
    assert result.exit_code == 0, result.output
    paths, _, probs = read_predictions(out)
    old_paths, _, old_probs = read_predictions(DATA / "expected" / "checkpoint-images.csv")
    assert paths == old_paths
    assert not np.allclose(probs, old_probs, atol=2e-5) and np.allclose(probs, old_probs, atol=0.05)
    assert cli("evaluate", DATA / "run" / "best.pt", DATA / "images", "--precision", "bf16").exit_code == 0


def test_a_partial_store_written_before_precision_and_tta_were_recorded_still_resumes(monkeypatch, images_dir):
    from alexfeat.featurizer.sink import _fingerprint
    from alexfeat.featurizer.sources import open_source
    from alexfeat.store.provenance import Provenance

    images = open_source(images_dir)
    now = Provenance(model="alexnet", weights="none(seed=0)", layers=("fc7",))
    before = now.to_attrs()
    before.pop("precision"), before.pop("tta")  # what a store of then recorded
    then = _fingerprint(now, images, 64)
    monkeypatch.setattr(Provenance, "to_attrs", lambda self: before)
    assert _fingerprint(now, images, 64) == then
    monkeypatch.undo()
    assert _fingerprint(Provenance(model="alexnet", weights="none(seed=0)", layers=("fc7",), tta="flip"),
                        images, 64) != then


def test_ray_actors_precision_is_said_without_their_gpu(monkeypatch):
    from alexfeat.featurizer.drivers.ray_engine import _actors_precision
    from alexfeat.featurizer.run import FeaturizeConfig

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a head node without a GPU
    config = FeaturizeConfig(images="x", out=None, device="cuda")
    assert _actors_precision(config) == "bf16"
    assert _actors_precision(FeaturizeConfig(images="x", out=None, device="cuda", precision="fp32")) == "fp32"
    monkeypatch.setattr(device_module, "cpu_bf16", lambda: None)
    assert _actors_precision(FeaturizeConfig(images="x", out=None, device="cpu", precision="auto")) == "fp32"
