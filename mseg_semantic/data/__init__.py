"""Datasets: the original split lists (shipped with the package), list files of your own, image/label reading,
the training augmentation (and the image degradations it can apply, :mod:`~mseg_semantic.data.degradations`) and
balanced multi-dataset sampling."""

from mseg_semantic.data.dataset import SegmentationDataset, read_sample
from mseg_semantic.data.lists import DATASET_FOLDERS, ListEntry, available_splits, dataset_root, read_list
from mseg_semantic.data.sampling import BalancedBatchSampler, KeyedDataset, SampleKey
from mseg_semantic.data.transforms import (
    Augmentation,
    ColorJitter,
    Haze,
    HoodOcclusion,
    JpegArtefacts,
    LabelMapper,
    Perspective,
    TrainTransform,
    eval_transform,
)

__all__ = [
    "DATASET_FOLDERS",
    "Augmentation",
    "BalancedBatchSampler",
    "ColorJitter",
    "Haze",
    "HoodOcclusion",
    "JpegArtefacts",
    "KeyedDataset",
    "LabelMapper",
    "ListEntry",
    "Perspective",
    "SampleKey",
    "SegmentationDataset",
    "TrainTransform",
    "available_splits",
    "dataset_root",
    "eval_transform",
    "read_list",
    "read_sample",
]
