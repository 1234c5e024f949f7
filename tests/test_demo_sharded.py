"""`mseg demo` under torchrun (gloo, CPU): the inputs split over processes, the manifest, resuming, a killed run.

The images are small versions of the photos made from the bundled examples (conftest.example_photos), segmented
with the bundled model.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import cv2
import pytest
from conftest import failure, mseg_command, mseg_env, run_mseg

SMALL = ["--base-size", "96", "--crop-size", "97", "--outputs", "gray", "--quiet", "--threads", "1"]
IMAGES = 24


@pytest.fixture(scope="module")
def photos(example_photos: Path, tmp_path_factory) -> Path:
    """24 small distinct images (crops, flips and sizes of the example photos) in a folder and a sub-folder, and a
    corrupt JPEG."""
    sources = sorted(example_photos.iterdir())
    assert len(sources) >= 4, sources
    folder = tmp_path_factory.mktemp("photos")
    (folder / "sub").mkdir()
    for i in range(IMAGES):
        bgr = cv2.imread(str(sources[i % len(sources)]))
        h, w = bgr.shape[:2]
        crop = bgr[(i // len(sources)) * h // 10 :, : w - (i % 3) * w // 10]
        width = 80 + 8 * (i % 4)
        small = cv2.resize(crop, (width, width * crop.shape[0] // crop.shape[1]), interpolation=cv2.INTER_AREA)
        small = small[:, ::-1] if i % 2 else small
        cv2.imwrite(str(folder / ("sub" if i % 3 == 0 else ".") / f"img{i:02d}.png"), small)
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return folder


def run_demo(processes: int, *args: str) -> subprocess.CompletedProcess:
    return run_mseg(processes, "demo", *args)


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def manifest_parts(out: Path) -> list[dict]:
    """The lines of the processes' parts of the manifest (a run of several processes, before rank 0 merges)."""
    return [json.loads(line) for part in sorted(out.glob("manifest.rank*.jsonl")) for line in
            part.read_text().splitlines() if line.endswith("}")]  # fmt: skip


def grays(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*_gray.png"))}


def check_complete(out: Path) -> None:
    """Every image done once, the corrupt file failed once, nothing else in the manifest; parts merged, no leftover
    temporary files."""
    assert not list(out.glob("manifest.rank*")) and [p.name for p in out.rglob(".*")] == [".mseg-demo.lock"]
    lines = manifest(out)
    names = [line["name"] for line in lines]
    assert len(names) == len(set(names)) == IMAGES + 1
    assert {line["name"]: line["status"] for line in lines if line["status"] != "done"} == {"corrupt": "failed"}
    for line in lines:
        if line["status"] == "done":
            assert line["outputs"] == [line["name"] + "_gray.png"] and (out / line["outputs"][0]).exists()
            assert sum(line["histogram"].values()) == line["height"] * line["width"]
    assert len(grays(out)) == IMAGES


@pytest.fixture(scope="module")
def one_process(photos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one")
    result = run_demo(1, str(photos), "--out", str(out), *SMALL)
    assert result.returncode == 1, failure(result)
    assert f"{IMAGES} image(s)" in result.stdout and "1 failed" in result.stdout
    check_complete(out)
    return out


def test_two_processes_write_what_one_writes(photos, one_process, tmp_path):
    out = tmp_path / "two"
    result = run_demo(2, str(photos), "--out", str(out), *SMALL)
    # The corrupt image: reported by the process that met it, in the manifest and in rank 0's summary; exit 1.
    assert result.returncode == 1, failure(result)
    failed = [line for line in manifest(out) if line["status"] == "failed"]
    assert len(failed) == 1 and "corrupt.jpg: not a readable image" in failed[0]["error"]
    assert f"[rank {failed[0]['rank']}] skipped: " in result.stderr
    summaries = [line for line in result.stdout.splitlines() if "image(s)" in line]
    assert len(summaries) == 1, result.stdout  # one summary, from rank 0
    assert f"{IMAGES} image(s)" in summaries[0] and "2 process(es)" in summaries[0] and "1 failed" in summaries[0]
    assert "images/s" in summaries[0] and "corrupt.jpg" in result.stderr.split("input(s) failed")[1]
    check_complete(out)
    assert {line["rank"] for line in manifest(out)} == {0, 1}
    finished = [line["finished"] for line in manifest(out)]
    assert finished == sorted(finished) and all(f.endswith("Z") for f in finished)  # UTC, in the order they finished
    assert grays(out) == grays(one_process)  # byte-identical label maps
    # Resumed with another number of processes: nothing is redone, the corrupt file is tried (and fails) again.
    again = run_demo(1, str(photos), "--out", str(out), *SMALL)
    assert again.returncode == 1 and "0 image(s)" in again.stdout and f"{IMAGES} already done" in again.stdout
    check_complete(out)


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


@pytest.mark.slow  # two torchrun launches, one of them killed mid-run
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the worker processes through /proc")
def test_a_killed_run_resumes(photos, one_process, tmp_path):
    out = tmp_path / "killed"
    with open(tmp_path / "log.txt", "w") as log:
        proc = subprocess.Popen(
            mseg_command(2, "demo", str(photos), "--out", str(out), *SMALL), stdout=log, stderr=log, env=mseg_env()
        )
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            if len(manifest_parts(out)) >= 3:  # each process appends to its part; rank 0 merges them at the end
                break
            time.sleep(0.01)
        workers = [c for c in children(proc.pid) if "mseg_semantic" in Path(f"/proc/{c}/cmdline").read_text()]
        assert proc.poll() is None and len(workers) == 2, (tmp_path / "log.txt").read_text()
        os.kill(workers[1], signal.SIGKILL)
        assert proc.wait(timeout=120) != 0
    before = manifest_parts(out)
    assert 3 <= len(before) < IMAGES + 1 and not (out / "manifest.jsonl").exists()  # stopped midway, not merged
    done_before = sum(line["status"] == "done" for line in before)
    # What a writer killed midway leaves: a temporary file of an atomic write, a partial video.
    (out / "sub").mkdir(exist_ok=True)
    (out / "sub" / ".img03_gray.png.k1ll3d_x.tmp").write_bytes(b"half a png")
    (out / ".clip_overlay.partial.mp4").write_bytes(b"half a video")
    result = run_demo(2, str(photos), "--out", str(out), *SMALL)
    assert result.returncode == 1, failure(result)
    assert f"{IMAGES - done_before} image(s)" in result.stdout and f"{done_before} already done" in result.stdout
    # (The killed process may have left one of its own.)
    removed = re.search(r"removed (\d+) temporary file\(s\) an interrupted run left", result.stderr)
    assert removed and int(removed.group(1)) >= 2, result.stderr
    check_complete(out)
    assert grays(out) == grays(one_process)


def test_images_batched_together(photos, one_process, tmp_path, capsys):
    """--batch-windows 4: four images per forward passes; the label maps are the one-by-one ones up to the rounding
    of batched convolutions, and the manifest is as complete."""
    from mseg_semantic.cli import main
    from mseg_semantic.fileio import read_label

    out = tmp_path / "batched"
    code = main(["demo", str(photos), "--out", str(out), *SMALL, "--batch-windows", "4"])
    assert code == 1 and f"{IMAGES} image(s)" in capsys.readouterr().out
    check_complete(out)
    for name in grays(one_process):
        a, b = read_label(one_process / name), read_label(out / name)
        assert (a == b).mean() >= 0.999, name
