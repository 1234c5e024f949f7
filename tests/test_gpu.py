"""GPU checks: inference precisions, the fast path and window batching on CUDA, sharded evaluation with NCCL and
mixed-precision training, all against the CPU or the faithful CUDA path on real images.

Every test here is marked ``gpu`` and skips without CUDA; ``bash benchmarks/gpu_check.sh OUTDIR`` runs them on a
GPU machine (``pytest -m gpu``), with the benchmarks. Models are the bundled trained ``camvid11-compact`` (agreement
figures mean something only for a trained network) and, for training, the tiny HRNet of ``conftest.py``. Images:
the demo photos and every 10th CamVid val image, as ``benchmarks/inference.py`` measures agreement.

A Segmenter moves the module it is given to its device in place, so every Segmenter here loads its own copy of
the model (by name) instead of sharing one module between CPU and CUDA.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY_HRNET, failure, run_mseg

from mseg_semantic import Segmenter
from mseg_semantic.fileio import read_image, read_label
from mseg_semantic.training import config_from_dict, train
from mseg_semantic.training.checkpoints import load_training_checkpoint
from mseg_semantic.zoo import load_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

MODEL = "camvid11-compact"  # ships with the package: no download
PRESETS = ("compact_360_ss", "360_ms")  # the model's own (one or two windows), and the paper's multi-scale demo
#: GPUs used by the torchrun checks: NCCL needs one GPU per process, so one GPU shards over one process.
GPUS = min(2, torch.cuda.device_count()) if torch.cuda.is_available() else 0


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape and a.dtype == b.dtype
    return 100.0 * float((a == b).mean())


@pytest.fixture(scope="module")
def camvid(camvid11: Path) -> Path:
    return camvid11


def list_lines(camvid: Path, split: str) -> list[str]:
    return [line for line in (camvid / f"{split}.txt").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def images(example_photos: Path, camvid: Path) -> dict[str, np.ndarray]:
    """The photos made from the bundled examples (640x480 to 1280x720) and every 10th CamVid val frame (480x360),
    RGB."""
    demo = sorted(example_photos.iterdir())
    val = [camvid / line.split()[0] for line in list_lines(camvid, "val")[::10]]
    paths = demo + val
    assert len(demo) >= 3 and len(val) >= 5, paths
    return {p.name: read_image(p) for p in paths}


def predict_all(images: dict[str, np.ndarray], **settings) -> dict[str, np.ndarray]:
    seg = Segmenter(MODEL, **settings)
    return {name: seg.predict(image) for name, image in images.items()}


@pytest.fixture(scope="module")
def cuda_fp32(images) -> dict[str, dict[str, np.ndarray]]:
    """Faithful fp32 label maps on CUDA, per preset."""
    return {preset: predict_all(images, config=preset, device="cuda") for preset in PRESETS}


def check_agreement(labels: dict[str, np.ndarray], expected: dict[str, np.ndarray], threshold: float, what: str):
    scores = {name: agreement(labels[name], expected[name]) for name in expected}
    worst = min(scores, key=scores.get)
    print(f"{what}: mean {np.mean(list(scores.values())):.3f}%, worst {scores[worst]:.3f}% ({worst})")
    assert scores[worst] >= threshold, f"{what}: {scores[worst]:.3f}% on {worst} (all: {scores})"


# ---------------------------------------------------------------------------- inference on CUDA
def test_cuda_fp32_equals_the_cpu(images, cuda_fp32):
    """The faithful path on CUDA (cuDNN, TF32 convolutions where PyTorch allows them) gives the CPU's labels."""
    cuda = cuda_fp32["compact_360_ss"]
    for name, labels in cuda.items():
        assert labels.shape == images[name].shape[:2] and labels.dtype == np.uint8
        assert len(np.unique(labels)) >= 3, name  # a one-class map would agree with anything
        assert labels.max() < 11
    cpu = predict_all(images, config="compact_360_ss", device="cpu")
    check_agreement(cuda, cpu, 99.9, "fp32 cuda vs cpu, compact_360_ss")


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("preset", PRESETS)
def test_half_precisions_agree_with_fp32(images, cuda_fp32, preset, precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    seg = Segmenter(MODEL, config=preset, device="cuda", precision=precision)
    assert seg.precision == precision
    labels = {name: seg.predict(image) for name, image in images.items()}
    check_agreement(labels, cuda_fp32[preset], 99.0, f"{precision} vs fp32 on cuda, {preset}")


@pytest.mark.parametrize("preset", PRESETS)
def test_fast_path_agrees_with_the_faithful_path(images, cuda_fp32, preset):
    seg = Segmenter(MODEL, config=preset, device="cuda", fast=True)
    # auto precision on a GPU: bf16 where it computes it natively (Ampere and later), else fp16.
    assert seg.precision == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    labels = {name: seg.predict(image) for name, image in images.items()}
    check_agreement(labels, cuda_fp32[preset], 99.0, f"fast vs faithful on cuda, {preset}")
    probs = seg.predict_proba(next(iter(images.values())))
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=2e-3)


