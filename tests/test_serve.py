"""A user serves a fitted model over HTTP and talks to it with a real client, as a service would be used.

Each server is a real `alexfeat serve` process on a free 127.0.0.1 port; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.conftest import bomb_png, make_class_folder

httpx = pytest.importorskip("httpx")

SMALL = ("--resize", "72", "--crop", "64", "--workers", "0", "-q")
TINY_TRAIN = ("--width-mult", "0.125", "--image-size", "64", "--batch-size", "8", "--workers", "0", "-q")


def run_cli(*args) -> None:
    from alexfeat.cli.app import app

    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`alexfeat serve ARGS` as a subprocess; its log is kept in a file."""

    def __init__(self, tmp: Path, *args):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"serve-{self.port}.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "alexfeat", "serve", *map(str, args),
                                          "--port", str(self.port)], stdout=log, stderr=subprocess.STDOUT)

    def get(self, path: str, **kw) -> httpx.Response:
        return httpx.get(self.url + path, timeout=30, **kw)

    def post(self, path: str, **kw) -> httpx.Response:
        return httpx.post(self.url + path, timeout=30, **kw)

    def wait(self, path: str, seconds: float = 90) -> list[tuple[int, int]]:
        """Poll until ``path`` answers 200; returns the (/healthz, /readyz) statuses seen on the way."""
        seen, deadline = [], time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                seen.append((self.get("/healthz").status_code, self.get("/readyz").status_code))
                if self.get(path).status_code == 200:
                    return seen
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"{path} never answered 200:\n{self.log.read_text()}")

    def metric(self, name: str) -> float:
        for line in self.get("/metrics").text.splitlines():
            if line.split(" ")[0] == name:
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


@pytest.fixture(scope="module")
def served(tmp_path_factory, alexnet_weights):
    """A logistic regression fitted on fc7 features of tiny images, served; and predict's answers."""
    tmp = tmp_path_factory.mktemp("serve")
    images = make_class_folder(tmp / "images", per_class=4)
    store, model, expected = tmp / "feats.h5", tmp / "model.joblib", tmp / "predict.csv"
    run_cli("featurize", images, store, "--weights", alexnet_weights, "--layers", "fc7", *SMALL)
    run_cli("fit-logreg", store, "-o", model)
    server = Server(tmp, model, "--weights", alexnet_weights, "--max-batch", "16", "--max-body-mb", "1",
                    "--max-pixels", "1000000")
    run_cli("predict", model, images, "--weights", alexnet_weights, "--out", expected, "--workers", "0", "-q")
    with open(expected, newline="") as f:
        by_path = {images / row["path"]: row for row in csv.DictReader(f)}  # paths relative to the folder
    try:
        server.wait("/readyz")
        yield server, images, store, by_path
    finally:
        server.stop()


def test_answers_equal_predict_on_the_same_files(served):
    server, images, _, expected = served
    files = sorted(images.rglob("*.*"))
    for path in files:
        answer = server.post("/v1/predict", content=path.read_bytes(), headers={"Content-Type": "image/jpeg"})
        assert answer.status_code == 200, answer.text
        row = expected[path]
        assert answer.json()["label"] == row["prediction"]
        for name, p in answer.json()["scores"].items():
            assert p == pytest.approx(float(row[f"prob_{name}"]), abs=1e-5)
    # Several images in one multipart request: answers in order, a bad one answered with its reason.
    parts = [("files", (p.name, p.read_bytes())) for p in files[:2]] + [("files", ("notes.jpg", b"not an image"))]
    answer = server.post("/v1/predict", files=parts)
    assert answer.status_code == 200
    listed = answer.json()
    assert [a["file"] for a in listed] == [files[0].name, files[1].name, "notes.jpg"]
    assert [a.get("label") for a in listed[:2]] == [expected[p]["prediction"] for p in files[:2]]
    assert "cannot identify image" in listed[2]["error"] and "label" not in listed[2]


