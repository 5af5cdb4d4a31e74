"""Datasets in the import format (docs/import-format.md): typed records, a validating reader and a
synthetic demo shop. Nothing here imports grpc; services and the CLI build on it."""

from bundlerec.datasets.format import (
    Bundle,
    BundleMembership,
    DatasetError,
    DatasetInfo,
    Event,
    HeldOut,
    Item,
    RowError,
)
from bundlerec.datasets.reader import Dataset, read_dataset

__all__ = [
    "Bundle",
    "BundleMembership",
    "Dataset",
    "DatasetError",
    "DatasetInfo",
    "Event",
    "HeldOut",
    "Item",
    "RowError",
    "read_dataset",
]
