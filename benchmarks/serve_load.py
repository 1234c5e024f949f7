"""Load test of ``mseg serve``: N concurrent clients for a bounded time, good and bad requests mixed, next to
``mseg demo`` on the same images in the same run (run by hand, not in CI).

1. Makes ``--images`` test images from the bundled dashcam photo (crops, flips and sizes from 480x360 to its full
   1164x874; PNG and JPEG) in a temporary folder.
2. Times the package's demo (:func:`mseg_semantic.inference.demo.run_demo`: same model, same preset, the same
   default outputs gray,color,overlay, written to a temporary folder) over those images, in passes, for at least
   ``--demo-seconds``, once before the load and once after it (a machine shared with other work changes pace):
   images/s from the demo's own reports (model loading excluded), both runs together.
3. Starts ``mseg serve`` as a child process on a free port of 127.0.0.1 (or uses ``--url``) and runs ``--clients``
   asyncio clients (httpx) for ``--warmup`` seconds (not counted) and then ``--duration`` seconds. Each sends,
   one after the other, a good request (an image, raw body, ``outputs=gray,color,overlay``) or, with probability
   ``--bad``, a bad one (not an image, a truncated JPEG, an empty body, a decompression bomb's header, an unknown
   output, an unknown taxonomy). A request
   still running at the end is waited for: every request, warm-up included, is counted as 200, 4xx, 503, 5xx or
   lost (no answer); throughput and latency are those of the good answers that came in the measured time.
4. Samples the server's resident memory every 0.25 s (psutil when installed, else /proc/PID/status); the figures
   are over the measured time.

It prints the throughput of good requests, their p50/p95/p99 latency, the counts, the server's memory (after the
warm-up, peak, at the end, and the growth from the second quarter of the run to the last) and the ratio of the
demo's throughput to the server's.

    python benchmarks/serve_load.py                                   # 32 clients, 60 s, 20% bad requests
    python benchmarks/serve_load.py --clients 8 --duration 15         # a quick look
    python benchmarks/serve_load.py --server-args "--max-batch 8 --max-wait-ms 20"
    python benchmarks/serve_load.py --url http://127.0.0.1:8000 --pid 12345   # a server started by hand
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import random
import shlex
import struct
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
from machine import cpu_description  # benchmarks/machine.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mseg_semantic.examples import example_path  # noqa: E402
from mseg_semantic.serve.process import child_env, start_server  # noqa: E402

GOOD_OUTPUTS = "gray,color,overlay"  # the demo's default outputs


def make_images(folder: Path, count: int) -> list[Path]:
    """``count`` views of the bundled photo: crops, flips and sizes, alternately PNG and JPEG."""
    photo = cv2.imread(str(example_path()))
    h, w = photo.shape[:2]
    sizes = [(480, 360), (640, 480), (800, 600), (960, 720), (1164, 874)]
    paths = []
    for i in range(count):
        crop = photo[(i * 37) % (h // 4) :, (i * 53) % (w // 4) :]
        crop = crop[:, ::-1] if i % 2 else crop
        image = cv2.resize(crop, sizes[i % len(sizes)], interpolation=cv2.INTER_AREA)
        path = folder / f"view{i:02d}{'.png' if i % 3 == 0 else '.jpg'}"
        cv2.imwrite(str(path), image)
        paths.append(path)
    return paths


def png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def bad_requests(jpeg: bytes) -> list[tuple[str, dict, bytes]]:
    """(name, query, body) of each kind of bad request."""
    good = {"outputs": GOOD_OUTPUTS}
    return [
        ("not an image", good, b"this is not an image" * 50),
        ("truncated", good, jpeg[: len(jpeg) // 2]),
        ("empty", good, b""),
        ("bomb", good, png_header(60_000, 60_000)),
        ("unknown output", {"outputs": "gray,nope"}, jpeg),
        ("unknown taxonomy", {"taxonomy": "no-such-taxonomy"}, jpeg),
    ]


def time_demo(paths: list[Path], model: str, preset: str | None, seconds: float) -> tuple[int, float]:
    """Images and seconds of the package's demo over ``paths``, in passes until ``seconds`` have gone (at least
    one)."""
    from mseg_semantic import Segmenter
    from mseg_semantic.inference.demo import run_demo

    segmenter = Segmenter(model, config=preset)
    images, spent = 0, 0.0
    with tempfile.TemporaryDirectory() as out:
        run_demo(segmenter, paths[:2], out, progress=False, log=lambda m: None)  # warm-up
        while spent < seconds:
            report = run_demo(segmenter, paths, out, overwrite=True, progress=False, log=lambda m: None)
            assert not report.failures, report.failures
            images += report.images
            spent += report.seconds
    return images, spent


class MemorySampler(threading.Thread):
    """The resident memory of a process, every ``interval`` seconds, as (time, MB)."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, float]] = []
        self.stopped = threading.Event()

    def rss_mb(self) -> float | None:
        try:
            import psutil

            return psutil.Process(self.pid).memory_info().rss / 2**20
        except ImportError:
            pass
        except Exception:
            return None
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            value = self.rss_mb()
            if value is not None:
                self.samples.append((time.monotonic(), value))


async def client(http, bodies, bad, fraction, deadline, results, rng) -> None:
    """One client: requests one after the other until the deadline, each recorded as (kind, status, start, end)."""
    while time.monotonic() < deadline:
        if rng.random() < fraction:
            name, query, body = rng.choice(bad)
        else:
            name, query, body = "good", {"outputs": GOOD_OUTPUTS}, rng.choice(bodies)
        began = time.monotonic()
        try:
            response = await http.post("/v1/segment", params=query, content=body)
            status = response.status_code
            if status == 200 and name == "good":
                assert response.json()["classes"], "an answer without classes"
        except Exception as exc:  # no answer: lost
            status = f"lost ({type(exc).__name__})"
        results.append((name, status, began, time.monotonic()))