def test_features_as_json_or_npy_equal_the_featurized_store(served):
    from alexfeat.classifiers.data import read_features
    from alexfeat.store.reader import FeatureStore

    server, images, store, _ = served
    with FeatureStore.open(store) as s:
        rows = {images / p: x for p, x in zip(s.paths, read_features(s, "fc7"))}
    path = images / "red" / "red_01.png"
    as_json = server.post("/v1/features?layer=fc7", content=path.read_bytes(), headers={"Content-Type": "image/png"})
    assert as_json.status_code == 200 and as_json.json()["layer"] == "fc7"
    np.testing.assert_allclose(as_json.json()["features"], rows[path], rtol=1e-4, atol=1e-5)
    two = [("files", (p.name, p.read_bytes())) for p in (path, images / "blue" / "blue_00.jpg")]
    as_npy = server.post("/v1/features", files=two, headers={"Accept": "application/x-npy"})
    assert as_npy.headers["content-type"] == "application/x-npy"
    array = np.load(io.BytesIO(as_npy.content))
    assert array.shape == (2, 4096)
    np.testing.assert_allclose(array[1], rows[images / "blue" / "blue_00.jpg"], rtol=1e-4, atol=1e-5)
    wrong = server.post("/v1/features?layer=fc6", content=path.read_bytes())
    assert wrong.status_code == 422 and "fc7" in wrong.json()["detail"]


def test_the_model_page_names_weights_layers_classes_and_preprocessing(served, alexnet_weights):
    info = served[0].get("/v1/model").json()
    assert info["kind"] == "classifier" and info["classes"] == ["blue", "red"] and info["layers"] == {"fc7": 4096}
    assert info["weights_sha256"] == hashlib.sha256(alexnet_weights.read_bytes()).hexdigest()
    assert info["preprocess"]["crop"] == 64 and info["preprocess"]["resize"] == 72
    assert "/v1/predict" in served[0].get("/openapi.json").json()["paths"]


