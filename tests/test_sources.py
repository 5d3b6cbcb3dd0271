"""A user brings data in the shapes other tools write: Parquet with the images inside (Hugging Face datasets,
img2dataset), pandas' float labels, tar shards by glob or folder, and a subset for a first try."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from alexfeat import FeatureStore
from alexfeat.errors import AlexfeatError
from alexfeat.featurizer.sources import SourceOptions, open_source

FAST = ("--resize", "72", "--crop", "64", "--layers", "fc7", "--workers", "0", "--quiet")
HF_FEATURES = {"image": {"_type": "Image"}, "label": {"names": ["blue", "red"], "_type": "ClassLabel"}}


def image_files(images_dir: Path) -> list[Path]:
    return sorted(images_dir.rglob("*.*"), key=lambda p: p.relative_to(images_dir).as_posix())


def write_hf_parquet(path: Path, images_dir: Path, labels: list[int] | None = None) -> Path:
    """What ``datasets.Dataset.to_parquet`` writes for an ``Image`` and a ``ClassLabel`` feature."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = image_files(images_dir)
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({"image": pa.array([{"bytes": f.read_bytes(), "path": f.name} for f in files], image_type),
                      "label": labels if labels is not None else [["blue", "red"].index(f.parent.name) for f in files]})
    metadata = {b"huggingface": json.dumps({"info": {"features": HF_FEATURES}}).encode()}
    pq.write_table(table.replace_schema_metadata(metadata), path, row_group_size=5)  # several row groups
    return path


def rows_by_key(path: Path) -> dict[str, tuple[int, np.ndarray]]:
    with FeatureStore.open(path) as store:
        return {p: (int(y), x) for p, y, x in zip(store.paths, store.labels, store.features("fc7"))}


def featurize(cli, weights, *args):
    result = cli("featurize", *args, "--weights", weights, *FAST)
    assert result.exit_code == 0, result.output
    return result


def test_hugging_face_parquet_featurizes_like_the_folder_it_came_from(cli, images_dir, alexnet_weights, tmp_path):
    parquet = write_hf_parquet(tmp_path / "train-00000-of-00001.parquet", images_dir)
    featurize(cli, alexnet_weights, parquet, tmp_path / "hf.h5")
    featurize(cli, alexnet_weights, images_dir, tmp_path / "folder.h5")
    hf, folder = rows_by_key(tmp_path / "hf.h5"), rows_by_key(tmp_path / "folder.h5")
    with FeatureStore.open(tmp_path / "hf.h5") as store:
        assert store.classes == ["blue", "red"]  # the ClassLabel's names, from the schema metadata
    assert sorted(hf) == sorted(Path(k).name for k in folder)  # keys: the image struct's paths
    for key, (label, x) in folder.items():
        assert hf[Path(key).name][0] == label
        np.testing.assert_array_equal(hf[Path(key).name][1], x)

    # Two ClassLabel columns (CIFAR-100's fine_label and coarse_label): --label-column picks one.
    import pyarrow.parquet as pq

    table = pq.read_table(parquet).rename_columns(["image", "fine_label"])
    table = table.append_column("coarse_label", table.column("fine_label"))
    features = {"image": {"_type": "Image"}, "fine_label": HF_FEATURES["label"],
                "coarse_label": {"names": ["cool", "warm"], "_type": "ClassLabel"}}
    pq.write_table(table.replace_schema_metadata({b"huggingface": json.dumps({"info": {"features": features}})}),
                   tmp_path / "cifar.parquet")
    with pytest.raises(AlexfeatError, match=r"several label columns \(fine_label, coarse_label\).*--label-column"):
        open_source(tmp_path / "cifar.parquet")
    assert open_source(tmp_path / "cifar.parquet", SourceOptions(label_column="coarse_label")).classes == (
        "cool", "warm")


