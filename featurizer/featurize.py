"""``featurize``: one entry point that checks the settings and hands the run to its driver."""

from __future__ import annotations

from alexfeat.choices import COMPRESSIONS, DTYPES, ENGINES, PRECISIONS, check_choice
from alexfeat.errors import AlexfeatError
from alexfeat.featurizer.device import resolve_decode, resolve_device
from alexfeat.featurizer.drivers.local import featurize_local
from alexfeat.featurizer.drivers.parts import featurize_parts
from alexfeat.featurizer.run import FeaturizeConfig, FeaturizeResult

__all__ = ["FeaturizeConfig", "FeaturizeResult", "featurize"]


def featurize(config: FeaturizeConfig) -> FeaturizeResult:
    """Run a featurize job described by ``config``; see docs/formats.md for the store format."""
    check_choice("--engine", config.engine, ENGINES)
    check_choice("--dtype", config.dtype, DTYPES)
    check_choice("--compression", config.compression, COMPRESSIONS)
    if config.precision is not None:
        check_choice("--precision", config.precision, PRECISIONS)
    if config.engine == "local":  # refused before any output is made
        resolve_decode(config.decode, resolve_device(config.device))
    if config.engine == "ray" or config.parts is not None:
        if config.resume or config.overwrite:
            raise AlexfeatError("--resume and --overwrite do not apply to --parts: rerunning the command resumes "
                                "it; to start again, use a new --parts folder")
        if config.engine == "ray":
            from alexfeat.featurizer.drivers.ray_engine import featurize_ray  # Ray: only for --engine ray

            return featurize_ray(config)
        return featurize_parts(config)
    return featurize_local(config)