def test_the_docs_page_works_offline_from_the_servers_own_urls(served):
    server = served[0]
    page = server.get("/docs")
    assert page.status_code == 200 and "swagger-ui" in page.text
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url:\s*["']([^"']+)["']""", page.text)
    urls = sorted({a or b for a, b in refs})
    assert "/openapi.json" in urls and any(u.endswith(".js") for u in urls) and any(u.endswith(".css") for u in urls)
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url  # no CDN: nothing but this server
        answer = server.get(url)
        assert answer.status_code == 200 and answer.content, url
    assert "validatorUrl" in page.text and "https://" not in page.text.split("<script>")[-1]


def test_64_concurrent_requests_are_all_answered_in_shared_batches(served):
    server, images, _, expected = served
    files = sorted(images.rglob("*.*"))
    batches_before = server.metric("alexfeat_batch_size_count")

    async def flood():
        async with httpx.AsyncClient(base_url=server.url, timeout=60,
                                     limits=httpx.Limits(max_connections=64)) as client:
            return await asyncio.gather(*(client.post("/v1/predict", content=files[i % len(files)].read_bytes())
                                          for i in range(64)))

    answers = asyncio.run(flood())
    assert [a.status_code for a in answers] == [200] * 64
    assert [a.json()["label"] for a in answers] == [expected[files[i % len(files)]]["prediction"]
                                                    for i in range(64)]
    batches = server.metric("alexfeat_batch_size_count") - batches_before
    assert batches < 64  # some forward passes carried several requests' images
    text = server.get("/metrics").text
    assert 'alexfeat_requests_total{endpoint="/v1/predict",status="200"}' in text
    assert "alexfeat_queue_depth 0.0" in text and "alexfeat_request_seconds_bucket" in text


def test_bad_requests_get_the_status_that_says_why(served, tmp_path):
    server = served[0]
    not_image = server.post("/v1/predict", content=b"this is not an image", headers={"Content-Type": "image/jpeg"})
    assert not_image.status_code == 422 and "cannot identify image" in not_image.json()["detail"]
    bomb = server.post("/v1/predict", content=bomb_png(tmp_path / "bomb.png").read_bytes())
    assert bomb.status_code == 422 and "DecompressionBomb" in bomb.json()["detail"]
    big = io.BytesIO()
    Image.new("RGB", (1200, 1000), (200, 40, 30)).save(big, format="PNG")  # 1.2 megapixels, a few KB
    over = server.post("/v1/predict", content=big.getvalue())
    assert over.status_code == 422 and "--max-pixels" in over.json()["detail"]
    assert server.post("/v1/predict", content=b"").status_code == 422
    assert server.post("/v1/predict", json={"image": "x"}).status_code == 415
    # Over --max-body-mb 1: refused from the declared length, before the body is sent at all ...
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                     b"Content-Length: 500000000\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 413")
    # ... and, for a streamed body without a length, as soon as it passes the limit.
    streamed = server.post("/v1/predict", content=iter([b"\xff" * 600_000] * 2))
    assert streamed.status_code == 413
    assert server.get("/readyz").status_code == 200


def test_a_client_that_hangs_up_does_not_break_the_batch_for_the_others(served):
    server, images, _, expected = served
    good = images / "blue" / "blue_00.jpg"

    async def mixed():
        async def hang_up(send_body: bool):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            body = good.read_bytes()
            writer.write(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body) + (body if send_body else body[:100]))
            await writer.drain()
            writer.close()  # gone before the answer (or mid-body)

        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            results = await asyncio.gather(*[hang_up(i % 2 == 0) for i in range(8)],
                                           *[client.post("/v1/predict", content=good.read_bytes()) for _ in range(16)])
        return results[8:]

    answers = asyncio.run(mixed())
    assert [a.status_code for a in answers] == [200] * 16
    assert {a.json()["label"] for a in answers} == {expected[good]["prediction"]}
    assert server.post("/v1/predict", content=good.read_bytes()).status_code == 200


def test_readiness_api_key_and_a_full_queue(tmp_path, alexnet_weights):
    key = tmp_path / "key.txt"
    key.write_text("s3cret\n")
    # Full-size 224-pixel inputs, one image per forward pass, room for one waiting image: easy to fill.
    server = Server(tmp_path, "--features-only", "--weights", alexnet_weights, "--layers", "fc6",
                    "--max-batch", "1", "--max-queue", "1", "--api-key-file", key)
    try:
        seen = server.wait("/readyz")
        # The process answered before the model was ready; /readyz turned 200 after the warm-up batch.
        assert (200, 503) in seen
        assert "ready in" in server.log.read_text()
        image = make_class_folder(tmp_path / "images", per_class=1) / "red" / "red_00.jpg"
        body = image.read_bytes()
        assert server.post("/v1/features", content=body).status_code == 401
        assert server.post("/v1/features", content=body, headers={"X-API-Key": "wrong"}).status_code == 401
        ok = server.post("/v1/features", content=body, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and len(ok.json()["features"]) == 4096
        assert server.post("/v1/predict", content=body, headers={"X-API-Key": "s3cret"}).status_code == 404

        async def flood():
            async with httpx.AsyncClient(base_url=server.url, timeout=60, headers={"X-API-Key": "s3cret"}) as client:
                return await asyncio.gather(*(client.post("/v1/features", content=body) for _ in range(32)))

        answers = asyncio.run(flood())
        statuses = [a.status_code for a in answers]
        assert set(statuses) == {200, 503}, statuses
        busy = next(a for a in answers if a.status_code == 503)
        assert busy.headers["retry-after"] == "1" and "queue full" in busy.json()["detail"]
        # Connections are bounded too (max(64, 2 x --max-queue)), and with them the bodies held in memory.
        idle = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(64)]
        try:
            time.sleep(0.5)
            assert server.get("/healthz").status_code == 503
        finally:
            for sock in idle:
                sock.close()
        server.wait("/readyz", seconds=10)  # and the server is back to normal once they are gone
    finally:
        assert server.stop() == 0


def test_a_checkpoint_served_times_out_slow_requests_and_drains_on_sigterm(tmp_path):
    train = make_class_folder(tmp_path / "train", per_class=4)
    run = tmp_path / "run"
    run_cli("train-scratch", train, "--test-dir", train, "-o", run, "--epochs", "1", *TINY_TRAIN)
    expected = tmp_path / "predict.csv"
    test_time = ("--crop", "72", "--tta", "flip")  # served as predict runs it: a larger crop, flip-averaged
    run_cli("predict", run / "best.pt", train, "--out", expected, "--workers", "0", "-q", *test_time)
    with open(expected, newline="") as f:
        by_path = {train / row["path"]: row for row in csv.DictReader(f)}
    # A batch is held open 5 s for more images, longer than a request may wait (2 s).
    server = Server(tmp_path, run / "best.pt", "--max-batch", "64", "--max-wait-ms", "5000", "--timeout-s", "2",
                    *test_time)
    server.wait("/readyz")
    info = server.get("/v1/model").json()
    assert info["tta"] == "flip" and (info["preprocess"]["crop"], info["preprocess"]["resize"]) == (72, 82)
    files = sorted(train.rglob("*.*"))

    async def session():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            started = time.monotonic()
            late = await client.post("/v1/predict", content=files[0].read_bytes())
            waited = time.monotonic() - started
            queued = [asyncio.create_task(client.post("/v1/predict", content=p.read_bytes())) for p in files]
            deadline = time.monotonic() + 2.5
            while server.metric("alexfeat_queue_depth") < len(files) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            server.proc.send_signal(signal.SIGTERM)
            return late, waited, await asyncio.gather(*queued)

    try:
        late, waited, answers = asyncio.run(session())
        assert late.status_code == 504 and 1.9 < waited < 4.5
        # Everything queued when SIGTERM came was answered at once, then the process exited cleanly.
        assert [a.status_code for a in answers] == [200] * len(files)
        for path, answer in zip(files, answers):
            assert answer.json()["scores"]["red"] == pytest.approx(float(by_path[path]["prob_red"]), abs=1e-5)
        assert server.proc.wait(timeout=20) == 0
        with pytest.raises(httpx.TransportError):
            server.get("/healthz")
    finally:
        server.stop()


def test_a_model_is_only_served_with_the_weights_its_features_came_from(served, tmp_path, cli):
    import torch
    import torchvision

    model = served[2].parent / "model.joblib"
    torch.manual_seed(99)
    other = tmp_path / "other.pth"
    torch.save(torchvision.models.alexnet().state_dict(), other)
    proc = subprocess.run([sys.executable, "-m", "alexfeat", "serve", str(model), "--weights", str(other),
                           "--port", str(free_port())], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "not the ones the model's features came from" in proc.stderr
    # Without --weights the model cannot be rebuilt: refused before the port is bound (it is held here).
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "alexfeat", "serve", str(model), "--port", str(port)],
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "pass --weights PATH" in proc.stderr, proc.stderr
    assert "cannot listen" not in proc.stderr and "startup" not in proc.stderr and len(proc.stderr.splitlines()) == 1
    result = cli("serve")
    assert result.exit_code == 2 and "--features-only" in result.output
    assert cli("serve", model, "--layers", "fc6").exit_code == 2
    assert "own weights" in cli("serve", tmp_path / "best.pt", "--weights", other).output
    assert "--tta goes with a checkpoint" in cli("serve", model, "--tta", "flip").output
    assert "model file" in cli("serve", tmp_path / "missing.pt").output  # before the server starts
    assert "--mean and --std go with --features-only" in cli("serve", tmp_path / "best.pt", "--crop", "80",
                                                              "--mean", "0.5,0.5,0.5").output
