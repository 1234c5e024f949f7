"""Faults a hostile user provokes outside the dataset builder: a torn manifest line, outputs that cannot be written,
sizes nobody should type, checkpoints that do not fit their taxonomy. Each test fails on the code before its fix."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2

from mseg_semantic.cli import main
from mseg_semantic.examples import example_path

SMALL = ["--config", "360_ss", "--base-size", "64", "--crop-size", "65", "--quiet", "--outputs", "gray"]


def _inputs(folder: Path, count: int) -> Path:
    """``count`` small photos cut from the bundled dashcam example."""
    folder.mkdir(parents=True)
    photo = cv2.imread(str(example_path("dashcam")))
    for i in range(count):
        cv2.imwrite(str(folder / f"img{i}.png"), cv2.resize(photo[:, i * 40 :], (96, 64)))
    return folder


def _manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def test_a_torn_last_manifest_line_loses_no_input(tmp_path, tiny_checkpoint, capsys) -> None:
    """A full disk or a kill leaves half a line: the rerun's line for that input must not be glued onto it."""
    inputs, out = _inputs(tmp_path / "in", 3), tmp_path / "out"
    args = ["demo", str(inputs), "--model", str(tiny_checkpoint), "--out", str(out), *SMALL]
    assert main(args) == 0
    lines = (out / "manifest.jsonl").read_text().splitlines()
    last = json.loads(lines[-1])
    (out / "manifest.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])
    (out / f"{last['name']}_gray.png").unlink()  # that input's output never landed either
    capsys.readouterr()
    assert main(args) == 0
    captured = capsys.readouterr()
    assert f"{out / 'manifest.jsonl'}:3: an incomplete manifest line" in captured.err + captured.out
    records = _manifest(out)
    assert sorted(r["name"] for r in records) == ["img0", "img1", "img2"]
    assert all(r["status"] == "done" for r in records)


def test_demo_into_a_folder_it_cannot_write_is_one_line(tmp_path, tiny_checkpoint, capsys) -> None:
    inputs = _inputs(tmp_path / "in", 1)
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    code = main(["demo", str(inputs), "--model", str(tiny_checkpoint), "--out", str(blocked / "out"), *SMALL])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1, err
    assert str(blocked) in err
    shutil.rmtree(inputs)


def _limit_file_size(limit: int):
    """For a subprocess: files may not grow past ``limit`` bytes (write() fails with EFBIG, as on a full disk)."""

    def apply() -> None:
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_demo_that_cannot_write_an_output_says_which_and_a_rerun_finishes(tmp_path, tiny_checkpoint) -> None:
    """An output write that fails (here: a file-size limit, as a full disk does) is one line naming the file, leaves
    no temporary file, and the rerun finishes with every input in the manifest."""
    import subprocess
    import sys

    inputs, out = _inputs(tmp_path / "in", 3), tmp_path / "out"
    command = [sys.executable, "-m", "mseg_semantic", "demo", str(inputs), "--model", str(tiny_checkpoint), "--out",
               str(out), *SMALL[:-1], "gray,probs", "--probs-topk", "3"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, preexec_fn=_limit_file_size(2_000), timeout=300)
    assert done.returncode == 2, done.stderr
    error = done.stderr.strip().splitlines()[-1]
    assert "Traceback" not in done.stderr and error.startswith(f"mseg demo: error: {out}"), done.stderr
    assert "File too large" in error
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert sorted(r["name"] for r in _manifest(out)) == ["img0", "img1", "img2"]


def test_an_extremely_elongated_image_is_refused_with_its_size_and_the_others_go_on(
    tmp_path, tiny_checkpoint, capsys
) -> None:
    """A 20x2000 strip would be resized to 360x36,000 by a 360 preset (minutes, gigabytes): refused, named."""
    inputs = _inputs(tmp_path / "in", 1)
    cv2.imwrite(str(inputs / "strip.png"), cv2.resize(cv2.imread(str(inputs / "img0.png")), (20, 2000)))
    out = tmp_path / "out"
    code = main(["demo", str(inputs), "--model", str(tiny_checkpoint), "--out", str(out), *SMALL])
    captured = capsys.readouterr()
    assert code == 1
    assert "strip.png" in captured.out + captured.err
    assert "image of size 20x2000 is more than 25 times longer than it is wide" in captured.out + captured.err
    assert (out / "img0_gray.png").is_file() and not (out / "strip_gray.png").exists()


def test_export_refuses_an_unwritable_folder_before_loading_and_an_impossible_size(tmp_path, capsys) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    assert main(["export", "--out", str(blocked / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(blocked) in err and "exporting" not in err, err  # before the model loads
    assert main(["export", "--out", str(tmp_path / "m.onnx"), "--input-size", "100000x100000"]) == 2
    err = capsys.readouterr().err
    assert "input size 100000x100000 would need about" in err and "Traceback" not in err, err
    assert not list(tmp_path.glob("m.*")) and not list(tmp_path.glob(".mseg-export-*"))


def test_working_folders_of_killed_exports_are_removed(tmp_path) -> None:
    from mseg_semantic.inference.deploy import remove_dead_exports

    dead, live = tmp_path / ".mseg-export-999999999-abc", tmp_path / f".mseg-export-{os.getpid()}-x"
    for folder in (dead, live):
        folder.mkdir()
        (folder / "fp32.onnx").write_bytes(b"partial")
    remove_dead_exports(tmp_path)
    assert not dead.exists() and live.exists()


def test_convert_refuses_a_taxonomy_of_another_class_count(tmp_path, capsys) -> None:
    """A 194-class checkpoint converted with --taxonomy camvid-11 was written (264 MB) and refused by every later
    command; it is refused now, before anything is written."""
    import torch
    from conftest import TINY_HRNET, tiny_hrnet

    original = tmp_path / "original.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in tiny_hrnet(194).state_dict().items()}}, original)
    config = tmp_path / "tiny.yaml"
    config.write_text(json.dumps(TINY_HRNET))
    out = tmp_path / "out.safetensors"
    argv = ["convert", str(original), str(out), "--arch", "hrnet", "--config", str(config)]
    assert main([*argv, "--taxonomy", "camvid-11"]) == 2
    err = capsys.readouterr().err
    assert "the model has 194 output classes but taxonomy 'camvid-11' has 11" in err and not out.exists()
    assert main([*argv, "--taxonomy", "universal"]) == 0 and out.is_file()


def test_a_trained_model_records_the_preset_its_training_implies(tmp_path, capsys) -> None:
    """A run at short side 360 with 360x480 crops (camvid11's) records compact_360_ss, so `mseg demo --model` of
    its file does not fall back to the 6-scale 360_ms (about 50 times slower)."""
    import numpy as np
    import yaml
    from test_train_run import tiny_config

    from mseg_semantic import load_model
    from mseg_semantic.training.startup import implied_preset

    assert implied_preset(360, (360, 480)) == "compact_360_ss" and implied_preset(1080, (713, 713)) == "1080_ss"
    assert implied_preset(360, (473, 473)) == "360_ss" and implied_preset(96, (64, 96)) is None
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        cv2.imwrite(str(data / "images" / f"{i}.png"), rng.integers(0, 255, (360, 480, 3), dtype=np.uint8))
        cv2.imwrite(str(data / "labels" / f"{i}.png"), rng.integers(0, 11, (360, 480), dtype=np.uint8))
    (data / "train.txt").write_text("".join(f"images/{i}.png labels/{i}.png\n" for i in range(2)))
    config = tiny_config(data, data / "train.txt", max_iters=1, batch_size=2, checkpoint={"every": 1, "keep": 1},
                         transform={"short_size": 360, "crop": [360, 480]})  # fmt: skip
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert load_model(tmp_path / "run" / "model.safetensors").preset == "compact_360_ss"


def test_a_second_demo_on_one_output_folder_is_refused(tmp_path, tiny_checkpoint) -> None:
    """Two runs on one --out would delete each other's temporary files: the second is refused, naming the first."""
    import signal
    import subprocess
    import sys
    import time

    inputs, out = _inputs(tmp_path / "in", 4), tmp_path / "out"
    command = [sys.executable, "-m", "mseg_semantic", "demo", str(inputs), "--model", str(tiny_checkpoint), "--out",
               str(out), *SMALL]  # fmt: skip
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lock, deadline = out / ".mseg-demo.lock", time.monotonic() + 120
    while first.poll() is None and time.monotonic() < deadline and f'"pid": {first.pid}' not in _text(lock):
        time.sleep(0.002)
    first.send_signal(signal.SIGSTOP)
    try:
        assert f'"pid": {first.pid}' in _text(lock)
        second = subprocess.run(command, capture_output=True, text=True, timeout=300)
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 2 and f"another 'mseg demo' (pid {first.pid}" in second.stderr, second.stderr
    assert first.wait(timeout=300) == 0
    assert sorted(r["name"] for r in _manifest(out)) == [f"img{i}" for i in range(4)]


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
