"""Datasets: the original split lists (shipped with the package), list files of your own, image/label reading."""

from mseg_semantic.data.dataset import SegmentationDataset, read_sample
from mseg_semantic.data.lists import DATASET_FOLDERS, ListEntry, available_splits, dataset_root, read_list

__all__ = [
    "DATASET_FOLDERS",
    "ListEntry",
    "SegmentationDataset",
    "available_splits",
    "dataset_root",
    "read_list",
    "read_sample",
]
