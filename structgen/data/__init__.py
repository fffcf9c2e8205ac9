"""Datasets by name (uint8 arrays from standard files) and the in-memory batch loader."""
from structgen.errors import DataError
from structgen.data.memory_loader import TensorLoader
from structgen.data.registry import (DATASETS, SPLITS, ImageSet, dataset_shape, format_summary,
                                     load_split, resolve_data_dir, summarize)

__all__ = ["DataError", "TensorLoader", "DATASETS", "SPLITS", "ImageSet", "dataset_shape",
           "format_summary", "load_split", "resolve_data_dir", "summarize"]
