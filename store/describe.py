"""One-screen summaries of a store, a folder of parts, or an unfinished run's ``OUT.partial`` (``alexfeat info``)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from alexfeat.lock import RunLock
from alexfeat.store.paths import lock_path, partial_path
from alexfeat.store.reader import FeatureStore

__all__ = ["describe_store", "describe_partial"]


def describe_store(path: Path) -> list[str]:
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
        for key in ("model", "weights", "preprocess", "options", "precision", "tta", "source", "created",
                    "alexfeat_version"):
            value = getattr(store.provenance, key) if key in ("precision", "tta") else attrs.get(key)  # old: defaults
            lines.append(f"  {key}: {json.dumps(value) if isinstance(value, (dict, list)) else value}")
    return lines


def describe_partial(out: Path) -> list[str]:
    partial = FeatureStore.read_partial(out)
    progress = partial.progress
    rows, skipped = (progress.rows, len(progress.skipped)) if progress else (0, 0)
    state = ("a featurize run is writing it now" if RunLock.is_held(lock_path(out)) else
             "interrupted: run the same featurize command with --resume to finish it")
    lines = [f"unfinished feature store {partial_path(out)}: {partial.done} of {partial.inputs} images done "
             f"({rows} rows written, {skipped} skipped), {partial.inputs - partial.done} to go; {state}"]
    lines += [f"  layer {layer}: dimension {dim}" for layer, dim in partial.dims.items()]
    for key in ("model", "weights", "preprocess", "options", "precision", "tta", "source", "created"):
        value = partial.provenance.as_dict().get(key)
        lines.append(f"  {key}: {json.dumps(value) if isinstance(value, (dict, list)) else value}")
    return lines
