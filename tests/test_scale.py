"""A user scales featurize out: other sources, shards, parts, merge, and stores read as one."""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from alexfeat import FeatureStore
from alexfeat.store.markers import marker_path
from alexfeat.featurizer.sources import expand_braces, open_source
from tests.conftest import make_class_folder

FAST = ("--resize", "72", "--crop", "64", "--layers", "fc7", "--workers", "0", "--quiet")


def featurize(cli, weights, *args):
    result = cli("featurize", *map(str, args), "--weights", weights, *FAST)
    assert result.exit_code == 0, result.output
    return result


def rows_by_key(path: Path, layer: str = "fc7") -> dict[str, tuple[int, np.ndarray]]:
    with FeatureStore.open(path) as store:
        return {p: (int(y), x) for p, y, x in zip(store.paths, store.labels, store.features(layer))}


def assert_same_rows(a: dict, b: dict) -> None:
    """Same keys, labels and features; batches of another size round differently in the last float32 bit
    (oneDNN picks its kernels by batch size), hence a tolerance far below any feature's scale."""
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key][0] == b[key][0], key
        np.testing.assert_allclose(a[key][1], b[key][1], rtol=1e-4, atol=1e-6, err_msg=key)


def write_tar(path: Path, samples: list[tuple[str, bytes, dict[str, bytes]]]) -> Path:
    """A shard written by the webdataset library itself, so the layout is the real one."""
    import webdataset as wds

    with wds.TarWriter(str(path)) as sink:
        for key, image, extra in samples:
            sink.write({"__key__": key, "jpg": image, **{k.lstrip("."): v for k, v in extra.items()}})
    return path


@pytest.fixture
def tars(images_dir: Path, tmp_path: Path) -> tuple[str, list[str]]:
    """The 12 images as three WebDataset shards: labels in .cls and as names in .json."""
    files = sorted(images_dir.rglob("*.jpg")) + sorted(images_dir.rglob("*.png"))
    from PIL import Image

    samples = []
    for f in sorted(files, key=lambda p: p.relative_to(images_dir).as_posix()):
        buf = io.BytesIO()
        Image.open(f).convert("RGB").save(buf, format="JPEG", quality=95)
        cls = f.parent.name
        key = f"{cls}_{f.stem.split('_')[1]}"
        samples.append((key, buf.getvalue(), {".cls": str(["blue", "red"].index(cls)).encode(),
                                              ".json": json.dumps({"name": cls}).encode()}))
    folder = tmp_path / "shards"
    folder.mkdir()
    for i in range(3):
        write_tar(folder / f"{i:05d}.tar", samples[i::3])
    (tmp_path / "classes.txt").write_text("blue\nred\n")
    return str(folder / "{00000..00002}.tar"), [s[0] for s in samples]


def test_brace_patterns_expand_like_webdataset():
    assert expand_braces("s/{00008..00011}.tar") == ["s/00008.tar", "s/00009.tar", "s/00010.tar", "s/00011.tar"]
    assert expand_braces("{a,b}-{1..2}.tar") == ["a-1.tar", "a-2.tar", "b-1.tar", "b-2.tar"]


def test_webdataset_shards_featurize_with_labels_from_cls_or_json(cli, tars, alexnet_weights, tmp_path):
    pattern, keys = tars
    out = tmp_path / "tars.h5"
    featurize(cli, alexnet_weights, pattern, out, "--classes", tmp_path / "classes.txt")
    with FeatureStore.open(out) as store:
        assert sorted(store.paths) == sorted(keys) and len(store) == 12
        assert store.classes == ["blue", "red"]
        assert [store.classes[y] for y in store.labels] == [k.split("_")[0] for k in store.paths]
    # The same labels from a field of each sample's .json (names), with the class list from the data.
    out2 = tmp_path / "tars_json.h5"
    featurize(cli, alexnet_weights, pattern, out2, "--label-key", "name")
    assert_same_rows(rows_by_key(out), rows_by_key(out2))
    # predict reads the shards straight away, with a model fitted on their features.
    assert cli("fit-logreg", out, "-o", tmp_path / "m.joblib").exit_code == 0
    result = cli("predict", tmp_path / "m.joblib", pattern, "--weights", alexnet_weights, "--workers", "0",
                 "-o", tmp_path / "p.csv")
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert len(lines) == 13 and sorted(line.split(",")[0] for line in lines[1:]) == sorted(keys)
    # Decoding from tar bytes equals decoding the same JPEG from a file.
    listing = tmp_path / "jpgs"
    listing.mkdir()
    with tarfile.open(pattern.replace("{00000..00002}", "00000")) as tar:
        tar.extractall(listing, filter="data")
    out3 = tmp_path / "files.h5"
    featurize(cli, alexnet_weights, listing, out3)
    from_files = {Path(k).stem: v for k, v in rows_by_key(out3).items()}
    for key, (_, x) in rows_by_key(out).items():
        if key in from_files:
            np.testing.assert_array_equal(x, from_files[key][1])


