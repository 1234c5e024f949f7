"""Speed, peak memory and pixel agreement of the faithful and the fast inference paths (run by hand, not in CI).

For HRNet-W48 (194 classes) on the 990x500 demo photo and a 1920x1080 frame, presets 360_ss / 360_ms / 1080_ss,
it prints, per path: seconds per image (median of ``--repeats`` after ``--warmup``), the peak resident memory of a
fresh process running one prediction (weights included), the share of pixels whose label equals the faithful fp32
label map, the network's multiply-accumulates, and the FLOP floor: those MACs divided by this machine's measured
matrix-multiply throughput in the path's precision (how fast the path could be if the network ran at matmul speed
and everything else were free).

    python benchmarks/inference.py --reference              # the README table (about 45 minutes on 2 cores)
    python benchmarks/inference.py --presets 360_ss --images ../shared/data/demo/bike_horses.jpg
    python benchmarks/inference.py --model mseg-3m.pth      # a real checkpoint: agreement then means something

Agreement per setting is also measured with the trained model that ships with the package (camvid11-compact).

Paths: ``faithful`` (the default Segmenter), ``fast`` (``fast=True``), ``fastest`` (``fast=True`` with minimal
padding, whole-image windows and no flip: below 99% agreement), ``reference`` (``mseg_semantic.inference.reference``:
the original algorithm written out literally, one forward per crop and per flip, full-resolution float64
accumulation; for the faithful speed-up).

The model: without ``--model``, a stand-in whose predictions are not degenerate. Weights made by the project's
``make_weights.py`` alone give 1-2 classes per image with saturated probabilities (its random BN statistics do not
normalise anything), so the stand-in re-estimates the BN statistics on 11 CamVid *train* images and fits the final
1x1 classifier as a linear probe on 25 CamVid train images (about 2 minutes; cached in ``--cache``). It predicts
structured CamVid-like classes with top-1 probabilities around 0.5, but its backbone is still random, and random
convolutional networks are far more sensitive to geometry (padding, a one-pixel shift) than trained ones: its
agreement figures for the geometric speed-ups are a pessimistic bound for a trained model.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from machine import cpu_description  # benchmarks/machine.py, beside this script
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mseg_semantic.fileio import read_image, read_label
from mseg_semantic.inference import Segmenter
from mseg_semantic.inference.reference import reference_predict
from mseg_semantic.models import build_model, load_model
from mseg_semantic.normalization import normalize
from mseg_semantic.resizing import resize_short_side
from mseg_semantic.taxonomy import class_names, get_taxonomy

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DEFAULT_IMAGES = [
    SHARED / "data" / "demo" / "bike_horses.jpg",
    SHARED / "data" / "demo" / "PrivateLakefrontResidenceWoodstockGA_0000893.jpg",
]
#: The paths of the main table (``reference`` is the straightforward implementation below).
PATH_SETTINGS: dict[str, dict] = {
    "faithful": {},
    "fast": {"fast": True},
    "fastest": {"fast": True, "pad": "minimal", "max_window": 2049, "flip": False},
}
PATHS = ("reference", *PATH_SETTINGS)
#: Each speed-up alone, then the fast switch, then the fast switch without flip averaging.
SETTINGS: dict[str, dict] = {
    "precision=bf16": {"precision": "bf16"},
    "channels_last=True": {"channels_last": True},
    "head=low_res": {"head": "low_res"},
    "pad=minimal": {"pad": "minimal"},
    "pad=minimal, max_window=2049": {"pad": "minimal", "max_window": 2049},
    "flip=False": {"flip": False},
    "fast=True": {"fast": True},
    "fast=True, flip=False": {"fast": True, "flip": False},
    "fast=True, pad=minimal, max_window=2049, flip=False": PATH_SETTINGS["fastest"],
}


# ---------------------------------------------------------------------------------------------- the stand-in model
def _normalised(image: np.ndarray) -> torch.Tensor:
    return normalize(torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))))


def build_stand_in(shared: Path, seed: int = 0) -> nn.Module:
    """HRNet-W48 from ``make_weights.py``, BN statistics re-estimated and the classifier fitted on CamVid train."""
    sys.path.insert(0, str(shared / "reference" / "tools"))
    from make_weights import make_state_dict

    model = build_model("hrnet_w48", 194)
    model.load_state_dict(make_state_dict(str(shared / "reference" / "models" / "hrnet_w48_keys.json"), seed))
    camvid = shared / "data" / "camvid11"
    train = [line.split()[0] for line in (camvid / "train.txt").read_text().split("\n") if line.strip()]

    # BN statistics of real images (cumulative average over 11 images and their flips).
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        for name in train[::33]:
            x = _normalised(resize_short_side(read_image(camvid / name).astype(np.float32), 256))
            model(torch.stack([x, x.flip(-1)]))
    model.eval()

    # A linear probe: the last 1x1 convolution fitted to CamVid labels (each class -> its first universal class).
    universal = class_names("universal")
    to_universal = np.full(256, 255, np.int64)
    for index, targets in enumerate(get_taxonomy("camvid-11").universal):
        to_universal[index] = universal.index(targets[0])
    features: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    captured: dict[str, torch.Tensor] = {}
    hook = model.last_layer[2].register_forward_hook(lambda m, i, o: captured.__setitem__("x", o))
    rng = np.random.default_rng(seed)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        for name in train[::15]:
            model(_normalised(read_image(camvid / name).astype(np.float32))[None])
            feats = captured["x"][0].float()
            label = read_label(camvid / name.replace("images/", "labels/"))
            label = to_universal[cv2.resize(label, feats.shape[:0:-1], interpolation=cv2.INTER_NEAREST)].ravel()
            keep = rng.choice(np.flatnonzero(label != 255), 3000, replace=False)
            features.append(feats.reshape(feats.shape[0], -1)[:, keep].T.clone())
            labels.append(torch.from_numpy(label[keep]))
    hook.remove()
    x, y = torch.cat(features), torch.cat(labels)
    classifier = model.last_layer[3]
    weight = torch.zeros(classifier.weight.shape[:2], requires_grad=True)
    bias = torch.zeros(classifier.bias.shape, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=0.01)
    for _ in range(300):
        loss = nn.functional.cross_entropy(x @ weight.T + bias, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        classifier.weight.copy_(weight[:, :, None, None])
        classifier.bias.copy_(bias)
    return model


def get_model(args: argparse.Namespace) -> tuple[nn.Module, str]:
    if args.model:
        return load_model(args.model, arch=args.arch), f"{args.model}"
    cache = Path(args.cache)
    model = build_model("hrnet_w48", 194)
    if cache.exists():  # mmap: no second copy of the weights in memory while loading
        model.load_state_dict(torch.load(cache, weights_only=True, mmap=True))
    else:
        print(f"building the stand-in model (cached in {cache}) ...", file=sys.stderr, flush=True)
        model = build_stand_in(Path(args.shared))
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), cache)
    return model.eval(), "HRNet-W48 stand-in (make_weights.py seed 0, BN re-estimated, linear probe on CamVid train)"


def get_agreement_model() -> nn.Module:
    """The trained model that ships with the package (compact HRNet, CamVid-11, trained with ``mseg train``).

    Agreement depends on the model: a random network is chaotic (a bf16 rounding or a one-pixel shift changes much
    of its output) while a trained one is smooth. This is the best-trained network available offline; only a real
    W48 checkpoint (``--model``) gives the W48 figure.
    """
    from mseg_semantic import zoo

    return zoo.load_model("camvid11-compact")


# ---------------------------------------------------------------------------------------------------- measurements
def predictor(model: nn.Module, preset: str, path: str, device: str):
    if path == "reference":
        seg = Segmenter(model, config=preset, device=device)  # for its settings only
        cfg = seg.config
        return functools.partial(reference_predict, model, base_size=cfg.base_size, scales=cfg.scales,
                                 crop_size=(cfg.crop_h, cfg.crop_w))  # fmt: skip
    return Segmenter(model, config=preset, device=device, **PATH_SETTINGS[path]).predict


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_paths(
    predictors: dict[str, Callable[[np.ndarray], np.ndarray]], image: np.ndarray, warmup: int, repeats: int, device: str
) -> dict[str, tuple[float, np.ndarray]]:
    """Median seconds and labels of each predictor. Runs are interleaved (one of each per round), so a change in the
    machine's load during the measurement slows every path alike instead of one of them."""
    times: dict[str, list[float]] = {name: [] for name in predictors}
    labels: dict[str, np.ndarray] = {}
    for round_ in range(warmup + repeats):
        for name, predict in predictors.items():
            sync(device)
            start = time.perf_counter()
            labels[name] = predict(image)
            sync(device)
            if round_ >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(times[name]), labels[name]) for name in predictors}


