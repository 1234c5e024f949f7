"""Training throughput on this machine: HRNet-W48 at 473 crops (fp32 vs bf16) and the ``camvid11`` config.

    python benchmarks/train.py                         # both parts (a few minutes on 2 cores)
    python benchmarks/train.py --skip-w48              # only the camvid11 config
    python benchmarks/train.py --camvid ../shared/data/camvid11 --iters 15

Part 1 times whole training steps (forward, fp32 cross-entropy, backward, SGD) of HRNet-W48 with 194 classes on
synthetic 473x473 crops: median of ``--repeats`` steps after one warm-up step, each precision in a fresh process
with ``OMP_WAIT_POLICY=PASSIVE`` (see below; ``--omp-wait active`` for PyTorch's default).

Part 2 runs the real ``mseg train camvid11`` (data loading, augmentation, bf16 autocast, logging) as a
subprocess for ``--iters`` iterations in several process/thread layouts, and reads the speed from its
``log.csv``, leaving out the first logged window (start-up, oneDNN kernel creation). CPU speed on a shared machine
depends on what else runs: the load average is printed before and after, and a layout whose OpenMP threads
spin-wait (the default) collapses when another process takes a core, which is why it is also measured with
``OMP_WAIT_POLICY=PASSIVE`` and with one thread.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from machine import cpu_description  # benchmarks/machine.py, beside this script

from mseg_semantic.models import build_model
from mseg_semantic.training import load_train_config

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CAMVID = ROOT.parent / "shared" / "data" / "camvid11"


def machine_line() -> str:
    cpu = cpu_description()
    return f"{cpu}, {os.cpu_count()} logical cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def load_line() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "load average: unknown"
    return f"load average (1/5/15 min): {one:.2f} {five:.2f} {fifteen:.2f}"


def w48_step_seconds(size: int, batch: int, bf16: bool, repeats: int) -> float:
    """Median seconds of one training step of HRNet-W48 (194 classes) on a synthetic batch."""
    torch.manual_seed(0)
    model = build_model("hrnet_w48", 194).train()
    if bf16:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    images = torch.randn(batch, 3, size, size)
    if bf16:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 194, (batch, size, size))
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(images)
        loss = F.cross_entropy(logits.float(), labels, ignore_index=255)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def camvid_images_per_s(
    camvid: Path, iters: int, env: dict[str, str], processes: int, overrides: list[str]
) -> tuple[float, float]:
    """(images/s, seconds per iteration) of ``mseg train camvid11``, from its log after the first window."""
    window = max(1, iters // 3)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        launcher = [sys.executable, "-m", "mseg_semantic"]
        if processes > 1:
            launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node"]
            launcher += [str(processes), "-m", "mseg_semantic"]
        command = [*launcher, "train", "camvid11", "--data-root", str(camvid), "--out", str(out), "--quiet"]
        command += ["--max-iters", str(iters), "--set", f"log_every={window}", "val.every=0", *overrides]
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
        done = subprocess.run(command, env=full_env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
        with (out / "log.csv").open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    speeds = [float(r["images_per_s"]) for r in rows[1:]] or [float(rows[0]["images_per_s"])]
    images_per_s = statistics.median(speeds)
    batch = load_train_config("camvid11", overrides)[1].batch_size
    return images_per_s, batch / images_per_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--camvid", type=Path, default=DEFAULT_CAMVID, help="CamVid-11 folder (train.txt, ...)")
    parser.add_argument("--iters", type=int, default=15, help="iterations per camvid11 run (default 15)")
    parser.add_argument("--repeats", type=int, default=2, help="timed W48 steps per precision (default 2)")
    parser.add_argument("--w48-batch", type=int, default=2, help="crops per W48 step (default 2)")
    parser.add_argument("--skip-w48", action="store_true")
    parser.add_argument("--skip-camvid", action="store_true")
    parser.add_argument("--omp-wait", default="passive", choices=["passive", "active"], help="W48 OpenMP policy")
    parser.add_argument("--w48-step", choices=["fp32", "bf16"], help=argparse.SUPPRESS)  # one measurement
    args = parser.parse_args()
    if args.w48_step:
        print(w48_step_seconds(473, args.w48_batch, args.w48_step == "bf16", args.repeats))
        return

    print(machine_line())
    print(load_line() + " (before)")
    if not args.skip_w48:
        print(
            f"\nHRNet-W48, 194 classes, 473x473 crops, batch {args.w48_batch}, whole training steps, one process x "
            f"{torch.get_num_threads()} threads, OMP_WAIT_POLICY={args.omp_wait.upper()}"
        )
        print(f"{'precision':<28} {'s/iter':>8} {'iter/s':>8} {'img/s':>8}")
        for label, precision in (("fp32", "fp32"), ("bf16 autocast, channels_last", "bf16")):
            command = [sys.executable, __file__, "--w48-step", precision, "--repeats", str(args.repeats)]
            command += ["--w48-batch", str(args.w48_batch)]
            env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": args.omp_wait.upper()}
            seconds = float(subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout)
            print(f"{label:<28} {seconds:8.2f} {1 / seconds:8.3f} {args.w48_batch / seconds:8.2f}")
    if not args.skip_camvid:
        if not (args.camvid / "train.txt").is_file():
            print(f"\ncamvid11: skipped, no CamVid folder at {args.camvid} (--camvid DIR)")
        else:
            _, config = load_train_config("camvid11")
            total = config.total_iters()
            print(
                f"\nmseg train camvid11 ({config.batch_size} crops of {config.transform.crop[0]}x"
                f"{config.transform.crop[1]} per step, {total} steps), real data, {args.iters} iterations per layout"
            )
            print(f"{'layout':<52} {'s/iter':>7} {'img/s':>7} {'full run':>9}")
            layouts = [
                ("bf16, 1 process x 2 threads (default)", {}, 1, []),
                ("bf16, 1 process x 2 threads, OMP_WAIT_POLICY=PASSIVE", {"OMP_WAIT_POLICY": "PASSIVE"}, 1, []),
                ("bf16, 1 process x 1 thread", {"OMP_NUM_THREADS": "1"}, 1, []),
                ("bf16, torchrun 2 processes x 1 thread", {"OMP_NUM_THREADS": "1"}, 2, []),
                ("fp32, 1 process x 1 thread", {"OMP_NUM_THREADS": "1"}, 1, ["precision=fp32", "channels_last=false"]),
            ]
            for label, env, processes, overrides in layouts:
                images_per_s, seconds = camvid_images_per_s(args.camvid, args.iters, env, processes, overrides)
                hours = seconds * total / 3600
                print(f"{label:<52} {seconds:7.2f} {images_per_s:7.2f} {hours:8.1f}h")
    print("\n" + load_line() + " (after)")


if __name__ == "__main__":
    main()
