"""Data sets: loading by name, fast in-memory tensor datasets, locating files on disk."""

from gpd.data.datasets import KNOWN_DATASETS, DataBundle, build_datasets
from gpd.data.synthetic import synthetic_bundle
from gpd.data.tensor_dataset import TensorImageDataset

__all__ = ["KNOWN_DATASETS", "DataBundle", "TensorImageDataset", "build_datasets", "synthetic_bundle"]
