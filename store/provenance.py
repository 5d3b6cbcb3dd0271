"""What a store's features are: the one writer and the one reader of a store's provenance attributes.

A store records how its features were made (network, weights, preprocessing, layers, pooling, type)
and what its rows are (classes, source). Parts of one store must agree on it, and a classifier
records it and refuses features made otherwise. A new field is one field here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

import numpy as np

from alexfeat.store.weights_id import WeightsId

__all__ = ["Provenance", "FEATURE_KEYS", "STORE_KEYS"]

# What makes two stores' features comparable: a classifier checks a store against these, and its
# model file records them (with the layers).
FEATURE_KEYS = ("model", "weights", "preprocess", "options", "tta")
# What the parts of one store must share.
STORE_KEYS = ("model", "weights", "preprocess", "layers", "classes", "options", "precision", "tta")
# Fields stored as JSON text in the HDF5 attributes.
_JSON = ("classes", "layers", "preprocess", "options", "pooling", "part")


@dataclass(frozen=True)
class Provenance:
    """A store's provenance. ``options`` holds pool, dtype and the network's ``arch`` (a dict);
    ``pooling`` what --pool did to each layer; ``tta`` the test-time augmentation averaged into every
    feature (``alexfeat.choices.TTAS``; stores older than it read as "none"); ``part`` a part's place in
    its run; ``merged_*`` where a merged store came from. Unknown attributes of newer files are kept in
    ``extra``."""

    model: str = ""
    weights: str = ""
    layers: tuple[str, ...] = ()
    preprocess: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    pooling: dict = field(default_factory=dict)
    precision: str = "fp32"  # what the network computed in ("fp32" or "bf16"); stores without it are fp32
    tta: str = "none"
    classes: tuple[str, ...] = ()
    source: str = ""
    decode: str | None = None
    alexfeat_version: str | None = None
    torch_version: str | None = None
    part: dict | None = None
    merged_from: str | None = None
    merged_parts: int | None = None
    created: str | None = None  # written by the store writer, when the store is created
    extra: dict = field(default_factory=dict)

    @property
    def dtype(self) -> str:
        return self.options.get("dtype", "float32")

    @property
    def arch(self) -> dict:
        return self.options.get("arch", {})

    def to_attrs(self) -> dict[str, Any]:
        """The HDF5 attributes: JSON fields encoded (``preprocess`` with sorted keys), unset ones left out."""
        attrs: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("extra", "created") or value is None:
                continue
            if f.name in _JSON:
                value = json.dumps(list(value) if isinstance(value, tuple) else value,
                                   sort_keys=f.name == "preprocess")
            attrs[f.name] = value
        return {**attrs, **self.extra}

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> "Provenance":
        """Read HDF5 attributes (as stored, or already decoded); ``complete`` is the reader's business."""
        known = {f.name for f in fields(cls)} - {"extra"}
        values: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in attrs.items():
            if isinstance(value, np.generic):
                value = value.item()
            if key in _JSON and isinstance(value, (str, bytes)):
                value = json.loads(value)
            if key in ("classes", "layers") and value is not None:
                value = tuple(value)
            if key in known:
                values[key] = value
            elif key != "complete":
                extra[key] = value
        return cls(**values, extra=extra)

    def as_dict(self) -> dict[str, Any]:
        """Every recorded field, decoded (lists for tuples): what ``info`` prints and a model file records."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        out = {k: list(v) if isinstance(v, tuple) else v for k, v in out.items() if v is not None}
        return {**out, **self.extra}

    def feature_settings(self) -> dict[str, Any]:
        """What a classifier's model file records of its training store (``FEATURE_KEYS``, the layers and the
        precision, which predict on images compares with its own but does not refuse: docs/precision.md)."""
        d = self.as_dict()
        return {key: d.get(key) for key in (*FEATURE_KEYS, "layers", "precision")}

    def differences(self, expected: Mapping[str, Any], keys: tuple[str, ...] = FEATURE_KEYS) -> list[str]:
        """``key=THIS (the model expects EXPECTED)`` for each of ``keys`` where this store differs from
        ``expected`` (a model file's record); nested dicts compared entry by entry, renamed weights files
        with the same sha256 equal. A key an older record lacks means its field's default, as in a store."""
        mine = self.as_dict()
        return [d for key in keys for d in _differences(key, expected.get(key, _default(key)), mine.get(key))]

    def mismatch(self, other: "Provenance", keys: tuple[str, ...] = STORE_KEYS) -> tuple[str, Any, Any] | None:
        """The first of ``keys`` where ``other`` differs: (key, other's, this one's), else None."""
        mine, theirs = self.as_dict(), other.as_dict()
        for key in keys:
            if theirs.get(key) != mine.get(key):
                return key, theirs.get(key), mine.get(key)
        return None


def _default(key: str) -> Any:
    """The default of the field ``key`` where it is a plain value (``tta``: "none"), else None."""
    f = next((f for f in fields(Provenance) if f.name == key), None)
    return f.default if f is not None and isinstance(f.default, (str, int, float)) else None


def _differences(key: str, want: Any, got: Any) -> list[str]:
    if isinstance(want, dict) and isinstance(got, dict):
        return [d for k in sorted(set(want) | set(got)) for d in _differences(f"{key}.{k}", want.get(k), got.get(k))]
    if key == "weights" and isinstance(want, str) and isinstance(got, str) \
            and WeightsId.parse(want) == WeightsId.parse(got):  # a renamed copy is the same weights
        return []
    return [] if want == got else [f"{key}={got!r} (the model expects {want!r})"]
