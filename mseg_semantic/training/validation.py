"""Periodic validation during training: mIoU on each dataset's val list, in the taxonomy being trained.

A quick monitor, not the evaluation protocol: each whole image (short side resized to ``val.short_size``) goes
through the model once, without sliding windows, scales or flips, and the logits are resized to the label map.
``mseg eval`` gives the published numbers. The images are split over the processes and the confusion matrices
summed, so validation costs each process 1/N of the list.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mseg_semantic.data import LabelMapper, eval_transform, read_sample
from mseg_semantic.distributed import ProcessContext, all_reduce_sum
from mseg_semantic.evaluation import ConfusionMatrix
from mseg_semantic.precision import autocast
from mseg_semantic.taxonomy import unproducible_classes
from mseg_semantic.training.config import TrainConfig
from mseg_semantic.training.data import PreparedDataset, label_target


@torch.no_grad()
def validate(
    model: nn.Module, config: TrainConfig, datasets: Sequence[PreparedDataset], ctx: ProcessContext
) -> dict[str, float]:
    """mIoU in [0, 1] per dataset with a val list (classes the dataset cannot produce excluded)."""
    was_training = model.training
    model.eval()
    short_size = config.val.short_size or config.transform.short_size
    results = {}
    try:
        for dataset in datasets:
            if not dataset.val:
                continue
            name = dataset.config.name
            entries = dataset.val[: config.val.max_images] if config.val.max_images else dataset.val
            mapper = LabelMapper(name, label_target(config))
            matrix = ConfusionMatrix(config.num_classes)
            for entry in entries[ctx.rank :: ctx.world_size]:
                image, label = read_sample(entry, name)
                batch = eval_transform(image, short_size).unsqueeze(0).to(ctx.device)
                if config.channels_last:
                    batch = batch.contiguous(memory_format=torch.channels_last)
                with autocast(ctx.device, config.precision):
                    logits = model(batch)
                if isinstance(logits, tuple):
                    logits = logits[0]
                logits = F.interpolate(logits.float(), size=label.shape, mode="bilinear", align_corners=False)
                matrix.update(logits.argmax(1)[0].cpu(), mapper(torch.from_numpy(label)))
            matrix.load_state(all_reduce_sum(matrix.state()))
            excluded = unproducible_classes(name, config.model_taxonomy)  # as `mseg eval` leaves out
            results[name] = matrix.metrics(excluded=excluded).mean_iou
    finally:
        model.train(was_training)
    return results
