"""Throughput of ``mseg demo`` over a folder of images: images/s and peak memory per process (run by hand, not in CI).

Makes a folder of ``--images`` JPEGs (default 200) from the photos in ../shared/data/demo (crops, flips and sizes,
about 640x480), then, for each model, number of processes and set of outputs, runs ``mseg demo`` on it (under
``torchrun --standalone`` for more than one process, the machine's cores split between the processes with
``--threads``) into a fresh output folder, and prints one markdown table row per run:

- images/s: the demo's own summary: images over the seconds from the first input to the end of the last process
  (model loading excluded);
- wall s: the whole command, start-up and model loading included;
- peak MB per process: the largest resident set of any process of the run (``getrusage(RUSAGE_CHILDREN)`` of a
  fresh wrapper process, which covers torchrun's workers).

    python benchmarks/throughput.py                                    # bundled model, 1 and 2 processes, gray vs all
    python benchmarks/throughput.py --images 40 --processes 2          # a quick look
    python benchmarks/throughput.py --models camvid11-compact "mseg-3m:--fast"     # HRNet-W48 (downloaded once)
    python benchmarks/throughput.py --device cuda --processes 1        # on a GPU (one process per GPU: --processes N)

A model is ``NAME_OR_PATH[:EXTRA DEMO OPTIONS]``; ``all`` outputs are gray,color,overlay,confidence,probs with
``--probs-topk`` 3 (all 194 probabilities of an HRNet image take 120 MB on disk).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
from machine import cpu_description  # benchmarks/machine.py, beside this script

REPO = Path(__file__).resolve().parents[1]
DEMO = Path(os.environ.get("MSEG_SHARED") or REPO.parent / "shared") / "data" / "demo"
OUTPUT_SETS = {"gray": ["--outputs", "gray"], "all": ["--outputs", "gray,color,overlay,confidence,probs",
                                                       "--probs-topk", "3"]}  # fmt: skip

# Runs a command and prints the largest resident set (kB) of any process it started, waited for.
_MEASURE = (
    "import json, resource, subprocess, sys, time\n"
    "cmd = json.loads(sys.argv[1]); began = time.perf_counter()\n"
    "done = subprocess.run(cmd, capture_output=True, text=True)\n"
    "print(json.dumps({'rc': done.returncode, 'stdout': done.stdout, 'stderr': done.stderr[-4000:], "
    "'wall': time.perf_counter() - began, 'maxrss_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))\n"
)


def make_images(folder: Path, count: int, seed: int = 0) -> None:
    """``count`` distinct JPEGs made from the demo photos: a random crop of 60-100% of each side, a width of
    480-800 pixels, every other one flipped."""
    sources = sorted(p for p in DEMO.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    if not sources:
        sys.exit(f"no demo photos in {DEMO} (set MSEG_SHARED)")
    photos = [cv2.imread(str(p)) for p in sources]
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image = photos[i % len(photos)]
        h, w = image.shape[:2]
        ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop = image[y : y + ch, x : x + cw]
        width = int(rng.integers(480, 801))
        small = cv2.resize(crop, (width, max(1, width * ch // cw)), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(folder / f"img{i:04d}.jpg"), small[:, ::-1] if i % 2 else small, [cv2.IMWRITE_JPEG_QUALITY, 90])


def demo_command(processes: int, images: Path, out: Path, model: str, outputs: str, device: str,
                 threads: int) -> list[str]:  # fmt: skip
    name, _, extra = model.partition(":")
    args = ["demo", str(images), "--out", str(out), "--model", name, *shlex.split(extra), *OUTPUT_SETS[outputs],
            "--device", device, "--threads", str(threads), "--quiet"]  # fmt: skip
    if processes == 1:
        return [sys.executable, "-m", "mseg_semantic", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes), "-m",
            "mseg_semantic", *args]  # fmt: skip


def run(cmd: list[str]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": cmd[cmd.index("--threads") + 1]}
    done = subprocess.run([sys.executable, "-c", _MEASURE, json.dumps(cmd)], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"the measuring process failed:\n{done.stderr}")
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200, help="images in the folder (default 200)")
    parser.add_argument("--models", nargs="+", default=["camvid11-compact"], metavar="MODEL[:OPTIONS]")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--outputs", nargs="+", choices=sorted(OUTPUT_SETS), default=["gray", "all"])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (one GPU per process)")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="CPU threads split between processes")
    parser.add_argument("--work", type=Path, help="folder for the images and outputs (default: a temporary one)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="mseg_throughput_"))
    images = work / "images"
    if len(list(images.glob("*.jpg"))) != args.images:
        shutil.rmtree(images, ignore_errors=True)
        make_images(images, args.images)
    print(f"# {args.images} images (~640x480) from {DEMO}; {datetime.date.today().isoformat()}, {cpu_description()}, "
          f"{os.cpu_count()} CPUs; device {args.device}\n")  # fmt: skip
    print("| model | processes | outputs | images/s | wall s | peak MB per process |")
    print("|---|---|---|---|---|---|")
    for model in args.models:
        for processes in args.processes:
            for outputs in args.outputs:
                out = work / "out"
                shutil.rmtree(out, ignore_errors=True)
                threads = max(1, args.cores // processes)
                result = run(demo_command(processes, images, out, model, outputs, args.device, threads))
                if result["rc"] != 0:
                    sys.exit(f"mseg demo failed ({model}, {processes} processes, {outputs}):\n{result['stderr']}")
                pace = re.search(r"\(([\d.]+) images/s", result["stdout"])
                print(f"| {model} | {processes} x {threads} thread(s) | {outputs} | {pace.group(1) if pace else '?'} | "
                      f"{result['wall']:.1f} | {result['maxrss_kb'] / 1024:.0f} |", flush=True)  # fmt: skip
                shutil.rmtree(out, ignore_errors=True)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
