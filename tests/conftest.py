"""Shared test fixtures: where the optional reference data lives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Tiny test models gain nothing from several threads, and OpenMP threads that wait on each other slow down by
# orders of magnitude when other processes load the cores. MSEG_TEST_THREADS overrides.
torch.set_num_threads(int(os.environ.get("MSEG_TEST_THREADS", "1")))

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared() -> Path:
    """The project's sibling ``shared/`` folder (reference data, real images); skips the test without it."""
    if not SHARED.is_dir():
        pytest.skip("reference data folder ../shared is not available")
    return SHARED


@pytest.fixture(scope="session")
def mseg_api(shared: Path) -> Path:
    path = shared / "reference" / "mseg-api" / "mseg"
    if not path.is_dir():
        pytest.skip("../shared/reference/mseg-api is not available")
    return path


# The tiny HRNet of ../shared/reference/tiny_hrnet (widths 8/16/32/64), written out so tests need no files.
TINY_HRNET = {
    "FINAL_CONV_KERNEL": 1,
    "STAGE1": {"NUM_MODULES": 1, "NUM_BRANCHES": 1, "BLOCK": "BOTTLENECK", "NUM_BLOCKS": [2], "NUM_CHANNELS": [8]},
    "STAGE2": {"NUM_MODULES": 1, "NUM_BRANCHES": 2, "BLOCK": "BASIC", "NUM_BLOCKS": [1, 1], "NUM_CHANNELS": [8, 16]},
    "STAGE3": {
        "NUM_MODULES": 2, "NUM_BRANCHES": 3, "BLOCK": "BASIC", "NUM_BLOCKS": [1, 1, 1], "NUM_CHANNELS": [8, 16, 32],
    },
    "STAGE4": {
        "NUM_MODULES": 1, "NUM_BRANCHES": 4, "BLOCK": "BASIC", "NUM_BLOCKS": [2, 2, 2, 2],
        "NUM_CHANNELS": [8, 16, 32, 64],
    },
}  # fmt: skip


def tiny_hrnet(num_classes: int, seed: int = 0):
    """A randomly initialised tiny HRNet in eval mode (BN statistics made non-trivial by one train pass)."""
    import torch

    from mseg_semantic.models import build_model

    torch.manual_seed(seed)
    model = build_model("hrnet", num_classes=num_classes, config=TINY_HRNET)
    with torch.no_grad():
        model.train()
        model(torch.randn(2, 3, 65, 65) * 50)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny universal (194-class) HRNet saved as .safetensors, as `mseg convert` would write it."""
    from mseg_semantic.models import save_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "tiny194.safetensors"
    save_checkpoint(tiny_hrnet(194), path, taxonomy="universal")
    return path