def test_batched_windows_give_the_same_labels(images, cuda_fp32):
    """Several windows (and their flips) per forward pass: the labels of one window at a time, for one image and
    for several images sharing passes (``predict_batch``)."""
    large = {name: image for name, image in images.items() if min(image.shape[:2]) >= 480}
    assert len(large) >= 3
    one = Segmenter(MODEL, config="360_ms", device="cuda", batch_windows=1)
    four = Segmenter(MODEL, config="360_ms", device="cuda", batch_windows=4)
    grids = four.window_grids(*next(iter(large.values())).shape[:2])
    assert sum(len(g.ys) * len(g.xs) for g in grids) > 4  # several forward passes of 4 windows
    single = {name: one.predict(image) for name, image in large.items()}
    check_agreement(single, {name: cuda_fp32["360_ms"][name] for name in large}, 99.99, "batch_windows=1 again")
    batched = {name: four.predict(image) for name, image in large.items()}
    check_agreement(batched, single, 99.99, "batch_windows=4 vs 1, 360_ms")
    names = list(images)
    together = dict(zip(names, four.predict_batch([images[n] for n in names]), strict=True))
    reference = {name: one.predict(images[name]) for name in names}
    check_agreement(together, reference, 99.99, f"predict_batch of {len(names)} images, batch_windows=4, 360_ms")
    # The compact preset's 360x480 windows, a large frame cut into several of them.
    wide = max(large.values(), key=lambda image: image.shape[1])
    labels = [Segmenter(MODEL, device="cuda", batch_windows=b, base_size=720).predict(wide) for b in (1, 4)]
    assert agreement(labels[0], labels[1]) >= 99.99


# ---------------------------------------------------------------------------- evaluation sharded with NCCL
def test_sharded_cuda_evaluation_equals_the_cpu(camvid, tmp_path):
    """``mseg eval`` under torchrun on CUDA (NCCL when there are several GPUs: one process per GPU) scores as one
    CPU process does. On a one-GPU machine the single process makes no process group: the run checks the
    torchrun environment and ``--device cuda`` (``cuda:LOCAL_RANK``), not NCCL's collectives."""
    lst = tmp_path / "val10.txt"
    lst.write_text("\n".join(list_lines(camvid, "val")[:10]) + "\n")
    common = ["eval", "--model", MODEL, "--dataset", "camvid-11", "--data-root", str(camvid), "--list", str(lst),
              "--quiet"]  # fmt: skip
    cpu = run_mseg(1, *common, "--out", str(tmp_path / "cpu"), "--device", "cpu", timeout=300)
    assert cpu.returncode == 0, failure(cpu)
    gpu = run_mseg(GPUS, *common, "--out", str(tmp_path / "gpu"), "--device", "cuda", timeout=300, threads=4)
    assert gpu.returncode == 0, failure(gpu)
    assert f"{GPUS} process(es)" in gpu.stdout + gpu.stderr
    one = json.loads((tmp_path / "cpu" / "metrics.json").read_text())
    sharded = json.loads((tmp_path / "gpu" / "metrics.json").read_text())
    assert one["num_images"] == sharded["num_images"] == 10
    assert abs(one["mIoU"] - sharded["mIoU"]) <= 0.1, (one["mIoU"], sharded["mIoU"])  # percent: 1e-3 as a fraction
    assert abs(one["pixel_accuracy"] - sharded["pixel_accuracy"]) <= 0.1
    for path in sorted((tmp_path / "cpu" / "gray").glob("*.png")):
        assert agreement(read_label(tmp_path / "gpu" / "gray" / path.name), read_label(path)) >= 99.9, path.name


