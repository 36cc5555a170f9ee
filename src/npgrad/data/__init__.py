"""Data: IDX files, named datasets (found locally or downloaded and verified), batching.

Nothing read is trusted: IDX sizes are checked before any allocation (see
:mod:`.idx`), and every :class:`Dataset` validates its labels, splits and shapes
and knows the standard dataset it is by content (``Dataset.family``; see
:mod:`.datasets`).
"""

from .datasets import (
    DATASETS,
    FASHION_MNIST,
    FILES,
    MAX_CLASSES,
    MNIST,
    NAMES,
    Attempt,
    Dataset,
    DatasetSpec,
    FileSpec,
    cache_root,
    check_labels,
    digits,
    download_file,
    fetch,
    is_idx_dir,
    load_dataset,
    locate,
    mirrors_for,
    recognise,
)
from .idx import idx_bytes, idx_header, parse_idx, read_idx, write_idx
from .loader import DataLoader, one_hot, random_shift, split_validation, to_float

__all__ = [
    "DATASETS",
    "FASHION_MNIST",
    "FILES",
    "MAX_CLASSES",
    "MNIST",
    "NAMES",
    "Attempt",
    "DataLoader",
    "Dataset",
    "DatasetSpec",
    "FileSpec",
    "cache_root",
    "check_labels",
    "digits",
    "download_file",
    "fetch",
    "idx_bytes",
    "idx_header",
    "is_idx_dir",
    "load_dataset",
    "locate",
    "mirrors_for",
    "one_hot",
    "parse_idx",
    "random_shift",
    "read_idx",
    "recognise",
    "split_validation",
    "to_float",
    "write_idx",
]
