"""Data: the Sample record, dataset readers for the real layouts, and the synthetic RefShapes."""

from refbench.data.sample import Dataset, Sample

__all__ = ["Dataset", "Sample"]
