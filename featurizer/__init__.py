"""Turn folders of images into CNN features stored in HDF5."""

from alexfeat import __version__
from alexfeat.featurizer.errors import AlexfeatError
from alexfeat.featurizer.store import FeatureStore

__all__ = ["__version__", "AlexfeatError", "FeatureStore"]