# ---------------------------------------------------------------------------- training with AMP
def tiny_training_config(camvid: Path, folder: Path, precision: str, max_iters: int, **changes) -> dict:
    train_list, val_list = folder / "train.txt", folder / "val.txt"
    train_list.write_text("\n".join(list_lines(camvid, "train")[:8]) + "\n")
    val_list.write_text("\n".join(list_lines(camvid, "val")[:2]) + "\n")
    config = {
        "datasets": [{"name": "camvid-11", "root": str(camvid), "train_list": str(train_list),
                      "val_list": str(val_list)}],
        "taxonomy": "own",
        "batch_size": 4,
        "max_iters": max_iters,
        "model": {"arch": "hrnet", "hrnet": TINY_HRNET},
        "transform": {"short_size": 180, "crop": [160, 224]},
        "optim": {"base_lr": 0.02},
        "precision": precision,
        "channels_last": precision == "bf16",
        "device": "cuda",
        "workers": 2,
        "log_every": 1,
        "checkpoint": {"every": 2, "keep": 2},
        "val": {"every": 4, "short_size": 180},
    }  # fmt: skip
    config.update(changes)
    return config


def read_log(out: Path) -> list[dict[str, str]]:
    with (out / "log.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training_runs_and_resumes(camvid, tmp_path, precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    out = tmp_path / "run"
    messages: list[str] = []
    result = train(config_from_dict(tiny_training_config(camvid, tmp_path, precision, 4)), out, progress=False,
                   log=messages.append)  # fmt: skip
    assert any("on cuda" in m and precision in m for m in messages), messages
    assert result.iterations == 4 and result.last_loss is not None and math.isfinite(result.last_loss)
    rows = read_log(out)
    assert [int(r["iter"]) for r in rows] == [1, 2, 3, 4]
    assert all(math.isfinite(float(r["loss"])) for r in rows), rows
    assert 0.0 <= float(rows[-1]["val_miou"]) <= 1.0
    state = load_training_checkpoint(out / "checkpoints" / "iter_00000004.pth")
    assert state["current_iter"] == 4
    # fp16 steps through the gradient scaler, whose state is saved for an exact resume; bf16 needs none.
    assert ("scaler" in state) == (precision == "fp16")
    if precision == "fp16":
        assert state["scaler"]["scale"] > 0
    weights = state["state_dict"]
    assert all(v.dtype == torch.float32 for v in weights.values() if v.is_floating_point())  # fp32 master weights
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())

    # Resume the finished run for two more iterations (the checkpoint of iteration 4 is where it starts).
    messages.clear()
    longer = config_from_dict(tiny_training_config(camvid, tmp_path, precision, 6))
    result = train(longer, out, resume=True, progress=False, log=messages.append)
    assert any("resumed from" in m and "iteration 4" in m for m in messages), messages
    assert result.iterations == 6 and math.isfinite(result.last_loss)
    rows = read_log(out)
    assert [int(r["iter"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(float(r["loss"])) for r in rows)
    assert (out / "checkpoints" / "last").read_text().strip() == "iter_00000006.pth"
    model = load_model(out / "model.safetensors")
    assert model.num_classes == 11
    labels = Segmenter(model, config="compact_360_ss", device="cuda", precision=precision).predict(
        read_image(camvid / list_lines(camvid, "val")[0].split()[0])
    )
    assert labels.shape == (360, 480) and labels.max() < 11


@pytest.mark.skipif(GPUS < 2, reason="needs 2 GPUs (DDP over NCCL)")
def test_ddp_training_over_nccl(camvid, tmp_path):
    """Two processes, one GPU each: DistributedDataParallel over NCCL with SyncBatchNorm, through the command line."""
    config = tiny_training_config(camvid, tmp_path, "bf16" if torch.cuda.is_bf16_supported() else "fp16", 3)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    done = run_mseg(2, "train", str(path), "--out", str(tmp_path / "run"), "--quiet", timeout=300, threads=2)
    assert done.returncode == 0, failure(done)
    assert "2 process(es) on cuda" in done.stdout
    rows = read_log(tmp_path / "run")
    assert [int(r["iter"]) for r in rows] == [1, 2, 3] and all(math.isfinite(float(r["loss"])) for r in rows)
    assert load_model(tmp_path / "run" / "model.safetensors").num_classes == 11
