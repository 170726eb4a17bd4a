"""Training: LLaVA-format data, labels derived from the rendered templates, batching (see data.py, labels.py,
collate.py)."""

from .collate import LengthGroupedSampler, collate
from .data import MixedDataset, SupervisedDataset, build_dataset
from .labels import SampleError, encode_sample

__all__ = [
    "LengthGroupedSampler",
    "MixedDataset",
    "SampleError",
    "SupervisedDataset",
    "build_dataset",
    "collate",
    "encode_sample",
]