async def load(url: str, bodies, bad, args) -> tuple[list, float, float]:
    """Run the clients through the warm-up and the measured time, then wait for every answer; returns every request
    and when the measured time began and ended."""
    import httpx

    results: list = []
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    async with httpx.AsyncClient(base_url=url, timeout=args.timeout, limits=limits) as http:
        began = time.monotonic() + args.warmup
        deadline = began + args.duration
        rngs = [random.Random(args.seed + i) for i in range(args.clients)]
        await asyncio.gather(*(client(http, bodies, bad, args.bad, deadline, results, r) for r in rngs))
    return results, began, deadline


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def status_class(status: int | str) -> str:
    """200, 4xx, 503, 5xx or lost (no answer, or an answer no client should get)."""
    if isinstance(status, str):
        return "lost"
    if status in (200, 503):
        return str(status)
    return "4xx" if 400 <= status < 500 else "5xx" if status >= 500 else "lost"


def summarize(results: list, began: float, ended: float, memory: list[tuple[float, float]]) -> dict:
    """Counts over every request (warm-up and drain included: none may be lost); throughput and latency over the
    good answers that came within the measured time; memory over that time."""
    code = {"200": 0, "4xx": 0, "503": 0, "5xx": 0, "lost": 0}
    for _, status, _, _ in results:
        code[status_class(status)] += 1
    measured = [(name, status, end - start) for name, status, start, end in results if began <= end <= ended]
    good = [seconds for name, status, seconds in measured if name == "good" and status == 200]
    bad = [status for name, status, _, _ in results if name != "good"]
    values = [mb for t, mb in memory if began <= t <= ended]
    quarter = max(1, len(values) // 4)
    return {
        "requests": len(results),
        "measured_seconds": round(ended - began, 1),
        "good_per_s": round(len(good) / (ended - began), 3),
        "latency_s": {f"p{q}": round(percentile(good, q), 3) for q in (50, 95, 99)},
        "codes": code,
        "bad_sent": len(bad),
        "bad_answered_4xx": sum(1 for status in bad if status_class(status) == "4xx"),
        "memory_mb": {
            "after_warmup": round(values[0], 1) if values else None,
            "peak": round(max(values), 1) if values else None,
            "end": round(values[-1], 1) if values else None,
            "second_quarter_mean": round(float(np.mean(values[quarter : 2 * quarter])), 1) if values else None,
            "last_quarter_mean": round(float(np.mean(values[-quarter:])), 1) if values else None,
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (default: 60)")
    parser.add_argument("--bad", type=float, default=0.2, help="fraction of bad requests (default: 0.2)")
    parser.add_argument(
        "--warmup", type=float, default=15.0, help="seconds of load before the measured time, not counted (default: 15)"
    )
    parser.add_argument("--images", type=int, default=10, help="test images made from the bundled photo")
    parser.add_argument("--model", default="camvid11-compact")
    parser.add_argument("--preset", default=None, help="default: the model's own")
    parser.add_argument("--demo-seconds", type=float, default=20.0, help="least time the demo is timed for")
    parser.add_argument("--server-args", default="", help="more mseg serve options, e.g. '--max-batch 8'")
    parser.add_argument("--url", help="load a server already running instead of starting one")
    parser.add_argument("--pid", type=int, help="with --url: the server's process id, to sample its memory")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds a client waits for an answer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_images(Path(tmp), args.images)
        bodies = [p.read_bytes() for p in paths]
        bad = bad_requests(next(b for p, b in zip(paths, bodies, strict=True) if p.suffix == ".jpg"))
        print(
            f"# {datetime.date.today()}; {cpu_description()}; {os.cpu_count()} CPUs; model {args.model}; "
            f"{len(paths)} images; {args.clients} clients, {args.duration:g} s, {args.bad:.0%} bad",
            flush=True,
        )
        before = time_demo(paths, args.model, args.preset, args.demo_seconds)
        print(f"mseg demo, before the load: {before[0] / before[1]:.2f} images/s ({before[0]} images)", flush=True)
        figures = run_server_load(args, bodies, bad)
        after = time_demo(paths, args.model, args.preset, args.demo_seconds)
        print(f"mseg demo, after the load: {after[0] / after[1]:.2f} images/s ({after[0]} images)", flush=True)
    demo_rate = (before[0] + after[0]) / (before[1] + after[1])
    figures["demo_images_per_s"] = {
        "before": round(before[0] / before[1], 3),
        "after": round(after[0] / after[1], 3),
        "both": round(demo_rate, 3),
    }
    figures["demo_over_server"] = round(demo_rate / figures["good_per_s"], 3) if figures["good_per_s"] else None
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


def run_server_load(args, bodies, bad) -> dict:
    server = None
    url, pid = args.url, args.pid
    if url is None:
        options = ["--port", "0", "--model", args.model, *(["--preset", args.preset] if args.preset else [])]
        server = start_server([*options, *shlex.split(args.server_args)], env=child_env(ROOT))
        url, pid = server.url, server.pid
        print(f"mseg serve: {url} (pid {pid}) {' '.join(options[2:])} {args.server_args}", flush=True)
    sampler = MemorySampler(pid) if pid else None
    try:
        if sampler:
            sampler.start()
        results, began, ended = asyncio.run(load(url, bodies, bad, args))
    finally:
        if sampler:
            sampler.stopped.set()
            sampler.join()
        if server is not None:
            server.stop()
    return summarize(results, began, ended, sampler.samples if sampler else [])


if __name__ == "__main__":
    sys.exit(main())
