"""The identity of a network's weights, as stores and models record it (torch-free)."""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["WeightsId"]

_FILE = re.compile(r"file:(?P<name>.*) sha256:(?P<sha256>[0-9a-f]{64})")
_NONE = re.compile(r"none\(seed=(?P<seed>-?\d+)\)")


@dataclass(frozen=True, eq=False)
class WeightsId:
    """``kind`` "file" (identity: the sha256; ``name`` is only shown), "none" (random init: the
    seed) or "pretrained" (the framework's weights tag, e.g. AlexNet_Weights.IMAGENET1K_V1).

    ``str`` gives the text stored in feature stores and models; ``parse`` reads it back, so
    stores written before this class keep working.
    """

    kind: str
    name: str = ""
    sha256: str | None = None
    seed: int | None = None

    @classmethod
    def file(cls, name: str, sha256: str) -> "WeightsId":
        return cls("file", name, sha256=sha256)

    @classmethod
    def random(cls, seed: int) -> "WeightsId":
        return cls("none", seed=seed)

    @classmethod
    def pretrained(cls, tag: str) -> "WeightsId":
        return cls("pretrained", tag)

    @classmethod
    def parse(cls, text: str) -> "WeightsId":
        if (m := _FILE.fullmatch(text)):
            return cls.file(m["name"], m["sha256"])
        if (m := _NONE.fullmatch(text)):
            return cls.random(int(m["seed"]))
        return cls.pretrained(text)

    @property
    def _key(self) -> tuple:
        return {"file": ("file", self.sha256), "none": ("none", self.seed)}.get(self.kind, (self.kind, self.name))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WeightsId) and self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __str__(self) -> str:
        if self.kind == "file":
            return f"file:{self.name} sha256:{self.sha256}"
        if self.kind == "none":
            return f"none(seed={self.seed})"
        return self.name
