"""The choice lists of settings several stages share, defined once for the core's checks and the CLI's options.

No torch here: the command line builds its choices from these tuples and must answer --help at once.
"""

from __future__ import annotations

from alexfeat.errors import AlexfeatError

__all__ = ["POOLS", "DTYPES", "DEVICES", "DECODES", "ENGINES", "COMPRESSIONS", "RESIZE_MODES", "TTAS", "PRECISIONS",
           "check_choice"]

POOLS = ("none", "avg", "max")  # reduce convolutional maps over space
DTYPES = ("float32", "float16")  # stored feature type
DEVICES = ("auto", "cpu", "cuda")
DECODES = ("auto", "cpu", "gpu")  # where JPEGs are decoded
ENGINES = ("local", "ray")
COMPRESSIONS = ("none", "lzf", "gzip")  # HDF5 compression of the features
RESIZE_MODES = ("crop", "pad")  # centre crop, or pad to keep the aspect ratio
TTAS = ("none", "flip")  # test-time augmentation: of a checkpoint's predictions, of a store's features
# What the network computes in; featurizer.device.resolve_precision is the one rule for "auto" and for the
# default (None: bf16 on CUDA, fp32 on the CPU).
PRECISIONS = ("auto", "fp32", "bf16")


def check_choice(option: str, value: str, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``, else AlexfeatError naming ``option`` and the choices."""
    if value not in choices:
        raise AlexfeatError(f"unknown {option} {value!r}: use {', '.join(choices)}")
    return value
