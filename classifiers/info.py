"""One-screen summaries of the files alexfeat writes."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from alexfeat.classifiers.model_file import ClassifierModel
from alexfeat.featurizer.errors import AlexfeatError
from alexfeat.featurizer.lock import RunLock
from alexfeat.featurizer.model_files import is_run_folder, model_kind
from alexfeat.featurizer.store import FeatureStore, lock_path, partial_path

__all__ = ["describe"]


def describe(path: Path) -> list[str]:
    """Lines describing a store (.h5, a folder of parts, or an unfinished run's OUT.partial), a classifier
    model (.joblib), a checkpoint (.pt) or a trainer's run folder."""
    path = Path(path)
    if path.name.endswith(".partial"):
        path = path.with_name(path.name.removesuffix(".partial"))
    if not path.exists():
        if partial_path(path).exists():
            return _describe_partial(path)
        raise AlexfeatError(f"{path} does not exist")
    suffix = path.suffix.lower()
    if is_run_folder(path):
        return _describe_run(path)
    if suffix in (".h5", ".hdf5") or path.is_dir():
        return _describe_store(path)
    try:
        kind = model_kind(path)
    except AlexfeatError:
        raise AlexfeatError(f"{path}: info reads .h5 stores, run folders, classifier models from fit-* and "
                            f"trainer checkpoints (.pt)") from None
    return _describe_checkpoint(path) if kind == "checkpoint" else _describe_model(path)


def _describe_store(path: Path) -> list[str]:
    with FeatureStore.open(path) as store:
        attrs = store.attrs
        counts = Counter(store.labels.tolist())
        kind = f"folder of {attrs['parts']} part stores" if "parts" in attrs else "feature store"
        lines = [f"{kind} {path}: {len(store)} images, {len(store.skipped)} skipped"]
        for layer in store.layers:
            lines.append(f"  layer {layer}: dimension {store.dim(layer)}")
        if store.classes:
            lines.append("  classes: " + ", ".join(f"{c} ({counts.get(i, 0)})" for i, c in enumerate(store.classes)))
        else:
            lines.append("  unlabelled")
        for key in ("model", "weights", "preprocess", "options", "source", "created", "alexfeat_version"):
            value = attrs.get(key)
            lines.append(f"  {key}: {json.dumps(value) if isinstance(value, (dict, list)) else value}")
    return lines


def _describe_partial(out: Path) -> list[str]:
    partial = FeatureStore.read_partial(out)
    progress = partial.progress
    rows, skipped = (progress.rows, len(progress.skipped)) if progress else (0, 0)
    state = ("a featurize run is writing it now" if RunLock.is_held(lock_path(out)) else
             "interrupted: run the same featurize command with --resume to finish it")
    lines = [f"unfinished feature store {partial_path(out)}: {partial.done} of {partial.inputs} images done "
             f"({rows} rows written, {skipped} skipped), {partial.inputs - partial.done} to go; {state}"]
    lines += [f"  layer {layer}: dimension {dim}" for layer, dim in partial.dims.items()]
    for key in ("model", "weights", "preprocess", "options", "source", "created"):
        value = partial.attrs.get(key)
        lines.append(f"  {key}: {json.dumps(value) if isinstance(value, (dict, list)) else value}")
    return lines


def _describe_run(path: Path) -> list[str]:
    from alexfeat.trainers.run_dir import RunDir

    run = RunDir.open(path)
    config, rows = run.config(), run.metrics()
    what = config.model if config.mode == "scratch" else f"{config.model} from {config.weights}"
    lines = [f"{config.mode} run {path}: {what}, {len(rows)} epoch(s) done of {config.epochs}"
             + (f" (layer-wise, round {rows[-1]['round'] if rows else 0})" if config.layerwise else "")
             + (f", weights averaged from epoch {config.swa_from} at lr {config.averaging_lr:g}"
                if config.swa_from else "")]
    lines += _best_and_last(rows)
    for checkpoint in run.checkpoints():
        lines.append(f"  {checkpoint.name}: {checkpoint.stat().st_size / 1e6:.1f} MB")
    lines.append(f"  settings: {run.config_path}; metrics: {run.metrics_path}")
    return lines


def _best_and_last(rows: list[dict]) -> list[str]:
    """Which epoch best.pt holds and its scores, then each split's last accuracy, and a higher test
    accuracy at another epoch labelled as not best.pt's. From metrics.csv (no torch), by the trainer's
    rule: the first epoch of the highest validation accuracy, or test accuracy without a validation split."""
    metric = "val_acc" if any(r.get("val_acc") is not None for r in rows) else "test_acc"
    scored = [r for r in rows if r.get(metric) is not None]
    if not scored:
        return []
    best = max(scored, key=lambda r: r[metric])
    chosen = "validation" if metric == "val_acc" else "test (no --val-split: an optimistic choice)"
    lines = [f"  best.pt: epoch {best['epoch']}, chosen by {chosen} accuracy {best[metric]:.4f}"
             + (f"; its test accuracy {best['test_acc']:.4f}"
                if metric == "val_acc" and best.get("test_acc") is not None else "")]
    for split in ("val", "test"):
        key = f"{split}_acc"
        done = [r for r in rows if r.get(key) is not None]
        if done:
            peak = max(done, key=lambda r: r[key])
            higher = best.get(key) is None or peak[key] > best[key]
            lines.append(f"  {split} accuracy: last {done[-1][key]:.4f}"
                         + (f"; peak {peak[key]:.4f} at epoch {peak['epoch']} (not what best.pt holds)"
                            if higher else ""))
    return lines


def _describe_model(path: Path) -> list[str]:
    meta = ClassifierModel.load(path).meta
    lines = [f"classifier {path}: {meta['kind']} on {meta['layer']} ({meta['dim']} dims, scale {meta['scale']})",
             f"  classes: {', '.join(meta['classes'])}",
             f"  trained on {meta['n_train']} rows of {meta['store']} in {meta['fit_seconds']} s",
             f"  featurizer: model {meta['featurizer']['model']}, weights {meta['featurizer']['weights']}",
             f"  preprocess: {json.dumps(meta['featurizer']['preprocess'])}",
             f"  params: {json.dumps(meta['params'])}"]
    if meta.get("cv"):
        lines.append(f"  search: best {meta['cv']['best_params']} with cv accuracy {meta['cv']['best_score']:.4f} "
                     f"({meta['cv']['folds']} folds)")
    if meta.get("streaming"):
        st = meta["streaming"]
        lines.append(f"  streaming fit ({st['reason']}): {meta['best_epochs']} epochs, held-out accuracy "
                     f"{st['holdout_accuracy']:.4f} on {st['holdout_rows']} rows" + (f", PCA to {st['pca']}"
                                                                                       if st["pca"] else ""))
    if meta.get("val"):
        lines.append(f"  validation accuracy {meta['val']['accuracy']:.4f} on {meta['val']['n']} rows")
    lines.append(f"  versions: {json.dumps(meta['versions'])}; created {meta['created']}")
    return lines


def _describe_checkpoint(path: Path) -> list[str]:
    from alexfeat.featurizer.checkpoint import load_checkpoint

    data = load_checkpoint(path)
    if "arch" not in data:
        n = sum(getattr(v, "numel", lambda: 0)() for v in data["state_dict"].values())
        return [f"plain state dict {path}: {len(data['state_dict'])} tensors, {n:,} values"]
    lines = [f"checkpoint {path}: {json.dumps(data['arch'])}",
             f"  classes: {', '.join(data.get('classes', []))}",
             f"  preprocess: {json.dumps(data.get('preprocess', {}))}"]
    for key in ("epoch", "round", "metrics"):
        if key in data:
            lines.append(f"  {key}: {json.dumps(data[key])}")
    swa_from = (data.get("config") or {}).get("swa_from") or 0
    if swa_from and data.get("epoch", 0) >= swa_from:
        epochs = f"epochs {swa_from}-{data['epoch']}" if data["epoch"] > swa_from else f"epoch {swa_from}"
        lines.append(f"  weights: the mean of those after {epochs} (--swa-from)")
    return lines
