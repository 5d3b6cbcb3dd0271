"""Throughput of ``featurize`` on images stored inside Parquet (a Hugging Face ``Image`` column) against the
same images as files in class folders, in the same run, on the same network:

    nice -n 10 python bench/parquet_source.py /work/shared/data/dogs-vs-cats/test --repeats 3

The Parquet file is written here by hand with the schema ``datasets`` writes (row groups of 100 images,
as ``datasets`` does for image columns). Each run is a fresh ``alexfeat featurize`` process, timed
wall-clock from start to exit, and its own images/s line is read; the runs alternate between the
two sources, and the medians of ``--repeats`` runs are compared.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from alexfeat.featurizer.sources.folders import list_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="A folder of class sub-folders.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", default="2")
    parser.add_argument("--model", default="alexnet")
    parser.add_argument("--weights", default="none")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="parquet_bench_"))
    parquet = write_hf_parquet(args.folder, work / "data.parquet")
    common = ["--model", args.model, "--weights", args.weights, "--workers", args.workers, "--quiet", "--overwrite",
              "--resize", "128", "--crop", "112", "--layers", "fc7" if args.model == "alexnet" else "pre_logits"]
    print(f"CPU: {_cpu()}; python {platform.python_version()}; {len(list_images(args.folder))} images; "
          f"{parquet.stat().st_size / 1e6:.1f} MB of Parquet")
    sources = {"class folders (baseline)": args.folder, "Hugging Face Parquet": parquet}
    walls: dict[str, list[float]] = {name: [] for name in sources}
    inner: dict[str, list[float]] = {name: [] for name in sources}
    for _ in range(args.repeats):  # interleaved, so that a change in the machine's load hits both alike
        for name, source in sources.items():
            started = time.perf_counter()
            run = subprocess.run([sys.executable, "-m", "alexfeat", "featurize", str(source), str(work / "out.h5"),
                                  *common], check=True, capture_output=True, text=True)
            walls[name].append(time.perf_counter() - started)
            inner[name].append(float(re.search(r"([\d.]+) images/s", run.stdout).group(1)))
    for name in sources:
        print(f"{name:28s} featurize's own rate, median {statistics.median(inner[name]):6.1f} images/s (runs: "
              f"{', '.join(f'{r:.1f}' for r in inner[name])}); wall with start-up, best {min(walls[name]):.1f} s")
    ratio = statistics.median(inner["Hugging Face Parquet"]) / statistics.median(inner["class folders (baseline)"])
    print(f"Parquet / folders: {ratio:.2f}x")


def write_hf_parquet(folder: Path, path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    images = list_images(folder)
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({"image": pa.array([{"bytes": f.read_bytes(), "path": f.name} for f in images.files],
                                        image_type), "label": list(images.labels)})
    features = {"image": {"_type": "Image"}, "label": {"names": list(images.classes), "_type": "ClassLabel"}}
    metadata = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    pq.write_table(table.replace_schema_metadata(metadata), path, row_group_size=100)
    return path


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    main()