def test_img2dataset_parquet_is_read_by_its_jpg_and_key_columns(cli, images_dir, alexnet_weights, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = image_files(images_dir)
    pq.write_table(pa.table({"key": [f"{i:09d}" for i in range(12)], "jpg": [f.read_bytes() for f in files],
                             "url": ["https://example.org/x"] * 12, "caption": ["a photo"] * 12,
                             "status": ["success"] * 12}), tmp_path / "00000.parquet")
    featurize(cli, alexnet_weights, tmp_path / "00000.parquet", tmp_path / "i2d.h5")
    with FeatureStore.open(tmp_path / "i2d.h5") as store:
        assert list(store.paths) == [f"{i:09d}" for i in range(12)] and set(store.labels) == {-1}


def test_two_image_columns_ask_for_image_column(cli, images_dir, alexnet_weights, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = [f.read_bytes() for f in image_files(images_dir)]
    pq.write_table(pa.table({"jpg": data, "thumbnail": data, "label": [0] * 6 + [1] * 6}), tmp_path / "two.parquet")
    result = cli("featurize", tmp_path / "two.parquet", tmp_path / "x.h5", "--weights", alexnet_weights, *FAST)
    assert result.exit_code == 2 and "several image columns (jpg, thumbnail)" in result.output
    assert "--image-column" in result.output and not (tmp_path / "x.h5").exists()
    featurize(cli, alexnet_weights, tmp_path / "two.parquet", tmp_path / "x.h5", "--image-column", "thumbnail")
    with FeatureStore.open(tmp_path / "x.h5") as store:
        assert len(store) == 12 and store.classes == ["0", "1"]


def test_pandas_float_labels_are_integers_and_nan_is_unlabelled(images_dir, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = [p.relative_to(images_dir).as_posix() for p in image_files(images_dir)]
    labels = [0.0, 1.0, float("nan")] * 4  # an integer column with missing values, as pandas writes it
    pq.write_table(pa.table({"path": paths, "label": labels}), images_dir / "list.parquet")
    samples = open_source(images_dir / "list.parquet")
    assert samples.classes == ("0", "1") and samples.labels == (0, 1, -1) * 4
    pq.write_table(pa.table({"path": paths, "y": [0.0, 0.5] * 6}), images_dir / "list.parquet")
    with pytest.raises(AlexfeatError, match=r"column 'y' of row 1 \(counting from 0\) is 0.5, not a class index"):
        open_source(images_dir / "list.parquet", SourceOptions(label_column="y"))


def write_tars(images_dir: Path, folder: Path, count: int = 3) -> list[str]:
    """The 12 images as WebDataset shards (key.jpg + key.cls); returns the keys."""
    from PIL import Image

    folder.mkdir()
    keys = []
    shards = [tarfile.open(folder / f"{i:05d}.tar", "w") for i in range(count)]
    for n, f in enumerate(image_files(images_dir)):
        buf = io.BytesIO()
        Image.open(f).convert("RGB").save(buf, format="JPEG")
        key = f"{f.parent.name}_{n:02d}"
        for suffix, data in ((".jpg", buf.getvalue()), (".cls", str(["blue", "red"].index(f.parent.name)).encode())):
            info = tarfile.TarInfo(key + suffix)
            info.size = len(data)
            shards[n % count].addfile(info, io.BytesIO(data))
        keys.append(key)
    for shard in shards:
        shard.close()
    return keys


def test_tar_shards_as_arguments_globs_and_a_folder(cli, images_dir, alexnet_weights, tmp_path):
    keys = write_tars(images_dir, tmp_path / "shards")
    shards = [tmp_path / "shards" / f"{i:05d}.tar" for i in range(3)]
    for given in ([str(tmp_path / "shards" / "*.tar")], [tmp_path / "shards"], shards,
                  [str(tmp_path / "shards" / "{00000..00002}.tar")]):
        samples = open_source(given)
        assert sorted(samples.keys) == sorted(keys) and samples.classes == ("0", "1"), given
    featurize(cli, alexnet_weights, *shards, tmp_path / "args.h5")  # what the shell makes of shards/*.tar
    featurize(cli, alexnet_weights, tmp_path / "shards", tmp_path / "folder.h5")
    assert rows_by_key(tmp_path / "args.h5").keys() == rows_by_key(tmp_path / "folder.h5").keys()
    result = cli("featurize", tmp_path / "shards" / "*.tgz", tmp_path / "x.h5", "--weights", alexnet_weights, *FAST)
    assert result.exit_code == 2 and "matches no file" in result.output


def test_limit_and_per_class_keep_a_documented_subset(cli, images_dir, alexnet_weights, tmp_path):
    # per class: the first N in the source's order; limit: N spread evenly, so sorted classes all get a share.
    assert open_source(images_dir, SourceOptions(per_class=2)).keys == (
        "blue/blue_00.jpg", "blue/blue_01.png", "red/red_00.jpg", "red/red_01.png")
    assert open_source(images_dir, SourceOptions(limit=4)).keys == (
        "blue/blue_00.jpg", "blue/blue_03.png", "red/red_00.jpg", "red/red_03.png")
    featurize(cli, alexnet_weights, images_dir, tmp_path / "few.h5", "--per-class", "3", "--limit", "4")
    with FeatureStore.open(tmp_path / "few.h5") as store:
        assert list(store.paths) == ["blue/blue_00.jpg", "blue/blue_01.png", "red/red_00.jpg", "red/red_01.png"]
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "a.jpg").write_bytes((images_dir / "blue" / "blue_00.jpg").read_bytes())
    result = cli("featurize", flat, tmp_path / "x.h5", "--per-class", "2", "--weights", alexnet_weights, *FAST)
    assert result.exit_code == 2 and "--per-class needs labelled images" in result.output


def test_a_save_to_disk_folder_is_refused_with_the_conversion(cli, tmp_path):
    saved = tmp_path / "saved"
    saved.mkdir()
    for name in ("data-00000-of-00001.arrow", "dataset_info.json", "state.json"):
        (saved / name).write_text("{}")
    result = cli("featurize", saved, tmp_path / "x.h5", "--weights", "none", *FAST)
    assert result.exit_code == 2 and "save_to_disk" in result.output and "to_parquet" in result.output


def test_the_trainers_take_limit_and_per_class_by_the_same_rule(cli, tmp_path):
    from tests.conftest import make_class_folder

    train, test = make_class_folder(tmp_path / "train", per_class=8), make_class_folder(tmp_path / "test")
    tiny = ("--image-size", "64", "--batch-size", "8", "--workers", "0", "-q", "--epochs", "1")
    result = cli("train-scratch", train, "--test-dir", test, "-o", tmp_path / "run", "--per-class", "4",
                 "--val-split", "0.5", "--width-mult", "0.125", *tiny)
    assert result.exit_code == 0, result.output
    held = sorted(Path(line.split(",")[0]).name for line in (tmp_path / "run" / "val.csv").read_text().splitlines()[1:])
    assert len(held) == 4 and all(int(name.split("_")[1][:2]) < 4 for name in held)  # from the first 4 of each class
    assert json.loads((tmp_path / "run" / "config.json").read_text())["per_class"] == 4
    result = cli("finetune", train, "--test-dir", test, "-o", tmp_path / "ft", "--weights",
                 tmp_path / "run" / "best.pt", "--schedule", "head", "--limit", "4", "--val-split", "0.5", *tiny)
    assert result.exit_code == 0, result.output
    assert len((tmp_path / "ft" / "val.csv").read_text().splitlines()) == 1 + 2


def test_a_hugging_face_row_without_bytes_is_read_from_its_path(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from alexfeat.featurizer.sources import ParquetImage

    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    for name, second in (("mixed", None), ("full", b"\xff\xd8")):
        cells = [{"bytes": b"\xff\xd8", "path": "a.jpg"}, {"bytes": second, "path": "b.jpg"}]
        pq.write_table(pa.table({"image": pa.array(cells, type=image)}), tmp_path / f"{name}.parquet")
        items = open_source(tmp_path / f"{name}.parquet").items
        assert isinstance(items[0], ParquetImage)
        if second is None:
            assert items[1] == tmp_path / "b.jpg"
        else:
            assert isinstance(items[1], ParquetImage)
