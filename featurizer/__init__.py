"""Turn folders of images into CNN features stored in HDF5."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("alexfeat")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

from featurizer.errors import AlexfeatError
from featurizer.store import FeatureStore

__all__ = ["__version__", "AlexfeatError", "FeatureStore"]
