"""alexfeat serve under load: throughput and latency at several concurrencies, against two baselines.

    python bench/serve.py [IMAGES] [--n 800] [--concurrency 1,8,32,128] [--processes 4] [--max-seconds 60]
    python bench/serve.py --precision bf16    # the model, the offline run and the server all in bf16

On the same images and machine, in one run:
  offline  featurize on the N images (DataLoader workers, batch 64, start-up included as a user sees
           it): the rate the service aims at, measured before and after the server runs (a shared
           machine drifts);
  process  `alexfeat predict MODEL IMAGE` as a new process per image (what there was before the service);
  serve    `alexfeat serve MODEL` (defaults: --max-batch 32, --max-wait-ms 5) on 127.0.0.1, fed by an
           client with C requests in flight (a minimal asyncio HTTP/1.1 client, or --client httpx),
           each request one image as the raw body; the CPU the server and the client spend per
           request is printed (the client shares the cores: httpx costs 2.5-2.8 ms a request here);
           N requests per level (at most --max-seconds), the server already loaded and warm.
The model is a logistic regression fitted on fc7 features of 40 images per class, from AlexNet with
random-init weights saved to a file (throughput does not depend on the values). Target on 2 CPU cores:
at concurrency 32, >= 0.8x the offline rate with p99 < 2 s. Every phase is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the alexfeat CLI does

import httpx  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from alexfeat.classifiers.fit import FitConfig, fit_classifier  # noqa: E402
from alexfeat.featurizer.featurize import featurize
from alexfeat.featurizer.run import FeaturizeConfig  # noqa: E402

DEFAULT_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "dogs-vs-cats" / "test"
ALEXFEAT = [sys.executable, "-m", "alexfeat"]


def fit_model(images: Path, tmp: Path, precision: str = "fp32") -> tuple[Path, Path]:
    torch.manual_seed(0)
    weights = tmp / "alexnet_random.pth"
    torch.save(torchvision.models.alexnet().state_dict(), weights)
    listing = tmp / "fit.txt"
    listing.write_text("path,label\n" + "".join(f"{p},{p.parent.name}\n" for c in sorted(images.iterdir())
                                                 for p in sorted(c.glob("*.jpg"))[:40]))
    store = tmp / "fit.h5"
    featurize(FeaturizeConfig(images=listing, out=store, weights=str(weights), layers=("fc7",), quiet=True,
                              precision=precision))
    model = tmp / "model.joblib"
    fit_classifier(FitConfig(store=store, kind="logreg", out=model))
    return model, weights


def offline_rate(listing: Path, weights: Path, out: Path, precision: str = "fp32") -> float:
    start = time.perf_counter()
    result = featurize(FeaturizeConfig(images=listing, out=out, weights=str(weights), layers=("fc7",),
                                       overwrite=True, quiet=True, precision=precision))
    return (result.rows + len(result.skipped)) / (time.perf_counter() - start)


def per_process(model: Path, weights: Path, files: list[Path]) -> list[float]:
    seconds = []
    for path in files:
        start = time.perf_counter()
        subprocess.run([*ALEXFEAT, "predict", str(model), str(path), "--weights", str(weights), "-q"],
                       check=True, capture_output=True, timeout=120)
        seconds.append(time.perf_counter() - start)
    return seconds


async def load(url: str, bodies: list[bytes], concurrency: int, n: int, max_seconds: float, client: str = "raw"
               ) -> tuple[int, float, list[float], dict[int, int]]:
    """``n`` requests, ``concurrency`` in flight: (answered, seconds, latencies of 200s, statuses)."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    counter = iter(range(n))
    deadline = time.monotonic() + max_seconds

    async def worker(post) -> None:
        for i in counter:
            if time.monotonic() > deadline:
                return
            start = time.perf_counter()
            status = await post(bodies[i % len(bodies)])
            statuses[status] = statuses.get(status, 0) + 1
            if status == 200:
                latencies.append(time.perf_counter() - start)

    async with contextlib.AsyncExitStack() as stack:
        if client == "httpx":
            limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
            session = await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=60, limits=limits))

            async def post(body: bytes) -> int:
                response = await session.post("/v1/predict", content=body, headers={"Content-Type": "image/jpeg"})
                return response.status_code
            posts = [post] * concurrency
        else:
            connections = [RawConnection(url) for _ in range(concurrency)]
            stack.callback(lambda: [c.close() for c in connections])
            posts = [c.post for c in connections]
        start = time.perf_counter()
        await asyncio.gather(*(worker(p) for p in posts))
        return sum(statuses.values()), time.perf_counter() - start, latencies, statuses


