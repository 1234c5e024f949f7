"""mIoU of a model on CamVid-11 val under camera and weather corruptions, ImageNet-C style (run by hand, not in CI).

Every image of the list is corrupted at one fixed severity (no randomness: Gaussian noise is seeded by the image's
own bytes, so an image gets the same noise whatever ``--limit`` or order) and predicted, and each corruption is
scored exactly as ``mseg eval`` scores a model: the same model loading and inference preset (the bundled model's
own ``compact_360_ss``, else ``360_ss`` or ``--preset``), the same :func:`mseg_semantic.evaluation.evaluate` (one
confusion matrix over the split, 255 ignored, mIoU over all classes, absent ones counting 0). The corruptions are
the operations of :mod:`mseg_semantic.data.degradations`, which the training augmentation draws at random:

    clean        the image as it is
    fog          add_haze: a blend of 0.5 toward the gray 215
    dark         adjust_color: brightness 0.5, then gamma 1.5 (dusk, an under-exposed frame)
    cast         adjust_color: gains R 1.25, G 1.0, B 0.7 (a warm colour cast: sodium light, a wrong white balance)
    jpeg         jpeg_compress: quality 10
    noise        gaussian_noise: sigma 15 (in 0..255 units)
    motion_blur  motion_blur: 11 pixels, horizontal

Prints a markdown table: mIoU and pixel accuracy per corruption, the drop from clean, and the mean over the corrupted
ones. The bundled model takes 0.26 s per image and corruption on one thread of the 2-core development CPU (101 val
images x 7: 3 minutes). With ``--out DIR`` the predictions and ``metrics.json`` of each corruption stay in
``DIR/<corruption>``; ``--resume`` reuses the predictions there, so a long run can be split (``--corruptions
clean,fog,dark``, then the rest) and its whole table printed at the end (``DIR/settings.json`` records the model and
preset, and a run with others is refused).

    python benchmarks/robustness.py                                  # the bundled camvid11-compact, every corruption
    python benchmarks/robustness.py --limit 10                       # a quick look
    python benchmarks/robustness.py --model runs/camvid11/model.safetensors --corruptions clean,fog,dark
    python benchmarks/robustness.py --out rob --corruptions clean,fog,dark && \\
        python benchmarks/robustness.py --out rob --resume           # in two parts
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from machine import cpu_description  # benchmarks/machine.py, beside this script

from mseg_semantic.cli.modelargs import add_config_arguments, add_model_arguments, model_spec
from mseg_semantic.data import read_list
from mseg_semantic.data.degradations import (
    add_haze,
    adjust_color,
    gaussian_noise,
    jpeg_compress,
    motion_blur,
)
from mseg_semantic.errors import InputError, MsegError
from mseg_semantic.evaluation import evaluate, plan_evaluation
from mseg_semantic.inference import Segmenter
from mseg_semantic.presets import EVAL_PRESET

REPO = Path(__file__).resolve().parents[1]
CAMVID = Path(os.environ.get("MSEG_SHARED") or REPO.parent / "shared") / "data" / "camvid11"


def _noise(image: np.ndarray) -> np.ndarray:
    # Seeded by the image itself: the same noise for an image however many others are scored, in any order.
    return gaussian_noise(image, 15.0, np.random.default_rng(zlib.crc32(image.tobytes())))


#: name -> (what it is, the corruption of an RGB uint8 image); fixed severities, deterministic.
CORRUPTIONS: dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]] = {
    "clean": ("the image as it is", lambda image: image),
    "fog": ("blend 0.5 toward gray 215", lambda image: add_haze(image, 0.5, 215.0)),
    "dark": ("brightness 0.5, gamma 1.5", lambda image: adjust_color(image, brightness=0.5, gamma=1.5)),
    "cast": ("gains R 1.25 G 1.0 B 0.7", lambda image: adjust_color(image, gains=(1.25, 1.0, 0.7))),
    "jpeg": ("JPEG quality 10", lambda image: jpeg_compress(image, 10)),
    "noise": ("Gaussian noise sigma 15", _noise),
    "motion_blur": ("11 px horizontal", lambda image: motion_blur(image, 11, 0.0)),
}


def corruption_names(text: str) -> list[str]:
    """``--corruptions``: comma-separated names of :data:`CORRUPTIONS`, or ``all``."""
    names = list(CORRUPTIONS) if text == "all" else [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in CORRUPTIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown corruption {unknown or text!r}; known: {', '.join(CORRUPTIONS)}")
    return names


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--corruptions",
        type=corruption_names,
        default=list(CORRUPTIONS),
        metavar="A,B,...",
        help=f"which ones, comma-separated, or all (default: all: {', '.join(CORRUPTIONS)})",
    )
    parser.add_argument("--limit", type=int, metavar="N", help="the first N images of the list only (a quick look)")
    parser.add_argument("--dataset", default="camvid-11", help="taxonomy of the ground truth (default camvid-11)")
    parser.add_argument("--data-root", type=Path, default=CAMVID, help=f"the list's folder (default {CAMVID})")
    parser.add_argument("--list", type=Path, help="'image label' lines (default: DATA_ROOT/val.txt)")
    parser.add_argument("--out", type=Path, help="keep predictions and metrics in OUT/<corruption> (default: none)")
    parser.add_argument("--resume", action="store_true", help="reuse the predictions already in --out")
    add_model_arguments(parser)
    add_config_arguments(parser, default=EVAL_PRESET)
    args = parser.parse_args()
    if args.resume and args.out is None:
        parser.error("--resume needs --out")
    try:
        return run(args)
    except MsegError as exc:
        print(f"robustness.py: error: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    spec = model_spec(args, default_preset=EVAL_PRESET)  # what `mseg eval` does with the same options
    spec.apply_threads()
    entries = read_list(args.list or args.data_root / "val.txt", args.data_root)[: args.limit]
    model, model_taxonomy = spec.load()
    plan = plan_evaluation(args.dataset, model_taxonomy)
    segmenter = Segmenter(model, config=spec.config, model_taxonomy=model_taxonomy,
                          output_taxonomy=plan.eval_taxonomy, device=spec.device)  # fmt: skip
    names = list(dict.fromkeys(args.corruptions))
    print(f"model {spec.model} ({model_taxonomy}), preset {spec.config.name} ({segmenter.backend}, "
          f"{segmenter.precision}); {args.dataset}: {len(entries)} images of {args.list or args.data_root / 'val.txt'}"
          f"; {datetime.date.today().isoformat()}, {cpu_description()}, {os.cpu_count()} cores, "
          f"threads: {spec.threads or torch.get_num_threads()}", file=sys.stderr)  # fmt: skip
    if args.out is not None:
        settings = {"model": spec.model, "preset": spec.config.name, "dataset": args.dataset}
        check_settings(args.out / "settings.json", settings)
    rows = []
    with tempfile.TemporaryDirectory(prefix="mseg-robustness-") as scratch:
        base = args.out or Path(scratch)
        for name in names:
            corrupt = CORRUPTIONS[name][1]
            start = time.perf_counter()
            result = evaluate(
                lambda image, corrupt=corrupt: segmenter.predict(corrupt(image)),
                entries,
                plan,
                base / name,
                resume=args.resume,
                progress=False,
                info={"model": spec.model, "corruption": name, "severity": CORRUPTIONS[name][0]},
            )
            if result.metrics is None:
                for failure in result.failures:
                    print(f"failed: {failure}", file=sys.stderr)
                return 1
            seconds = time.perf_counter() - start
            rows.append((name, result.metrics["mIoU"], result.metrics["pixel_accuracy"]))
            print(f"{name}: mIoU {rows[-1][1]:.2f}, {result.predicted} predicted, {result.reused} reused, "
                  f"{seconds:.0f} s", file=sys.stderr)  # fmt: skip
    print(markdown_table(rows))
    return 0


def check_settings(path: Path, settings: dict) -> None:
    """Record which model and preset ``--out`` holds predictions of; refuse to add another's (a ``--resume`` would
    mix two models' labels in one table)."""
    if path.is_file():
        earlier = json.loads(path.read_text())
        changed = [key for key in settings if earlier.get(key) != settings[key]]
        if changed:
            raise InputError(
                f"{path.parent} holds predictions made with other settings ({', '.join(changed)}: "
                f"{', '.join(str(earlier.get(k)) for k in changed)}); choose another --out"
            )
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2) + "\n")


def markdown_table(rows: list[tuple[str, float, float]]) -> str:
    """One row per corruption (mIoU, its change from clean, pixel accuracy) and the mean over the corrupted ones."""
    clean = next((miou for name, miou, _ in rows if name == "clean"), None)
    lines = ["| corruption | severity | mIoU (%) | vs clean | pixel acc. (%) |", "|---|---|---|---|---|"]
    for name, miou, accuracy in rows:
        change = "" if clean is None or name == "clean" else f"{miou - clean:+.2f}"
        lines.append(f"| {name} | {CORRUPTIONS[name][0]} | {miou:.2f} | {change} | {accuracy:.2f} |")
    corrupted = [(miou, accuracy) for name, miou, accuracy in rows if name != "clean"]
    if corrupted:
        miou, accuracy = (float(np.mean(column)) for column in zip(*corrupted, strict=True))
        change = "" if clean is None else f"{miou - clean:+.2f}"
        lines.append(f"| **mean of the {len(corrupted)} corrupted** | | **{miou:.2f}** | {change} | {accuracy:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
