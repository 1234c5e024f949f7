"""Training: the MSeg recipe (HRNet/PSPNet, SGD + poly LR, the original augmentation) on torch DDP.

Layout, in the order a run uses it: ``config`` (YAML -> dataclasses, ``--set`` overrides, checks), ``data``
(datasets and the balanced loader), ``optim`` (parameter groups, poly LR), ``objectives`` (what a step minimises:
the cross-entropy with its options ``class_weights`` and ``ohem``, and the paper's two baselines ``mgda``, with its
solver ``min_norm``, and ``ccsa``), ``startup`` (checks, resume point, model and optimizer), ``validation``
(periodic mIoU), ``checkpoints`` (original layout + safetensors, resume), ``logs`` (CSV, TensorBoard, progress),
``loop`` (:func:`train`, which runs a ``Trainer``). Processes and devices are :mod:`mseg_semantic.distributed`'s.

>>> from mseg_semantic.training import load_train_config, train
>>> name, config = load_train_config("camvid11", ["batch_size=4"], data_root="camvid11/")  # doctest: +SKIP
>>> train(config, "runs/camvid11")                                                          # doctest: +SKIP
"""

from mseg_semantic.training.config import (
    CCSAConfig,
    CheckpointConfig,
    DatasetConfig,
    LossConfig,
    ModelConfig,
    OHEMConfig,
    OptimConfig,
    TrainConfig,
    TransformConfig,
    ValConfig,
    config_from_dict,
    config_to_dict,
    iteration_count,
    list_train_configs,
    load_train_config,
)
from mseg_semantic.training.loop import TrainResult, train
from mseg_semantic.training.optim import poly_lr

__all__ = [
    "CCSAConfig",
    "CheckpointConfig",
    "DatasetConfig",
    "LossConfig",
    "ModelConfig",
    "OHEMConfig",
    "OptimConfig",
    "TrainConfig",
    "TrainResult",
    "TransformConfig",
    "ValConfig",
    "config_from_dict",
    "config_to_dict",
    "iteration_count",
    "list_train_configs",
    "load_train_config",
    "poly_lr",
    "train",
]