class RawConnection:
    """A minimal HTTP/1.1 keep-alive client for one connection: POST an image, read the status and the
    body (Content-Length, chunked, or up to the close). The load generator shares the 2 cores with the
    server, and httpx spends 2.5-2.8 ms of CPU per request here (measured): this one about 0.1 ms."""

    def __init__(self, url: str):
        self.host, self.port = url.removeprefix("http://").rsplit(":", 1)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, body: bytes, path: str = "/v1/predict") -> int:
        """The response's status; 0 for a request that failed (no connection, closed, or 60 s timeout)."""
        for attempt in range(2):  # once more when a kept-alive connection was closed between requests
            try:
                if self.writer is None:
                    self.reader, self.writer = await asyncio.wait_for(
                        asyncio.open_connection(self.host, int(self.port)), 10)
                self.writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: image/jpeg\r\n"
                                  f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
                return await asyncio.wait_for(self._response(), 60)
            except (OSError, asyncio.IncompleteReadError) as exc:
                self.close()
                closed = isinstance(exc, (ConnectionResetError, BrokenPipeError, asyncio.IncompleteReadError))
                if attempt or not closed:
                    return 0
            except asyncio.TimeoutError:
                self.close()
                return 0  # not sent again: the server may still be working on it
        return 0

    async def _response(self) -> int:
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("the server closed the connection")
        status = int(status_line.split(b" ", 2)[1])
        headers = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if status in (204, 304) or 100 <= status < 200:
            pass
        elif "content-length" in headers:
            await self.reader.readexactly(int(headers["content-length"]))
        elif "chunked" in headers.get("transfer-encoding", ""):
            while (size := int((await self.reader.readline()).split(b";")[0], 16)):
                await self.reader.readexactly(size + 2)
            await self.reader.readline()
        else:
            await self.reader.read()
        if headers.get("connection") == "close" or self.reader.at_eof():
            self.close()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def batches(url: str) -> tuple[float, float]:
    """(forward passes, images in them) so far, from the server's metrics."""
    text = httpx.get(url + "/metrics", timeout=10).text
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
              if line.startswith(("alexfeat_batch_size_count", "alexfeat_batch_size_sum"))}
    return values["alexfeat_batch_size_count"], values["alexfeat_batch_size_sum"]


def process_cpu(pid: int | None = None) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` (default: this one)."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="?", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--n", type=int, default=800, help="Images per measurement.")
    parser.add_argument("--concurrency", default="1,8,32,128")
    parser.add_argument("--processes", type=int, default=4, help="Images for the process-per-image baseline.")
    parser.add_argument("--max-seconds", type=float, default=60, help="Bound on each load level.")
    parser.add_argument("--client", choices=("raw", "httpx"), default="raw",
                        help="Load generator: a minimal asyncio HTTP/1.1 client (default), or httpx.")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="What the network computes in, offline and in the server.")
    args = parser.parse_args()
    files = sorted(args.images.rglob("*.jpg"))[: args.n]
    if not files:
        sys.exit(f"no .jpg images under {args.images}")
    bodies = [p.read_bytes() for p in files]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; load average at start {os.getloadavg()[0]:.2f}")
    print(f"images: {len(files)} from {args.images} (mean {sum(map(len, bodies)) / len(bodies) / 1024:.0f} KiB)")

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model, weights = fit_model(args.images, tmp, args.precision)
        listing = tmp / "bench.txt"
        listing.write_text("".join(f"{p}\n" for p in files))
        offline = [offline_rate(listing, weights, tmp / "offline.h5", args.precision)]
        print(f"offline featurize: {offline[0]:.1f} images/s")
        process = per_process(model, weights, files[: args.processes])
        print(f"predict, a process per image: {len(process) / sum(process):.2f} images/s, "
              f"{statistics.median(process):.2f} s each")

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        log = open(tmp / "serve.log", "w")
        server = subprocess.Popen([*ALEXFEAT, "serve", str(model), "--weights", str(weights), "--port", str(port),
                                   "--precision", args.precision],
                                  stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        rows = []
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    if httpx.get(url + "/readyz", timeout=5).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            else:
                sys.exit("the server did not get ready in 120 s:\n" + (tmp / "serve.log").read_text())
            asyncio.run(load(url, bodies, 8, 32, 30, args.client))  # warm the connections and the allocator
            for c in (int(x) for x in args.concurrency.split(",")):
                before, cpu = batches(url), (process_cpu(server.pid), process_cpu())
                _, seconds, latencies, statuses = asyncio.run(load(url, bodies, c, max(args.n, c), args.max_seconds,
                                                                   args.client))
                answered = statuses.get(200, 0)  # images/s and CPU per request count answered images only
                server_ms, client_ms = ((b - a) / max(1, answered) * 1000 for a, b in
                                        zip(cpu, (process_cpu(server.pid), process_cpu())))
                count, total = (a - b for a, b in zip(batches(url), before))
                rows.append((c, answered / seconds, percentile(latencies, 50), percentile(latencies, 99),
                             total / count))
                print(f"serve c={c}: {rows[-1][1]:.1f} images/s, p50 {rows[-1][2]:.3f} s, p99 {rows[-1][3]:.3f} s, "
                      f"mean batch {total / count:.1f}, statuses {statuses}; CPU per request: server "
                      f"{server_ms:.1f} ms, {args.client} client {client_ms:.2f} ms")
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
            log.close()
        offline.append(offline_rate(listing, weights, tmp / "offline.h5", args.precision))
        print(f"offline featurize again: {offline[1]:.1f} images/s")

    base = statistics.mean(offline)
    print(f"\nload average at end {os.getloadavg()[0]:.2f}")
    print("\n| method | concurrency | images/s | x offline | p50 latency | p99 latency | mean batch |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(f"| offline featurize (before / after) | - | {offline[0]:.1f} / {offline[1]:.1f} | 1.00 | - | - | 64 |")
    print(f"| `alexfeat predict`, a process per image | 1 | {len(process) / sum(process):.2f} | "
          f"{len(process) / sum(process) / base:.3f} | {statistics.median(process):.2f} s | {max(process):.2f} s | 1 |")
    for c, rate, p50, p99, mean_batch in rows:
        print(f"| `alexfeat serve` | {c} | {rate:.1f} | {rate / base:.2f} | {p50 * 1000:.0f} ms | {p99 * 1000:.0f} ms "
              f"| {mean_batch:.1f} |")
    target = next((r for r in rows if r[0] == 32), None)
    if target:
        ok = target[1] >= 0.8 * base and target[3] < 2.0
        print(f"\ntarget at concurrency 32 (>= 0.8x offline, p99 < 2 s): {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