def peak_memory_mb(args: argparse.Namespace, image: Path, preset: str, path: str) -> float | None:
    """Peak RSS of a fresh process predicting one image (after the model is loaded: weights included)."""
    cmd = [sys.executable, __file__, "--measure-memory", str(image), preset, path, "--cache", args.cache,
           "--device", args.device]  # fmt: skip
    if args.keep_model:
        cmd.append("--keep-model")
    if args.model:
        cmd += ["--model", args.model] + (["--arch", args.arch] if args.arch else [])
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        print(result.stderr, file=sys.stderr)
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_mb"]


def _reset_peak_rss() -> bool:
    """Linux: forget the peak so far (writing 5 to clear_refs resets VmHWM)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_mb(reset: bool) -> float:
    if reset:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_memory(args: argparse.Namespace) -> None:
    """Peak RSS as ``mseg demo`` has it: the model is loaded, handed to the Segmenter and not kept otherwise (so
    with a low-precision copy its fp32 weights are freed; ``--keep-model`` holds them, as a caller's own module)."""
    image_path, preset, path = args.measure_memory
    model, _ = get_model(args)
    predict = predictor(model, preset, path, args.device)
    if not args.keep_model:
        del model
    image = read_image(image_path)
    reset = _reset_peak_rss()
    predict(image)
    print(json.dumps({"peak_mb": _peak_rss_mb(reset)}))


@functools.cache
def window_macs(height: int, width: int) -> int:
    """Multiply-accumulates of one HRNet-W48 forward at height x width (counted on the meta device)."""
    with torch.device("meta"):
        model = build_model("hrnet_w48", 194).eval()
        x = torch.empty(1, 3, height, width)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() // 2


def path_macs(model: nn.Module, preset: str, path: str, h: int, w: int) -> tuple[int, int]:
    """(forward passes, MACs) of one prediction; the reference runs the faithful windows one pass at a time."""
    seg = Segmenter(model, config=preset, **PATH_SETTINGS[path])
    passes = 2 if seg.config.flip else 1
    forwards = macs = 0
    for grid in seg.window_grids(h, w):
        n = len(grid.ys) * len(grid.xs) * passes
        forwards += n
        macs += n * window_macs(grid.win_h, grid.win_w)
    return forwards, macs


def matmul_macs_per_second(dtype: torch.dtype, device: str, size: int = 2048, repeats: int = 5) -> float:
    """Best of ``repeats`` square matrix products: the machine's dense multiply-accumulate rate in ``dtype``."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = math.inf
    for _ in range(repeats + 1):
        sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return size**3 / best


def agreement_images(shared: Path) -> list[Path]:
    """The demo photos and every 10th CamVid val image."""
    demo = sorted(p for p in (shared / "data" / "demo").iterdir() if p.suffix in (".jpg", ".png"))
    camvid = shared / "data" / "camvid11"
    val = [line.split()[0] for line in (camvid / "val.txt").read_text().splitlines() if line.strip()]
    return demo + [camvid / name for name in val[::10]]


def settings_table(args: argparse.Namespace, model: nn.Module) -> None:
    """Per speed-up: agreement of the bundled trained model on real images, W48 agreement and time on one photo."""
    compact = get_agreement_model()
    paths = agreement_images(Path(args.shared))
    images = [read_image(p) for p in paths]
    photo = read_image(args.images[0])
    print()
    print(f"Each setting against the faithful path; compact: the bundled camvid11-compact on {len(images)} real images "
          f"(mean and worst image); W48: the stand-in on {Path(args.images[0]).name}, 360_ss.")  # fmt: skip
    print()
    print("| setting | compact 360_ss % | compact 360_ms % | W48 360_ss % | W48 360_ss s/img | speed-up |")
    print("|---|---|---|---|---|---|")
    faithful_compact = {
        preset: [Segmenter(compact, config=preset, model_taxonomy="camvid-11").predict(image) for image in images]
        for preset in ("360_ss", "360_ms")
    }
    w48 = {"faithful": Segmenter(model, config="360_ss", device=args.device).predict}
    w48.update({name: Segmenter(model, config="360_ss", device=args.device, **settings).predict
                for name, settings in SETTINGS.items()})  # fmt: skip
    timed = time_paths(w48, photo, args.warmup, args.repeats, args.device)
    base_seconds, base_labels = timed["faithful"]
    print(f"| faithful | 100 | 100 | 100 | {base_seconds:.2f} | 1.00x |", flush=True)
    for name, settings in SETTINGS.items():
        cells = []
        for preset in ("360_ss", "360_ms"):
            seg = Segmenter(compact, config=preset, model_taxonomy="camvid-11", **settings)
            scores = [100.0 * float((seg.predict(image) == ref).mean())
                      for image, ref in zip(images, faithful_compact[preset], strict=True)]  # fmt: skip
            cells.append(f"{statistics.mean(scores):.2f} ({min(scores):.2f})")
        seconds, labels = timed[name]
        agree = 100.0 * float((labels == base_labels).mean())
        print(f"| {name} | {cells[0]} | {cells[1]} | {agree:.2f} | {seconds:.2f} | {base_seconds / seconds:.2f}x |",
              flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a checkpoint (default: the stand-in described above)")
    parser.add_argument("--arch", help="architecture of an original .pth checkpoint (hrnet_w48)")
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "mseg_semantic" / "bench_w48_stand_in.pth"))
    parser.add_argument("--shared", default=str(SHARED), help="the shared/ folder (make_weights.py, CamVid)")
    parser.add_argument("--images", nargs="+", default=[str(p) for p in DEFAULT_IMAGES])
    parser.add_argument("--presets", nargs="+", default=["360_ss", "360_ms", "1080_ss"])
    parser.add_argument("--paths", nargs="+", default=list(PATH_SETTINGS), choices=PATHS)
    parser.add_argument("--reference", action="store_true", help="add the straightforward path (990x500, 360_*)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--tables", nargs="+", default=["paths", "settings"], choices=["paths", "settings"])
    parser.add_argument("--keep-model", action="store_true",
                        help="memory: keep the fp32 model referenced, as a caller holding its own module does")
    parser.add_argument("--measure-memory", nargs=3, metavar=("IMAGE", "PRESET", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.measure_memory:
        measure_memory(args)
        return

    model, description = get_model(args)
    model = model.to(args.device)
    load_before = os.getloadavg()
    rates = {
        "fp32": matmul_macs_per_second(torch.float32, args.device),
        "bf16": matmul_macs_per_second(torch.bfloat16, args.device),
    }
    print(f"model: {description}")
    cpu = cpu_description()
    print(
        f"machine: {cpu}, {os.cpu_count()} cores, {args.threads} threads, torch {torch.__version__}, "
        f"device {args.device}; matmul {rates['fp32'] / 1e9:.0f} GMAC/s fp32, {rates['bf16'] / 1e9:.0f} GMAC/s bf16"
    )
    print(f"load average before: {load_before[0]:.2f}; median of {args.repeats} after {args.warmup} warm-up")
    print()
    if "paths" in args.tables:
        paths_table(args, model, rates)
    if "settings" in args.tables:
        settings_table(args, model)
    print()
    print(f"load average after: {os.getloadavg()[0]:.2f}")


def paths_table(args: argparse.Namespace, model: nn.Module, rates: dict[str, float]) -> None:
    print("| image | preset | path | s/img | speed-up | peak MB | agreement % | forwards | GMACs | floor s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    paths = list(dict.fromkeys(["faithful", *(["reference"] if args.reference else []), *args.paths]))
    for image_path in args.images:
        image = read_image(image_path)
        h, w = image.shape[:2]
        for preset in args.presets:
            # The straightforward path's full-resolution float64 buffers would need several GB on large images.
            active = [p for p in paths if p != "reference" or (h * w < 1e6 and preset.startswith("360"))]
            predictors = {path: predictor(model, preset, path, args.device) for path in active}
            results = time_paths(predictors, image, args.warmup, args.repeats, args.device)
            faithful_seconds, faithful_labels = results["faithful"]
            for path in active:
                seconds, labels = results[path]
                agreement = 100.0 * float((labels == faithful_labels).mean())
                memory = None if args.no_memory else peak_memory_mb(args, Path(image_path), preset, path)
                forwards, macs = path_macs(model, preset, "faithful" if path == "reference" else path, h, w)
                precision = Segmenter(model, config=preset, **PATH_SETTINGS.get(path, {})).precision
                floor = macs / rates.get(precision, rates["fp32"])
                print(
                    f"| {Path(image_path).name[:24]} {w}x{h} | {preset} | {path} | {seconds:.2f} | "
                    f"{faithful_seconds / seconds:.2f}x | {'-' if memory is None else f'{memory:.0f}'} | "
                    f"{agreement:.2f} | {forwards} | {macs / 1e9:.0f} | {floor:.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
