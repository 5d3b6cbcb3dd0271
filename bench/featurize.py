"""Featurize throughput: alexfeat in fp32 and in bf16 vs the forward pass alone vs a hand-written loop.

    python bench/featurize.py [IMAGES] [--layers fc7] [--batch-size 64] [--repeat 3]
    python bench/featurize.py --device cuda            # 20000 synthetic JPEGs made on the GPU
    python bench/featurize.py --compile                # also torch.compile the bf16 network (CPU)

All run in the same process on the same images (default: the 800 test photos of ../shared) and load
the same AlexNet weights file (random values, saved once: throughput does not depend on the values,
and loading a file is what a pretrained run does). Prints the CPU, whether it computes bf16 natively
(AMX, AVX512-BF16), images/s for each, and the ratios the project targets: alexfeat / forward-only
(>= 0.95, fp32), alexfeat / hand-written loop (>= 1.4, fp32), alexfeat bf16 / alexfeat fp32 (>= 3 on a
CPU with native bf16) and alexfeat bf16 / the packing limit (>= 0.85): the cores divided by the
decode-plus-forward CPU time of one image, both measured in this run (decode+resize in one process,
image by image; the forward pass as the process CPU time of the forward-only run). Then each stage
alone: decoding (alexfeat's loader, its default workers, or nvJPEG batches with --decode gpu), the
bf16 variants tried (autocast, oneDNN's fp32_precision, the network cast: rate and cosine to fp32),
and writing fc7 and pool5+fc6+fc7 rows into a store (writer thread, flush cadence as featurize).

The three run back to back in each repeat and the ratios are taken within a repeat, so
that drift in the machine's speed (a shared VM's varies by 15% over minutes) does not
land on one method only; the median over repeats is reported.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the alexfeat CLI does; applies to all three

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torchvision import transforms  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from alexfeat.featurizer.decode import ImageDataset, Preprocess, make_loader  # noqa: E402
from alexfeat.featurizer.device import cpu_bf16, default_workers, resolve_decode  # noqa: E402
from alexfeat.featurizer.gpu_decode import EncodedDataset, collate_encoded, decode_on_device  # noqa: E402
from alexfeat.featurizer.featurize import featurize  # noqa: E402
from alexfeat.featurizer.run import FeaturizeConfig  # noqa: E402
from alexfeat.featurizer.featurizer import build_featurizer  # noqa: E402
from alexfeat.store.provenance import Provenance  # noqa: E402
from alexfeat.store.writer import StoreWriter  # noqa: E402

DEFAULT_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "dogs-vs-cats" / "test"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_only(weights: Path, layers: tuple[str, ...], batch_size: int, n: int, device: torch.device,
                 compile: bool = False, precision: str = "fp32") -> float:
    """The compute limit: alexfeat's own network cut at the same layers, on synthetic uint8 batches
    already on the device in the channels-last layout featurize's loader gives, features copied back
    to the host as featurize does. Sets ``forward_only.cpu_per_image``: the process CPU seconds per image."""
    fz = build_featurizer("alexnet", str(weights), layers, "none", device, compile=compile, precision=precision)
    images = torch.randint(0, 256, (batch_size, 3, 224, 224), dtype=torch.uint8, device=device)
    images = images.contiguous(memory_format=torch.channels_last)
    started = time.perf_counter()
    fz(images)  # warm-up (and, with compile, the compilation)
    forward_only.warm_up = time.perf_counter() - started
    pending = []
    synchronize(device)
    done, start, cpu = 0, time.perf_counter(), time.process_time()
    while done < n:
        pending.append(fz.submit(images))
        if len(pending) > 2:
            pending.pop(0)()
        done += batch_size
    for result in pending:
        result()
    forward_only.cpu_per_image = (time.process_time() - cpu) / done
    return done / (time.perf_counter() - start)


def alexfeat_run(images: Path, weights: Path, layers: tuple[str, ...], batch_size: int, out: Path,
                 args: argparse.Namespace, precision: str = "fp32") -> float:
    config = FeaturizeConfig(images=images, out=out, weights=str(weights), layers=layers, batch_size=batch_size,
                             overwrite=True, quiet=True, device=args.device, decode=args.decode,
                             workers=args.workers, threads=args.threads, compile=args.compile, precision=precision)
    start, cpu = time.perf_counter(), _cpu_seconds()
    result = featurize(config)
    rate = (result.rows + len(result.skipped)) / (time.perf_counter() - start)
    alexfeat_run.setup[precision] = result.setup
    alexfeat_run.cpu_per_image.setdefault(precision, []).append((_cpu_seconds() - cpu) / result.rows)
    return rate


alexfeat_run.setup, alexfeat_run.cpu_per_image = {}, {}


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the loader's workers, once they exit)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def handwritten_loop(images: Path, weights: Path, batch_size: int, out: Path, device: torch.device) -> float:
    """What a careful notebook does: ImageFolder + standard transforms + DataLoader + fc7 + h5py."""
    start = time.perf_counter()
    tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                             transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    dataset = torchvision.datasets.ImageFolder(str(images), transform=tf)
    workers = min(4, os.cpu_count() or 1) if device.type == "cpu" else min(16, os.cpu_count() or 1)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, pin_memory=device.type == "cuda")
    model = torchvision.models.alexnet()
    model.load_state_dict(torch.load(weights, weights_only=True))
    model.eval().to(device)
    model.classifier = model.classifier[:6]  # up to fc7 + ReLU
    with h5py.File(out, "w") as f:
        ds = f.create_dataset("fc7", shape=(len(dataset), 4096), dtype="f4")
        labels = f.create_dataset("labels", shape=(len(dataset),), dtype="i8")
        row = 0
        with torch.no_grad():
            for x, y in loader:
                ds[row:row + len(x)] = model(x.to(device)).cpu().numpy()
                labels[row:row + len(x)] = y.numpy()
                row += len(x)
    return len(dataset) / (time.perf_counter() - start)


def decode_alone(images: Path, batch_size: int, device: torch.device, decode: str, workers: int | None) -> float:
    """alexfeat's decoding stage alone: the loader's workers (and nvJPEG batches with --decode gpu)."""
    files = sorted(p for p in images.rglob("*") if p.is_file())
    pre = Preprocess()
    workers = default_workers(device, decode) if workers is None else workers
    start = time.perf_counter()
    if decode == "cpu":
        for _ in make_loader(ImageDataset(files, pre), batch_size, workers):
            pass
    else:
        for batch in make_loader(EncodedDataset(files, pre), batch_size, workers, collate_fn=collate_encoded):
            decode_on_device(batch, files, pre, device)
        synchronize(device)
    return len(files) / (time.perf_counter() - start)


def decode_cpu_per_image(images: Path) -> float:
    """CPU seconds to decode, resize and crop one image as featurize's workers do, in this process, image by
    image (the mean over the folder; the second of two passes, so that the files are in the page cache)."""
    files = sorted(p for p in images.rglob("*") if p.is_file())
    dataset = ImageDataset(files, Preprocess())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    try:
        for _ in range(2):
            start = time.process_time()
            for i in range(len(dataset)):
                dataset[i]
            seconds = time.process_time() - start
    finally:
        torch.set_num_threads(threads)
    return seconds / len(files)


def bf16_variants(weights: Path, layers: tuple[str, ...], batch_size: int, n: int) -> list[str]:
    """The ways to run AlexNet in bf16 on the CPU, each against fp32 on the same batch: images/s and the
    smallest cosine similarity of its features to fp32's."""
    fz = build_featurizer("alexnet", str(weights), layers, "none", torch.device("cpu"))
    images = torch.randint(0, 256, (batch_size, 3, 224, 224), dtype=torch.uint8)
    images = images.contiguous(memory_format=torch.channels_last)
    layer = layers[-1]

    def run(call) -> tuple[float, torch.Tensor]:
        with torch.inference_mode():
            out = call()[layer].float()
            start = time.perf_counter()
            for _ in range(max(1, n // batch_size)):
                call()
            return max(1, n // batch_size) * batch_size / (time.perf_counter() - start), out

    def autocast():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return fz.module(images)

    def onednn_bf16():
        # PyTorch >= 2.9: oneDNN computes fp32 convolutions and matmuls in bf16, fp32 storage.
        backends = (torch.backends.mkldnn.matmul, torch.backends.mkldnn.conv)
        before = [b.fp32_precision for b in backends]
        for b in backends:
            b.fp32_precision = "bf16"
        try:
            return fz.module(images)
        finally:
            for b, value in zip(backends, before):
                b.fp32_precision = value

    rate32, ref = run(lambda: fz.module(images))
    lines = [f"fp32                     {rate32:8.1f} images/s"]
    variants = [("autocast", autocast), ("oneDNN fp32_precision", onednn_bf16)]
    if not hasattr(torch.backends.mkldnn, "matmul"):  # before PyTorch 2.9
        variants.pop()
    for name, call in variants:
        rate, out = run(call)
        cos = torch.nn.functional.cosine_similarity(out, ref).min().item()
        lines.append(f"{name:24s} {rate:8.1f} images/s ({rate / rate32:.2f}x fp32), min cosine {cos:.4f}")
    fz.module.to_bfloat16()  # what --precision bf16 does
    rate, out = run(lambda: fz.module(images))
    cos = torch.nn.functional.cosine_similarity(out, ref).min().item()
    lines.append(f"{'network cast (alexfeat)':24s} {rate:8.1f} images/s ({rate / rate32:.2f}x fp32), "
                 f"min cosine {cos:.4f}")
    return lines


def compare_decoders(images: Path, weights: Path, batch_size: int, device: torch.device) -> str:
    """The same photos through the CPU path and through the batched path (nvJPEG on CUDA; on the CPU
    decode_jpeg on a list of CPU tensors): largest pixel and fc7 differences."""
    files = sorted(p for p in images.rglob("*") if p.is_file())
    pre = Preprocess()
    fz = build_featurizer("alexnet", str(weights), ("fc7",), "none", device)
    pixels, features, scale = 0, 0.0, 0.0
    cpu_batches = make_loader(ImageDataset(files, pre), batch_size, 1)
    encoded = make_loader(EncodedDataset(files, pre), batch_size, 1, collate_fn=collate_encoded)
    for cpu, batch in zip(cpu_batches, encoded):
        batched = decode_on_device(batch, files, pre, device)
        if batched.indices != cpu.indices or batched.failures != cpu.failures:
            return "the two paths decoded different images"
        diff = int((batched.images.cpu().int() - cpu.images.int()).abs().max())
        pixels = max(pixels, diff)
        if diff or device.type == "cuda":
            ours, theirs = fz(batched.images)["fc7"], fz(cpu.images)["fc7"]
            features, scale = max(features, float(np.abs(ours - theirs).max())), max(scale, float(np.abs(theirs).max()))
    return (f"{len(files)} images: max |pixel difference| {pixels} (of 255), max |fc7 difference| {features:.3g}"
            + (f" (largest fc7 value {scale:.3g})" if scale else ""))


def write_alone(dims: dict[str, int], batch_size: int, n: int, folder: Path) -> float:
    """featurize's writing stage alone: rows into a pre-allocated store through the writer thread,
    flushed (fsync) and the resume point saved as featurize does."""
    from alexfeat.featurizer.background import BackgroundWriter
    from alexfeat.featurizer.decode import DecodedBatch
    from alexfeat.featurizer.sink import _Saver
    from alexfeat.store.paths import partial_path, progress_path
    from alexfeat.store.writer import Progress

    out = folder / "write.h5"
    rng = np.random.default_rng(0)
    rows = {layer: np.maximum(rng.standard_normal((batch_size, d), dtype=np.float32), 0) for layer, d in dims.items()}
    start = time.perf_counter()
    writer = StoreWriter.create(out, n, dims, "float32", Provenance())
    saver = _Saver(writer, Progress("bench"), progress_path(out), FeaturizeConfig.flush_seconds,
                   FeaturizeConfig.flush_batches)
    with BackgroundWriter(saver.write) as background:
        for first in range(0, n, batch_size):
            batch = DecodedBatch(list(range(first, min(n, first + batch_size))), torch.empty(0))
            background.put((batch, lambda b=len(batch.indices): {k: v[:b] for k, v in rows.items()}))
    saver.save()
    writer.close()
    rate = n / (time.perf_counter() - start)
    partial_path(out).unlink()
    progress_path(out).unlink()
    return rate


def synthetic_jpegs(folder: Path, n: int, device: torch.device) -> Path:
    """``n`` 500x375 JPEGs (smooth colour fields with noise, photo-like sizes) encoded on ``device``."""
    from torchvision.io import encode_jpeg

    generator = torch.Generator(device=device).manual_seed(0)
    for first in range(0, n, 256):
        count = min(256, n - first)
        coarse = torch.rand(count, 3, 12, 16, generator=generator, device=device)
        fields = torch.nn.functional.interpolate(coarse, size=(375, 500), mode="bicubic", align_corners=False)
        noise = torch.rand(count, 3, 375, 500, generator=generator, device=device) * 0.15
        batch = ((fields + noise).clamp(0, 1) * 255).to(torch.uint8)
        encoded = encode_jpeg(list(batch), quality=90)
        for k, data in enumerate(encoded):
            path = folder / "synthetic" / f"{first + k:06d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data.cpu().numpy().tobytes())
    return folder


def describe_machine(device: torch.device) -> str:
    gpu = f", GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True,
                         text=True).stdout.strip() or platform.machine()
    flags = subprocess.run(["sh", "-c", "grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2"], capture_output=True,
                           text=True).stdout.split()
    bf16_flags = " ".join(f for f in flags if f in ("avx512_bf16", "amx_bf16", "amx_tile", "amx_int8")) or "none"
    native = cpu_bf16()
    return (f"{cpu}, {os.cpu_count()} cores{gpu}, torch {torch.__version__}; load average {load}\n"
            f"bf16 flags: {bf16_flags} -> " + (f"bf16 is native on this CPU ({native})" if native else
                                               "bf16 is NOT native on this CPU (emulated: slower than fp32)"))


def median_line(name: str, values: list[float]) -> str:
    runs = ", ".join(f"{r:.1f}" for r in values)
    return f"{name:22s} {statistics.median(values):8.1f} images/s median   (runs: {runs})"


def ratio_line(name: str, ratios: list[float], target: str) -> str:
    return f"{name} = {statistics.median(ratios):.2f} median of [{', '.join(f'{r:.2f}' for r in ratios)}]  ({target})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="?", type=Path, default=None)
    parser.add_argument("--layers", default="fc7")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3, help="repeats; medians are reported")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--decode", default="auto", choices=("auto", "cpu", "gpu"))
    parser.add_argument("--synthetic", type=int, default=None,
                        help="featurize this many synthetic JPEGs made on --device (default: 20000 on cuda, "
                             "none on cpu, where the real photos are used)")
    parser.add_argument("--workers", type=int, default=None, help="alexfeat's decoding workers (default: its own)")
    parser.add_argument("--threads", type=int, default=None, help="alexfeat's torch threads (default: its own)")
    parser.add_argument("--compile", action="store_true", help="also torch.compile the bf16 network: compile time "
                                                                 "and forward rate")
    parser.add_argument("--no-stages", action="store_true", help="skip the per-stage rates")
    args = parser.parse_args()
    device = torch.device(args.device)
    decode = resolve_decode(args.decode, device)
    synthetic = args.synthetic if args.synthetic is not None else (20000 if device.type == "cuda" else 0)
    layers = tuple(args.layers.split(","))
    compile_bf16, args.compile = args.compile, False  # the runs below are eager; --compile is measured apart
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if synthetic:
            started = time.perf_counter()
            images = synthetic_jpegs(tmp / "images", synthetic, device)
            print(f"made {synthetic} synthetic JPEGs on {device} in {time.perf_counter() - started:.1f} s")
        else:
            images = args.images or DEFAULT_IMAGES
        if not images.is_dir():
            sys.exit(f"{images} is not a folder (pass an image folder; the default needs ../shared)")
        n_images = sum(1 for p in images.rglob("*") if p.is_file())
        print(f"machine: {describe_machine(device)}")
        print(f"{n_images} images in {images}; layers {args.layers}; batch {args.batch_size}; decode {decode}")
        weights = tmp / "alexnet.pth"
        torch.save(torchvision.models.alexnet().state_dict(), weights)
        n_forward = max(256, n_images // 2)
        rates = {name: [] for name in ("forward-only fp32", "forward-only bf16", "alexfeat fp32", "alexfeat bf16",
                                       "hand-written fp32")}
        forward_cpu = {"fp32": [], "bf16": []}
        for _ in range(args.repeat):
            for precision in ("fp32", "bf16"):
                rates[f"forward-only {precision}"].append(forward_only(weights, layers, args.batch_size, n_forward,
                                                                       device, precision=precision))
                forward_cpu[precision].append(forward_only.cpu_per_image)
                rates[f"alexfeat {precision}"].append(alexfeat_run(images, weights, layers, args.batch_size,
                                                                   tmp / "a.h5", args, precision))
            rates["hand-written fp32"].append(handwritten_loop(images, weights, args.batch_size, tmp / "b.h5", device))
        decode_cpu = decode_cpu_per_image(images) if decode == "cpu" else None
        for precision, setup in alexfeat_run.setup.items():
            print(f"alexfeat {precision} ran with {setup}")
        for name, values in rates.items():
            print(median_line(name, values))
        if decode_cpu is not None:
            print(f"decode-only            {1e3 * decode_cpu:8.2f} ms CPU per image (decode + resize + crop, one "
                  f"process: {1 / decode_cpu:.0f} images/s per core)")
        for precision in ("fp32", "bf16"):
            print(f"forward-only {precision}      {1e3 * statistics.median(forward_cpu[precision]):8.2f} ms CPU per "
                  f"image (all threads)")
        per = {k: list(zip(*(rates[f"{n} {k}"] for n in ("alexfeat", "forward-only")))) for k in ("fp32", "bf16")}
        print(ratio_line("alexfeat fp32 / forward-only fp32", [a / b for a, b in per["fp32"]], "target >= 0.95"))
        print(ratio_line("alexfeat fp32 / hand-written fp32",
                         [a / b for a, b in zip(rates["alexfeat fp32"], rates["hand-written fp32"])], "target >= 1.4"))
        native = cpu_bf16() if device.type == "cpu" else "CUDA"
        print(ratio_line("alexfeat bf16 / alexfeat fp32",
                         [a / b for a, b in zip(rates["alexfeat bf16"], rates["alexfeat fp32"])],
                         f"target >= 3 where bf16 is native: {'yes, ' + native if native else 'NOT native here'}"))
        if decode_cpu is not None:
            cores = os.cpu_count() or 1
            for precision in ("fp32", "bf16"):
                limits = [cores / (decode_cpu + f) for f in forward_cpu[precision]]
                forward = 1e3 * statistics.median(forward_cpu[precision])
                print(ratio_line(f"alexfeat {precision} / packing limit",
                                 [r / lim for r, lim in zip(rates[f"alexfeat {precision}"], limits)],
                                 f"limit {statistics.median(limits):.0f} images/s = {cores} cores / (decode "
                                 f"{1e3 * decode_cpu:.2f} + forward {forward:.2f} ms CPU per image); "
                                 f"target >= 0.85 for bf16"))
                spent = statistics.median(alexfeat_run.cpu_per_image[precision])
                print(f"  alexfeat {precision} spent {1e3 * spent:.2f} ms CPU per image in all: "
                      f"{(decode_cpu + statistics.median(forward_cpu[precision])) / spent:.2f} of it the decode and "
                      f"forward work measured alone (the packing limit assumes the cores are all this run's: "
                      f"load average {os.getloadavg()[0]:.1f})")
        if compile_bf16:
            eager = forward_only(weights, layers, args.batch_size, n_forward, device, precision="bf16")
            compiled = forward_only(weights, layers, args.batch_size, n_forward, device, compile=True,
                                    precision="bf16")
            print(f"torch.compile, bf16 forward: {compiled:.1f} images/s against {eager:.1f} eager "
                  f"({compiled / eager:.2f}x) after {forward_only.warm_up:.0f} s compiling")
        if args.no_stages:
            return
        print("each stage alone (one run each):")
        print(f"  decode          {decode_alone(images, args.batch_size, device, decode, args.workers):8.1f} images/s "
              f"({decode}, {default_workers(device, decode) if args.workers is None else args.workers} workers)")
        if device.type == "cpu":
            print("  bf16 on the CPU, forward pass only:")
            for line in bf16_variants(weights, layers, args.batch_size, n_forward):
                print(f"    {line}")
        else:
            print(f"  CPU path vs the --decode gpu path run on {device}: "
                  f"{compare_decoders(images, weights, args.batch_size, device)}")
        n_rows = max(8192, n_images)
        for dims in ({"fc7": 4096}, {"pool5": 9216, "fc6": 4096, "fc7": 4096}):
            rate = write_alone(dims, args.batch_size, n_rows, tmp)
            print(f"  write           {rate:8.1f} rows/s ({'+'.join(dims)}, {n_rows} rows, "
                  f"{rate * 4 * sum(dims.values()) / 1e6:.0f} MB/s)")


if __name__ == "__main__":
    main()
