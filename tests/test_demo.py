"""`mseg demo` end to end on real images and video (the bundled examples and photos made from them, see
conftest.example_photos), and every bad input it must report clearly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from mseg_semantic.cli import main
from mseg_semantic.errors import InputError
from mseg_semantic.examples import example_path
from mseg_semantic.fileio import read_label
from mseg_semantic.taxonomy import class_names
from mseg_semantic.visualize import colorize

FAST = ["--config", "360_ss", "--base-size", "96", "--crop-size", "97", "--quiet"]


def demo(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["demo", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_demo_on_real_images(example_photos, tiny_checkpoint, tmp_path, capsys):
    images = [example_photos / "street.jpg", example_photos / "street_wide.png"]  # a JPEG and a palette PNG
    code, out, err = demo(capsys, *map(str, images), "--model", str(tiny_checkpoint), "--out", str(tmp_path), *FAST)
    assert code == 0, err
    assert "2 image(s)" in out and "universal" in err
    for image in images:
        rgb = cv2.imread(str(image))
        gray = read_label(tmp_path / f"{image.stem}_gray.png")
        assert gray.shape == rgb.shape[:2] and gray.dtype == np.uint8 and gray.max() < 194
        color = cv2.imread(str(tmp_path / f"{image.stem}_color.png"))[:, :, ::-1]
        assert (color == colorize(gray, 194)).all()
        overlay = cv2.imread(str(tmp_path / f"{image.stem}_overlay.jpg"))
        assert overlay.shape == rgb.shape
    # A second run finds everything done; --overwrite recomputes.
    code, out, _ = demo(capsys, *map(str, images), "--model", str(tiny_checkpoint), "--out", str(tmp_path), *FAST)
    assert code == 0 and "0 image(s)" in out and "2 already done" in out
    code, out, _ = demo(capsys, str(images[0]), "--model", str(tiny_checkpoint), "--out", str(tmp_path),
                        "--overwrite", *FAST)  # fmt: skip
    assert code == 0 and "1 image(s)" in out


def test_demo_folder_mirrors_subfolders_and_reports_bad_files(example_photos, tiny_checkpoint, tmp_path, capsys):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    shutil.copy(example_photos / "street.jpg", src / "a.JPG")
    shutil.copy(example_photos / "street.jpg", src / "sub" / "b.jpeg")
    (src / "sub" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (src / "empty.jpg").write_bytes(b"")
    (src / "notes.txt").write_text("ignored: not an image")
    out = tmp_path / "out"
    code, stdout, err = demo(capsys, str(src), "--model", str(tiny_checkpoint), "--out", str(out),
                             "--taxonomy", "camvid-11", *FAST)  # fmt: skip
    assert code == 1
    assert "2 image(s)" in stdout
    assert "broken.png: not a readable image" in err and "empty.jpg: empty file" in err and "Traceback" not in err
    assert read_label(out / "a_gray.png").max() < 11
    assert (out / "sub" / "b_overlay.jpg").exists()
    assert not list(out.rglob("broken*")) and [p.name for p in out.rglob(".*")] == [".mseg-demo.lock"]


def test_demo_on_real_video(tiny_checkpoint, tmp_path, capsys):
    video = example_path("freeway")  # 1280x720, 25 fps, 38 frames
    code, out, err = demo(capsys, str(video), "--model", str(tiny_checkpoint), "--out", str(tmp_path),
                          "--max-frames", "3", "--save-frames", *FAST)  # fmt: skip
    assert code == 0, err
    assert "3 video frame(s)" in out
    result = cv2.VideoCapture(str(tmp_path / f"{video.stem}_overlay.mp4"))
    assert result.isOpened()
    assert int(result.get(cv2.CAP_PROP_FRAME_COUNT)) == 3 and result.get(cv2.CAP_PROP_FPS) == pytest.approx(25)
    ok, frame = result.read()
    assert ok and frame.shape == (720, 1280, 3)
    frames = sorted((tmp_path / f"{video.stem}_frames").glob("*_gray.png"))
    assert [f.name for f in frames] == ["000000_gray.png", "000001_gray.png", "000002_gray.png"]


def test_unreadable_video_is_reported(tiny_checkpoint, tmp_path, capsys):
    (tmp_path / "clip.mp4").write_bytes(b"not a video at all" * 10)
    code, _, err = demo(capsys, str(tmp_path / "clip.mp4"), "--model", str(tiny_checkpoint), "--out",
                        str(tmp_path / "o"), *FAST)  # fmt: skip
    assert code == 1 and "clip.mp4" in err and "Traceback" not in err
    assert not list((tmp_path / "o").glob("*.mp4"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{tmp}/missing.jpg"], "missing.jpg: no such file or folder"),
        (["{tmp}/emptydir"], "emptydir: folder contains no images or videos"),
        (["{tmp}/notes.txt"], "notes.txt: not an image or video file"),
        (["{img}", "--taxonomy", "camvid11"], "unknown taxonomy 'camvid11'"),
        (["{img}", "--model-taxonomy", "camvid-11"], "194 output classes but taxonomy 'camvid-11' has 11"),
        (["{img}", "--taxonomy", "ade20k-150"], "test taxonomies"),
        (["{img}", "--out", "{tmp}/notes.txt"], "cannot create the output folder"),
        (["{img}", "--config", "999_ms"], "unknown inference preset '999_ms'"),
        (["{img}", "--outputs", "gray,heat"], "--outputs: unknown output 'heat'; choose from gray,color,overlay,"),
        (["{img}", "--probs-topk", "3"], "--probs-topk applies to the probs output"),
        (["{img}", "--outputs", "probs", "--probs-topk", "195"], "--probs-topk 195: universal has only 194 classes"),
        (["--inputs-from", "{tmp}/nolist.txt"], "nolist.txt: no such list file"),
    ],
)
def test_user_mistakes_give_one_clear_line(args, message, tiny_checkpoint, tmp_path, capsys):
    (tmp_path / "emptydir").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    image = tmp_path / "img.png"
    cv2.imwrite(str(image), np.zeros((20, 30, 3), np.uint8))
    argv = [a.format(tmp=tmp_path, img=image) for a in args]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    code, _, err = demo(capsys, *FAST, *argv, "--model", str(tiny_checkpoint))  # later options win
    assert code == 2
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_inputs_are_checked_once_before_the_model_loads(example_photos, tiny_checkpoint, tmp_path, capsys, monkeypatch):
    """The CLI collects the inputs once (before it loads the model); the run works from that job."""
    import mseg_semantic.cli.demo as cli_demo
    import mseg_semantic.inference.demo as demo_module

    calls: list[tuple] = []
    collect = demo_module.collect_inputs

    def counted(*args: object, **kwargs: object) -> list:
        calls.append(args)
        return collect(*args, **kwargs)

    monkeypatch.setattr(cli_demo, "collect_inputs", counted)
    monkeypatch.setattr(demo_module, "collect_inputs", counted)
    code, out, err = demo(capsys, str(example_photos / "street.jpg"), "--model", str(tiny_checkpoint), "--out",
                          str(tmp_path), *FAST)  # fmt: skip
    assert code == 0 and "1 image(s)" in out, err
    assert len(calls) == 1


def test_missing_or_bad_model_file(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no --out: the default ./mseg_demo must not land in the caller's folder
    image = tmp_path / "img.png"
    cv2.imwrite(str(image), np.zeros((20, 30, 3), np.uint8))
    code, _, err = demo(capsys, str(image), "--model", str(tmp_path / "nope.pth"), "--arch", "hrnet_w48", *FAST)
    assert code == 2 and "nope.pth" in err
    (tmp_path / "page.pth").write_text("<!DOCTYPE html><html>Google Drive</html>")
    code, _, err = demo(capsys, str(image), "--model", str(tmp_path / "page.pth"), "--arch", "hrnet_w48", *FAST)
    assert code == 2 and "page.pth" in err and "Traceback" not in err


def test_original_command_line_still_works(example_photos, tiny_checkpoint, tmp_path):
    repo = Path(__file__).resolve().parents[1]
    script = repo / "mseg_semantic" / "tool" / "universal_demo.py"
    config = repo / "mseg_semantic" / "config" / "test" / "default_config_360_ms.yaml"
    cmd = [sys.executable, "-u", str(script), f"--config={config}", "model_name", "tiny", "model_path",
           str(tiny_checkpoint), "input_file", str(example_photos / "street.jpg"), "scales", "[1.0]", "base_size", "96",
           "test_h", "97", "test_w", "97"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "temp_files" / "tiny_universal_ss" / "96" / "street_gray.png").exists()
    bad = subprocess.run([*cmd[:4], "not_a_key", "1"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "error: command line: key 'not_a_key': unknown key (known: " in bad.stderr
    bad = subprocess.run([*cmd[:4], "base_size", "big"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "error: command line: key 'base_size': expected int, got 'big'" in bad.stderr


def test_class_names_in_overlay_come_from_the_output_taxonomy():
    from mseg_semantic.visualize import label_points

    labels = np.zeros((60, 80), np.uint8)
    labels[:, 40:] = 2
    labels[20:30, 5:15] = 10  # a small region inside class 0
    points = label_points(labels, min_area=50)
    assert [p.class_id for p in points] == [2, 0, 10]  # biggest region first
    for p in points:
        assert labels[p.y, p.x] == p.class_id  # the name goes inside its own region
    assert class_names("camvid-11")[points[2].class_id] == "Bicyclist"


def test_truncated_video_is_reported_with_the_frame_counts(tiny_checkpoint, tmp_path, capsys):
    """A video whose file ends early: the frames that decode are segmented, the run says how many and exits 1."""
    rng = np.random.default_rng(0)
    writer = cv2.VideoWriter(str(tmp_path / "full.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for _ in range(20):
        writer.write(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    writer.release()
    data = (tmp_path / "full.avi").read_bytes()
    (tmp_path / "clip.avi").write_bytes(data[: len(data) * 6 // 10])  # the header still announces 20 frames
    code, out, err = demo(capsys, str(tmp_path / "clip.avi"), "--model", str(tiny_checkpoint), "--out",
                          str(tmp_path / "o"), *FAST)  # fmt: skip
    assert code == 1, err
    decoded = int(cv2.VideoCapture(str(tmp_path / "o" / "clip_overlay.mp4")).get(cv2.CAP_PROP_FRAME_COUNT))
    assert 0 < decoded < 20 and f"{decoded} video frame(s)" in out
    assert f"only {decoded} of the 20 frames the container announces could be decoded" in err


# ---------------------------------------------------------------------------- outputs, manifest, list files
def small_photo(width: int = 120) -> np.ndarray:
    """The bundled dashcam photo, ``width`` pixels wide."""
    rgb = cv2.imread(str(example_path("dashcam")))[:, :, ::-1]
    return np.ascontiguousarray(cv2.resize(rgb, (width, width * rgb.shape[0] // rgb.shape[1]), cv2.INTER_AREA))


@pytest.mark.parametrize(("head", "taxonomy"), [("full", None), ("low_res", "camvid-11"), ("low_res", None)])
def test_confidence_and_probs_agree_with_predict_proba(tiny_checkpoint, head, taxonomy):
    from mseg_semantic import Segmenter

    seg = Segmenter(tiny_checkpoint, config="360_ms", base_size=64, scales=[0.75, 1.0], crop_size=65, head=head,
                    output_taxonomy=taxonomy)  # fmt: skip
    rgb = small_photo()
    proba = seg.predict_proba(rgb)
    labels, confidence = seg.predict(rgb, return_confidence=True)
    assert (labels == seg.predict(rgb)).all() and (labels == proba.argmax(axis=0)).all()
    assert confidence.dtype == np.float32 and (confidence == proba.max(axis=0)).all()
    full = seg.predict_outputs([rgb, rgb], probs=True, confidence=True)
    top = seg.predict_outputs([rgb], probs=True, topk=3)[0]
    assert full[0].probs.shape == (*rgb.shape[:2], seg.num_classes) and full[0].probs.dtype == np.float16
    assert (full[0].probs == proba.transpose(1, 2, 0).astype(np.float16)).all()
    assert (full[1].probs == full[0].probs).all() and (full[1].labels == labels).all()
    order = np.argsort(-proba, axis=0, kind="stable")[:3].transpose(1, 2, 0)
    assert top.ids.dtype == np.uint8 and (top.ids == order).all() and top.confidence is None
    assert (top.probs == np.take_along_axis(proba.transpose(1, 2, 0), order, axis=2).astype(np.float16)).all()
    with pytest.raises(InputError, match="top-k must lie in 1"):
        seg.predict_outputs([rgb], probs=True, topk=seg.num_classes + 1)


def test_demo_confidence_probs_and_manifest(tiny_checkpoint, tmp_path, capsys):
    from mseg_semantic import Segmenter
    from mseg_semantic.inference.demo import confidence_values

    src = tmp_path / "in"
    src.mkdir()
    rgb = small_photo()
    cv2.imwrite(str(src / "street.png"), rgb[:, :, ::-1])
    (src / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    out = tmp_path / "out"
    args = [str(src), "--model", str(tiny_checkpoint), "--out", str(out), *FAST]
    code, stdout, err = demo(capsys, *args, "--outputs", "gray,confidence,probs", "--probs-topk", "2")
    assert code == 1 and "1 image(s)" in stdout and "1 failed" in stdout and "broken.jpg: not a readable" in err
    written = sorted(p.name for p in out.iterdir() if p.name != ".mseg-demo.lock")
    assert written == ["manifest.jsonl", "street_confidence.png", "street_gray.png", "street_probs.npz"]
    seg = Segmenter(tiny_checkpoint, config="360_ss", base_size=96, crop_size=97)
    proba = seg.predict_proba(rgb)
    confidence = read_label(out / "street_confidence.png")
    assert confidence.dtype == np.uint16 and (confidence == confidence_values(proba.max(axis=0))).all()
    assert np.abs(confidence / 65535 - proba.max(axis=0)).max() <= 0.5 / 65535 + 1e-7
    with np.load(out / "street_probs.npz") as npz:
        assert npz["probs"].shape == (*rgb.shape[:2], 2) and npz["ids"].dtype == np.uint8
        assert (npz["ids"][:, :, 0] == read_label(out / "street_gray.png")).all()
        assert (npz["probs"][:, :, 0] == proba.max(axis=0).astype(np.float16)).all()
        assert len(npz["class_names"]) == 194 and str(npz["taxonomy"]) == "universal"
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    by_name = {line["name"]: line for line in lines}
    assert len(lines) == 2 and by_name["broken"]["status"] == "failed"
    assert "broken.jpg: not a readable" in by_name["broken"]["error"]
    done = by_name["street"]
    assert done["status"] == "done"
    assert done["outputs"] == ["street_gray.png", "street_confidence.png", "street_probs.npz"]
    assert (done["height"], done["width"]) == rgb.shape[:2] and done["seconds"] > 0
    counts = np.bincount(proba.argmax(axis=0).ravel(), minlength=194)
    assert done["histogram"] == {name: int(counts[i]) for i, name in enumerate(class_names("universal")) if counts[i]}
    # A rerun trusts the manifest; the broken file fails again and the manifest keeps one line per input.
    code, stdout, _ = demo(capsys, *args, "--outputs", "gray,confidence,probs", "--probs-topk", "2")
    assert code == 1 and "0 image(s)" in stdout and "1 already done" in stdout
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 2
    # Other settings, or an output missing, redo the image.
    code, stdout, _ = demo(capsys, *args, "--outputs", "gray,probs")
    assert "1 image(s)" in stdout
    with np.load(out / "street_probs.npz") as npz:
        assert npz["probs"].shape == (*rgb.shape[:2], 194) and "ids" not in npz
    (out / "street_gray.png").unlink()
    code, stdout, _ = demo(capsys, *args, "--outputs", "gray,probs")
    assert "1 image(s)" in stdout and (out / "street_gray.png").exists()


def test_inputs_from_a_list_file(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for folder in ("a/x", "b"):
        (tmp_path / folder).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / folder / "same.jpg"), small_photo(width=64)[:, :, ::-1])
    (tmp_path / "list.txt").write_text("# photos\na/x/same.jpg\n\n" + str(tmp_path / "b" / "same.jpg") + "\n")
    code, stdout, err = demo(capsys, "--inputs-from", "list.txt", "--model", str(tiny_checkpoint), "--out", "o",
                             "--outputs", "gray", *FAST)  # fmt: skip
    assert code == 0, err
    assert "2 image(s)" in stdout
    assert sorted(p.relative_to(tmp_path / "o").as_posix() for p in (tmp_path / "o").rglob("*.png")) == [
        "a/x/same_gray.png", "b/same_gray.png"]  # fmt: skip
    (tmp_path / "bad.txt").write_text("a/x/same.jpg\nb/missing.jpg\n")
    code, _, err = demo(capsys, "--inputs-from", "bad.txt", "--model", str(tiny_checkpoint), *FAST)
    assert code == 2 and "bad.txt:2: b/missing.jpg: no such file" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "dir.txt").write_text("a\n")
    code, _, err = demo(capsys, "--inputs-from", "dir.txt", "--model", str(tiny_checkpoint), *FAST)
    assert code == 2 and "dir.txt:1: a: is a folder" in err
    # Two files that would write the same outputs are refused.
    code, _, err = demo(capsys, "a/x/same.jpg", "b/same.jpg", "--model", str(tiny_checkpoint), *FAST)
    assert code == 2 and "would both be written as" in err
