"""The original optimiser: SGD with momentum, per-iteration poly LR decay, 10x LR on PSPNet's head.

HRNet: one parameter group at ``base_lr`` (weight decay on every parameter, BN and biases included, as the
original). PSPNet: one group per module in the original order ``layer0..layer4`` (``base_lr``), ``ppm``, ``cls``,
``aux`` (``head_lr_mult * base_lr``). Each group records its factor as ``lr_mult`` so that setting the LR needs no
knowledge of the model, and a resumed optimizer carries it along.
"""

from __future__ import annotations

import torch
from torch import nn

#: PSPNet's modules, backbone first, as the original's eight parameter groups.
PSPNET_BACKBONE = ("layer0", "layer1", "layer2", "layer3", "layer4")
PSPNET_HEAD = ("ppm", "cls", "aux")


def parameter_groups(model: nn.Module, head_lr_mult: float) -> list[dict]:
    """Parameter groups with their ``lr_mult``; PSPNet split as the original, everything else one group."""
    if all(hasattr(model, name) for name in PSPNET_BACKBONE + PSPNET_HEAD):
        groups = [{"params": _trainable(getattr(model, n)), "lr_mult": 1.0, "name": n} for n in PSPNET_BACKBONE]
        groups += [{"params": _trainable(getattr(model, n)), "lr_mult": head_lr_mult, "name": n} for n in PSPNET_HEAD]
        covered = sum(len(g["params"]) for g in groups)
        if covered != len(_trainable(model)):
            raise RuntimeError("PSPNet has trainable parameters outside layer0..4, ppm, cls and aux")
        return groups
    return [{"params": _trainable(model), "lr_mult": 1.0, "name": "all"}]


def _trainable(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def build_optimizer(
    model: nn.Module, base_lr: float, momentum: float, weight_decay: float, head_lr_mult: float
) -> torch.optim.SGD:
    groups = parameter_groups(model, head_lr_mult)
    for group in groups:
        group["lr"] = base_lr * group["lr_mult"]
    return torch.optim.SGD(groups, lr=base_lr, momentum=momentum, weight_decay=weight_decay)


def poly_lr(base_lr: float, iteration: int, max_iters: int, power: float) -> float:
    """``base_lr * (1 - iteration / max_iters) ** power``: the LR of the step after ``iteration`` steps.

    The original updates the LR after each step from the steps done so far, so the first step uses ``base_lr``.
    """
    return base_lr * max(0.0, 1.0 - iteration / max_iters) ** power


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's LR to ``lr`` times its ``lr_mult``."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
