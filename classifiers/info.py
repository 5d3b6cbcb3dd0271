"""One-screen summaries of the files alexfeat writes."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from alexfeat.classifiers.model_file import ClassifierModel
from alexfeat.featurizer.errors import AlexfeatError
from alexfeat.featurizer.store import FeatureStore

__all__ = ["describe"]


def describe(path: Path) -> list[str]:
    """Lines describing a store (.h5 or a folder of parts), a classifier model (.joblib) or a checkpoint (.pt)."""
    path = Path(path)
    if not path.exists():
        raise AlexfeatError(f"{path} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5") or path.is_dir():
        return _describe_store(path)
    if suffix == ".joblib":
        return _describe_model(path)
    if suffix in (".pt", ".pth"):
        return _describe_checkpoint(path)
    raise AlexfeatError(f"{path}: info reads .h5 stores, .joblib models and .pt checkpoints")


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
    return lines