def test_sharded_tars_need_the_class_list(cli, tars, alexnet_weights, tmp_path):
    pattern, _ = tars
    result = cli("featurize", pattern, "--parts", tmp_path / "p", "--shard", "0/3", "--weights", alexnet_weights, *FAST)
    assert result.exit_code == 2 and "--classes FILE" in result.output


def test_parquet_list_with_named_columns(cli, images_dir, alexnet_weights, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = sorted(p.relative_to(images_dir).as_posix() for p in images_dir.rglob("*.*"))
    pq.write_table(pa.table({"file": paths, "animal": [p.split("/")[0] for p in paths]}), images_dir / "list.parquet")
    out = tmp_path / "pq.h5"
    featurize(cli, alexnet_weights, images_dir / "list.parquet", out, "--path-column", "file",
              "--label-column", "animal")
    reference = tmp_path / "folder.h5"
    featurize(cli, alexnet_weights, images_dir, reference)
    assert_same_rows(rows_by_key(out), rows_by_key(reference))
    result = cli("featurize", images_dir / "list.parquet", tmp_path / "x.h5", "--weights", alexnet_weights, *FAST)
    assert result.exit_code == 2 and "no column 'path'" in result.output


def test_shards_then_merge_equal_one_local_run(cli, images_dir, alexnet_weights, tmp_path):
    reference = tmp_path / "local.h5"
    featurize(cli, alexnet_weights, images_dir, reference)
    parts = tmp_path / "parts"
    for i in range(3):  # what a Slurm array or a shell loop would run
        featurize(cli, alexnet_weights, images_dir, "--parts", parts, "--shard", f"{i}/3", "--part-size", "3")
    assert len(list(parts.glob("*.done.json"))) == 6  # 4 images per shard, parts of 3
    merged = tmp_path / "merged.h5"
    result = cli("merge", parts, merged)
    assert result.exit_code == 0 and "merged 6 part(s), 12 rows" in result.output
    with FeatureStore.open(merged) as a, FeatureStore.open(reference) as b:
        assert a.paths == b.paths and a.classes == b.classes  # sorted-key order is the folder's order
        np.testing.assert_array_equal(a.labels, b.labels)
    assert_same_rows(rows_by_key(merged), rows_by_key(reference))
    # Every classifier command takes the folder of parts itself.
    assert cli("fit-logreg", parts, "-o", tmp_path / "m.joblib").exit_code == 0
    result = cli("evaluate", tmp_path / "m.joblib", parts)
    assert result.exit_code == 0 and "n=12" in result.output


def test_a_rerun_skips_done_parts_and_resumes_the_unfinished_one(cli, images_dir, alexnet_weights, tmp_path):
    parts = tmp_path / "parts"
    featurize(cli, alexnet_weights, images_dir, "--parts", parts, "--part-size", "5")
    done = sorted(parts.glob("*.h5"))
    assert [p.name for p in done] == ["part-00000-00000.h5", "part-00000-00001.h5", "part-00000-00002.h5"]
    before = {p: p.stat().st_mtime_ns for p in done}
    # A crash in the last part: its store never finished and it has no marker.
    last = done[-1]
    marker_path(last).unlink()
    last.rename(last.with_name(last.name + ".partial"))
    result = cli("merge", parts, tmp_path / "m.h5")
    assert result.exit_code == 2 and "part-00000-00002.h5 is not done" in result.output
    featurize(cli, alexnet_weights, images_dir, "--parts", parts, "--part-size", "5")
    assert all(p.stat().st_mtime_ns == before[p] for p in done[:2])  # untouched
    assert marker_path(last).exists()
    assert cli("merge", parts, tmp_path / "m.h5").exit_code == 0
    assert len(rows_by_key(tmp_path / "m.h5")) == 12


def test_rerunning_a_finished_parts_job_says_so_and_names_a_changed_setting(cli, images_dir, alexnet_weights,
                                                                            tmp_path):
    parts = tmp_path / "parts"
    featurize(cli, alexnet_weights, images_dir, "--parts", parts, "--part-size", "5")
    again = featurize(cli, alexnet_weights, images_dir, "--parts", parts, "--part-size", "5")
    assert "nothing to do: the parts in" in again.output and "already done (12 images" in again.output
    assert "images/s" not in again.output and f"alexfeat merge {parts}" in again.output
    result = cli("featurize", images_dir, "--parts", parts, "--part-size", "4", "--weights", alexnet_weights, *FAST)
    assert result.exit_code == 2 and "--part-size 5, this run 4" in result.output, result.output
    result = cli("featurize", images_dir, "--parts", parts, "--part-size", "5", "--weights", alexnet_weights, *FAST,
                 "--pool", "max")
    assert result.exit_code == 2 and "--pool none, this run max" in result.output, result.output


def test_merge_refuses_parts_with_other_settings_and_missing_parts(cli, images_dir, alexnet_weights, tmp_path):
    parts = tmp_path / "parts"
    featurize(cli, alexnet_weights, images_dir, "--parts", parts, "--shard", "0/2")
    result = cli("merge", parts, tmp_path / "m.h5")
    assert result.exit_code == 2 and "missing shard 1" in result.output
    # Shard 1 written with another normalisation: the parts no longer describe one store.
    result = cli("featurize", images_dir, "--parts", parts, "--shard", "1/2", "--weights", alexnet_weights,
                 *FAST, "--mean", "0.5,0.5,0.5")
    assert result.exit_code == 0
    result = cli("merge", parts, tmp_path / "m.h5")
    assert result.exit_code == 2 and "different preprocess" in result.output
    assert not (tmp_path / "m.h5").exists()


def test_virtual_merge_reads_the_parts_and_refuses_a_missing_one(cli, images_dir, alexnet_weights, tmp_path,
                                                                 monkeypatch):
    parts = tmp_path / "run" / "parts"
    parts.parent.mkdir()
    featurize(cli, alexnet_weights, images_dir, "--parts", parts, "--part-size", "4")
    virtual = tmp_path / "run" / "all.h5"
    assert cli("merge", parts, virtual, "--virtual").exit_code == 0
    moved = tmp_path / "moved"
    (tmp_path / "run").rename(moved)  # relative sources: the folder moves as a whole
    monkeypatch.chdir(moved / "parts")
    with FeatureStore.open(moved / "all.h5") as v, FeatureStore.open(moved / "parts") as p:
        np.testing.assert_array_equal(v.features("fc7"), p.features("fc7"))
        assert v.paths == p.paths
        assert v.features("fc7", np.array([11, 0, 5])).shape == (3, 4096)
    (moved / "parts" / "part-00000-00001.h5").unlink()
    with pytest.raises(Exception, match="part-00000-00001.h5 is missing"):
        FeatureStore.open(moved / "all.h5")


def test_sources_share_one_class_list(tmp_path):
    make_class_folder(tmp_path / "imgs", per_class=2)
    (tmp_path / "classes.txt").write_text("red\nblue\ngreen\n")
    from alexfeat.featurizer.sources import SourceOptions

    samples = open_source(tmp_path / "imgs", SourceOptions(classes_file=tmp_path / "classes.txt"), shard=(1, 2))
    assert samples.classes == ("red", "blue", "green")
    assert [samples.classes[y] for y in samples.labels] == [k.split("/")[0] for k in samples.keys]


def test_ray_engine_equals_a_local_run_and_reruns_only_missing_parts(images_dir, alexnet_weights, tmp_path):
    import ray  # the dev extra installs it; CI runs this on a local 2-CPU cluster
    from alexfeat.featurizer.featurize import featurize as run
    from alexfeat.featurizer.run import FeaturizeConfig
    from alexfeat.store.merge import merge_parts

    settings = dict(weights=str(alexnet_weights), layers=("fc7",), resize=72, crop=64, workers=0, quiet=True,
                    batch_size=4)
    run(FeaturizeConfig(images=images_dir, out=tmp_path / "local.h5", **settings))
    parts = tmp_path / "ray_parts"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = run(FeaturizeConfig(images=images_dir, out=None, parts=parts, engine="ray", part_size=5, **settings))
        assert result.rows == 12
        names = sorted(p.name for p in parts.glob("part-*.h5"))
        assert all(marker_path(parts / n).exists() for n in names)
        assert [len(rows_by_key(parts / n)) for n in names] == [5, 5, 2]  # --part-size rows, the rest last
        # A preempted job: one part lost its marker. The rerun redoes just those rows.
        lost = parts / names[1]
        kept = {n: (parts / n).stat().st_mtime_ns for n in names if n != names[1]}
        marker_path(lost).unlink()
        run(FeaturizeConfig(images=images_dir, out=None, parts=parts, engine="ray", part_size=5, **settings))
        assert all((parts / n).stat().st_mtime_ns == t for n, t in kept.items())
    finally:
        ray.shutdown()
    merge_parts(parts, tmp_path / "ray.h5")
    assert_same_rows(rows_by_key(tmp_path / "ray.h5"), rows_by_key(tmp_path / "local.h5"))


def _ray_processes(marker: str) -> list[int]:
    """The processes started with the environment variable ALEXFEAT_TEST_RAY=marker (a cluster's, all of them)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and f"ALEXFEAT_TEST_RAY={marker}".encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            pass
    return found


def _stop(pids: list[int]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(1)


def _listening_hosts(pids: list[int]) -> set[str]:
    """The local addresses the processes ``pids`` listen on (TCP)."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
    hosts = set()
    for line in out.splitlines():
        if any(f"pid={pid}," in line for pid in pids):
            hosts.add(line.split()[3].rsplit(":", 1)[0])
    return hosts


@pytest.fixture
def token_cluster(tmp_path):
    """A Ray head as `ray start --head` makes it, with token authentication, every process pinned to 127.0.0.1
    (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: Ray's loopback-only mode); skipped where it cannot be so pinned.
    Yields (address, token, the environment a user's shell has without any Ray auth settings)."""
    if sys.platform != "linux" or not Path("/proc").is_dir() or shutil.which("ss") is None:
        pytest.skip("needs Linux's /proc and ss to pin and stop a Ray cluster")
    marker, token = secrets.token_hex(8), secrets.token_hex(16)
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    base.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", HOME=str(tmp_path))  # no ~/.ray/auth_token of the user's
    temp = tempfile.mkdtemp(prefix="afray")  # Ray's socket paths must stay short
    head = subprocess.run([sys.executable, "-c", "from ray.scripts.scripts import main; main()", "start", "--head",
                           f"--port={port}", "--include-dashboard=false", "--num-cpus=2", "--disable-usage-stats",
                           f"--temp-dir={temp}"],
                          env={**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "ALEXFEAT_TEST_RAY": marker},
                          capture_output=True, text=True, timeout=180)
    pids = _ray_processes(marker)
    try:
        if head.returncode != 0:
            pytest.skip(f"ray start --head failed here: {head.stderr.strip().splitlines()[-1:]}")
        hosts = _listening_hosts(pids)
        if not hosts or hosts - {"127.0.0.1", "[::ffff:127.0.0.1]"}:
            pytest.skip(f"Ray listens beyond 127.0.0.1 here ({sorted(hosts)})")
        yield f"127.0.0.1:{port}", token, base
    finally:
        _stop(sorted(set(pids) | set(_ray_processes(marker))))
        shutil.rmtree(temp, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_token_auth_cluster_is_one_line_without_the_token_and_works_with_it(images_dir, alexnet_weights,
                                                                              token_cluster, tmp_path):
    address, token, env = token_cluster
    parts = tmp_path / "parts"
    command = [sys.executable, "-m", "alexfeat", "featurize", str(images_dir), "--parts", str(parts), "--engine", "ray",
               "--address", address, "--part-size", "5", "--weights", str(alexnet_weights), "--layers", "fc7",
               "--resize", "72", "--crop", "64", "--batch-size", "4", "-q"]
    started = time.monotonic()
    refused = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "requires token authentication: set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN" in refused.stderr
    assert time.monotonic() - started < 20 and not parts.exists()  # not Ray's ~20 s of retries first
    # As the message says: the run joins the cluster, and under -q prints its summary and nothing of Ray's.
    joined = subprocess.run(command, env={**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token},
                            capture_output=True, text=True, timeout=300)
    assert joined.returncode == 0, joined.stderr
    assert joined.stderr == "" and joined.stdout.startswith("wrote 12 images"), joined.stdout + joined.stderr
    assert [len(rows_by_key(p)) for p in sorted(parts.glob("part-*.h5"))] == [5, 5, 2]


@pytest.fixture
def listener():
    """Something listening on 127.0.0.1 (where a cluster's head would be); its port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_ray_cluster_that_wants_a_token_is_one_line_saying_what_to_set(cli, images_dir, listener, tmp_path,
                                                                         monkeypatch):
    """`ray start --head` enforces token authentication. A cluster here would advertise the machine's other
    interface, so the head is a 127.0.0.1 listener and Ray's GCS client answers as it answers a real head
    (observed against Ray 2.60: an AuthenticationError within a second), instead of ~20 s of warnings."""
    import ray._raylet
    from ray.exceptions import AuthenticationError

    def rejecting_gcs(address, **kwargs):
        assert address == f"127.0.0.1:{listener}"
        raise AuthenticationError("RPC error: InvalidAuthToken: Authentication token is missing or incorrect")

    monkeypatch.setattr(ray._raylet, "GcsClient", rejecting_gcs)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    parts = tmp_path / "parts"
    args = ("featurize", images_dir, "--parts", parts, "--engine", "ray", "--address", f"127.0.0.1:{listener}",
            "--weights", "none", "-q")
    started = time.monotonic()
    result = cli(*args)
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "requires token authentication: set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN" in result.output
    assert time.monotonic() - started < 10 and not parts.exists()
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    result = cli(*args)
    assert result.exit_code == 2 and "refused this process's token: set RAY_AUTH_TOKEN" in result.output


def test_a_ray_address_with_nothing_listening_is_one_line(cli, images_dir, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # free once closed
    result = cli("featurize", images_dir, "--parts", tmp_path / "parts", "--engine", "ray",
                 "--address", f"127.0.0.1:{port}", "--weights", "none", "-q")
    assert result.exit_code == 2 and f"cannot reach a Ray cluster at 127.0.0.1:{port}" in result.output
    assert "ray start --head" in result.output and not (tmp_path / "parts").exists()


def test_merge_and_streaming_fit_never_load_torch(tmp_path):
    """What runs on a CPU box next to the store (merge, fit on parts) must not pay for torch."""
    import subprocess
    import sys

    script = f"""
import json, sys
from pathlib import Path
import numpy as np
from alexfeat.store.merge import merge_parts
from alexfeat.store.provenance import Provenance
from alexfeat.store.writer import write_part
from alexfeat.classifiers.fit import FitConfig, fit_classifier
folder = Path({str(tmp_path)!r}) / "parts"
folder.mkdir()
attrs = {{"classes": json.dumps(["a", "b"]), "model": "m", "weights": "w", "layers": json.dumps(["f"]),
         "preprocess": "{{}}", "options": json.dumps({{"pool": "none", "dtype": "float32"}})}}
rng = np.random.default_rng(0)
for shard in range(2):
    y = rng.integers(0, 2, 50)
    X = (rng.standard_normal((50, 8)) + 3 * y[:, None]).astype(np.float32)
    write_part(folder / f"part-{{shard:05d}}-00000.h5", {{"f": X}}, [f"{{shard}}-{{i}}" for i in range(50)],
               y.tolist(), [], Provenance.from_attrs(attrs), {{"shard": shard, "shards": 2, "index": 0, "parts": 1}})
merge_parts(folder, folder.parent / "all.h5")
fit_classifier(FitConfig(kind="logreg", store=folder, out=folder.parent / "m.joblib", streaming=True))
print("torch" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_a_folder_of_ray_parts_missing_rows_is_refused_by_name(tmp_path):
    from alexfeat.errors import AlexfeatError
    from alexfeat.store.markers import done_parts
    from alexfeat.store.provenance import Provenance
    from alexfeat.store.writer import write_part

    folder = tmp_path / "parts"
    folder.mkdir()
    attrs = {"classes": json.dumps(["a"]), "model": "m", "weights": "w", "layers": json.dumps(["f"]),
             "preprocess": "{}", "options": json.dumps({"pool": "none", "dtype": "float32"})}
    X = np.zeros((2, 3), np.float32)
    write_part(folder / "part-00000-00000.h5", {"f": X}, ["k0", "k1"], [0, 0], [], Provenance.from_attrs(attrs),
               {"shard": 0, "shards": 1, "images": 5, "indices": [0, 1]})
    with pytest.raises(AlexfeatError, match="missing 3 rows of shard 0"):
        done_parts(folder)


def test_a_file_that_is_not_parquet_is_one_line(cli, tmp_path, alexnet_weights):
    bad = tmp_path / "list.parquet"
    bad.write_text("path,label\na.jpg,cat\n")
    result = cli("featurize", bad, tmp_path / "x.h5", "--weights", alexnet_weights, *FAST)
    assert result.exit_code == 2 and "is not a readable Parquet file" in result.output
