"""``mseg export``: ONNX and OpenVINO files of the bundled model, run by the runtimes themselves, against our logits.

The exports are the slow part (5-15 s each on the 2-core development machine), so each kind is made once per module
by the command line, as a user would make it, and shared: a dynamic fp32 ONNX file, a dynamic ``--low-res`` one, a
static OpenVINO file, and a static int8 ONNX file.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import example_frame

from mseg_semantic.cli import main
from mseg_semantic.errors import InputError
from mseg_semantic.examples import example_path
from mseg_semantic.export import read_metadata, require, tensor_shapes
from mseg_semantic.fileio import read_image
from mseg_semantic.normalization import MEAN_RGB, STD_RGB, normalize
from mseg_semantic.taxonomy import class_names

EXPORT_DOC = Path(__file__).resolve().parents[1] / "docs" / "export.md"

runtimes = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxscript", "onnxruntime", "openvino")),
    reason='needs the runtimes: pip install -e ".[dev]"',
)


def export(*argv: str) -> str:
    """Run ``mseg export ARGV`` in this process; its standard output (the command must succeed)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(["export", *map(str, argv)])
    assert status == 0, out.getvalue()
    return out.getvalue()


# ---------------------------------------------------------------------------- the model and real inputs
@pytest.fixture(scope="module")
def model():
    from mseg_semantic import load_model

    return load_model()  # the bundled camvid11-compact (hrnet, camvid-11, preset compact_360_ss)


def _inputs(image: np.ndarray, height: int, width: int, batch: int) -> torch.Tensor:
    """The image resized to (height, width) and normalised, with its mirror image as the second of a batch of 2."""
    import cv2

    x = normalize(torch.from_numpy(cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)).permute(2, 0, 1))
    return torch.stack([x, x.flip(-1)][:batch]).contiguous()


@pytest.fixture(scope="module")
def batches() -> list[torch.Tensor]:
    """Real network inputs at two sizes: batch 2 at an odd 97x130, batch 1 at the preset's 360x480 window."""
    image = read_image(example_path("dashcam"))
    return [_inputs(image, 97, 130, 2), _inputs(image, 360, 480, 1)]


def ours(model, x: torch.Tensor, low_res: bool = False) -> np.ndarray:
    with torch.no_grad():
        return (model(x, resize=False) if low_res else model(x)).numpy()


def onnxruntime_logits(path: Path, x: torch.Tensor) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})[0]


def openvino_logits(path: Path, x: torch.Tensor) -> np.ndarray:
    import openvino as ov

    # f32: OpenVINO would compute in bf16 on a CPU that has it (this development machine has AVX512-BF16).
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return compiled(x.numpy())[0]


# ---------------------------------------------------------------------------- the shared exports
@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def dynamic_onnx(folder: Path) -> tuple[Path, str]:
    path = folder / "camvid11.onnx"
    return path, export("--out", path)  # the defaults: the bundled model, fp32, dynamic, full-resolution logits


@pytest.fixture(scope="module")
def low_res_onnx(folder: Path) -> Path:
    path = folder / "low-res.onnx"
    export("camvid11-compact", "--out", path, "--low-res", "--dynamic")
    return path


@pytest.fixture(scope="module")
def static_openvino(folder: Path) -> tuple[Path, dict]:
    path = folder / "sub" / "static.xml"  # a folder that does not exist yet
    summary = export("--out", path, "--format", "openvino", "--input-size", "97x130", "--json")
    return path, json.loads(summary)


@pytest.fixture(scope="module")
def int8_onnx(folder: Path) -> Path:
    path = folder / "int8.onnx"
    path.write_bytes(b"an older export")  # replaced, since --overwrite says so
    # One photo calibrates in 2 s (its window and flip); the default, the bundled photo and clip, in 10 s. A static
    # file at the preset's window size exports in half the time of a dynamic one.
    photos = folder / "street-photos"
    photos.mkdir()
    shutil.copy(example_path("dashcam"), photos)
    export("--out", path, "--precision", "int8", "--calibrate", photos, "--input-size", "360x480", "--overwrite")
    return path


# ---------------------------------------------------------------------------- fp32: our logits to within 1e-4
@pytest.mark.slow
@runtimes
def test_fp32_onnx_logits_match_ours(model, batches, dynamic_onnx, folder):
    from mseg_semantic.export import onnx_to_openvino

    path, _ = dynamic_onnx
    as_openvino = onnx_to_openvino(path, folder / "converted" / "camvid11.xml")
    for x in batches:
        expected, logits = ours(model, x), onnxruntime_logits(path, x)
        assert logits.shape == expected.shape == (x.shape[0], 11, *x.shape[2:])
        np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4)
        np.testing.assert_allclose(openvino_logits(as_openvino, x), expected, rtol=0, atol=1e-4)


@pytest.mark.slow
@runtimes
def test_low_res_logits_match_ours_before_the_final_resize(model, batches, low_res_onnx, folder):
    from mseg_semantic.export import onnx_to_openvino

    as_openvino = onnx_to_openvino(low_res_onnx, folder / "converted" / "low-res.xml")
    for x in batches:
        expected = ours(model, x, low_res=True)
        assert expected.shape[2:] == (-(-x.shape[2] // 4), -(-x.shape[3] // 4))  # 97x130 -> 25x33
        np.testing.assert_allclose(onnxruntime_logits(low_res_onnx, x), expected, rtol=0, atol=1e-4)
        np.testing.assert_allclose(openvino_logits(as_openvino, x), expected, rtol=0, atol=1e-4)
    assert tensor_shapes(low_res_onnx) == {
        "image": ["N", 3, "H", "W"],
        "logits": ["N", 11, "(((H - 1)//4)) + 1", "(((W - 1)//4)) + 1"],
    }


@pytest.mark.slow
@runtimes
def test_static_openvino_export_runs_at_its_size(model, batches, static_openvino):
    path, summary = static_openvino
    assert [Path(f["path"]).name for f in summary["files"]] == ["static.xml", "static.bin"]
    assert summary["files"][1]["mb"] > 5  # the weights: 1.5M fp32 parameters
    assert summary["input"] == {"name": "image", "shape": [1, 3, 97, 130]}
    assert summary["output"] == {"name": "logits", "shape": [1, 11, 97, 130]}
    assert tensor_shapes(path) == {"image": [1, 3, 97, 130], "logits": [1, 11, 97, 130]}
    x = batches[0][:1]
    np.testing.assert_allclose(openvino_logits(path, x), ours(model, x), rtol=0, atol=1e-4)
    with pytest.raises(RuntimeError):
        openvino_logits(path, batches[1])  # 360x480 is not the file's size
    assert summary["metadata"]["input_size"] == "97x130" and summary["precision"] == "fp32"
    assert not list(path.parent.glob(".mseg-*"))  # the staging folders are gone


# ---------------------------------------------------------------------------- int8: agreement on a real image
@pytest.mark.slow
@runtimes
def test_int8_labels_agree_with_fp32_on_a_real_photo(model, int8_onnx):
    from mseg_semantic.inference import Segmenter

    assert int8_onnx.read_bytes()[:15] != b"an older export"
    metadata = read_metadata(int8_onnx)
    assert metadata["precision"] == "int8"
    assert metadata["calibration"] == "street-photos: the windows of preset compact_360_ss at 360x480"
    # What the preset feeds the network for a street scene that calibration (the dashcam photo) did not see, a frame
    # of the bundled freeway clip: two 360x480 windows of the 640x360 resized image, and their flips.
    image = example_frame()
    windows = np.concatenate(list(Segmenter(model, config="compact_360_ss").calibration_windows([image])))
    assert windows.shape == (4, 3, 360, 480)
    x = torch.from_numpy(windows)
    int8 = np.concatenate([onnxruntime_logits(int8_onnx, window[None]) for window in x])  # a static file: batch 1
    agreement = float((int8.argmax(1) == ours(model, x).argmax(1)).mean())
    # Measured 0.993 on this frame (int8 moves labels near class boundaries; 0.9745 on a Cityscapes street photo, and
    # 0.95-0.98 on six other photos with the default calibration, the bundled examples, and a dynamic file).
    assert agreement >= 0.90, agreement
    import onnx

    ops = {node.op_type for node in onnx.load(str(int8_onnx)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


# ---------------------------------------------------------------------------- what the files carry
@pytest.mark.slow
@runtimes
def test_metadata_is_read_back_from_both_formats(dynamic_onnx, static_openvino, low_res_onnx):
    names = class_names("camvid-11")
    for path, stride, size in ((dynamic_onnx[0], "1", "dynamic"), (static_openvino[0], "1", "97x130"),
                               (low_res_onnx, "4", "dynamic")):  # fmt: skip
        metadata = read_metadata(path)
        assert json.loads(metadata["class_names"]) == names and len(names) == 11
        assert metadata["taxonomy"] == "camvid-11" and metadata["num_classes"] == "11"
        np.testing.assert_allclose(json.loads(metadata["mean"]), MEAN_RGB, atol=1e-6)
        np.testing.assert_allclose(json.loads(metadata["std"]), STD_RGB, atol=1e-6)
        assert metadata["preset"] == "compact_360_ss"
        settings = json.loads(metadata["preset_settings"])
        assert settings == {"base_size": 360, "scales": [1.0], "crop_h": 360, "crop_w": 480, "flip": True,
                            "batched": False}  # fmt: skip
        assert (metadata["arch"], metadata["model"], metadata["precision"]) == ("hrnet", "camvid11-compact", "fp32")
        assert (metadata["output_stride"], metadata["input_size"]) == (stride, size)
        assert metadata["output"].startswith("logits: float32 (N, K, ")


@pytest.mark.slow
@runtimes
def test_summary_says_what_was_written_and_how_to_run_it(dynamic_onnx):
    path, text = dynamic_onnx
    size = path.stat().st_size / 1e6
    assert f"wrote {path} ({size:.1f} MB)" in text
    assert "ONNX, fp32, input size dynamic, logits at the input size" in text
    assert "input  image   float32 [N, 3, H, W]" in text and "output logits  float32 [N, 11, H, W]" in text
    assert "preset compact_360_ss (short side 360, scales [1.0], 360x480 windows and their flips)" in text
    assert f'session = ort.InferenceSession("{path}")' in text


@pytest.mark.slow
@runtimes
def test_the_docs_example_runs_the_file_without_our_package(model, dynamic_onnx, tmp_path):
    """The export page's ONNX Runtime example, run as it is written, in a process that imports neither us nor
    PyTorch."""
    text = EXPORT_DOC.read_text()
    code = next(block for block in re.findall(r"```python\n(.*?)```", text, re.S) if "onnxruntime" in block)
    image = example_path("dashcam")  # a PNG: PIL and OpenCV decode the same pixels
    code = code.replace('"camvid11.onnx"', json.dumps(str(dynamic_onnx[0])))
    # The page takes the bundled photo from our package; here the same file is named directly, so that nothing of
    # ours is imported.
    code = "".join(line + "\n" for line in code.splitlines() if "import example_path" not in line)
    code = code.replace('example_path("dashcam")', json.dumps(str(image)))
    code += (
        "import sys\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('mseg_semantic', 'torch')], 'imported us'\n"
        f"np.save({json.dumps(str(tmp_path / 'labels.npy'))}, labels)\n"
        "print(names[int(np.bincount(labels.ravel()).argmax())])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    labels = np.load(tmp_path / "labels.npy")
    rgb = read_image(image)
    expected = ours(model, normalize(torch.from_numpy(rgb).permute(2, 0, 1))[None]).argmax(1)[0]
    assert labels.shape == rgb.shape[:2] and (labels == expected).mean() > 0.999
    assert result.stdout.strip() in class_names("camvid-11")


# ---------------------------------------------------------------------------- mistakes: one line, exit 2
def test_an_existing_file_is_not_overwritten_unasked(tmp_path, capsys):
    mine = tmp_path / "mine.onnx"
    mine.write_bytes(b"the user's file")
    assert main(["export", "--out", str(mine)]) == 2
    assert mine.read_bytes() == b"the user's file"
    assert capsys.readouterr().err == f"mseg export: error: {mine} already exists; pass --overwrite to replace it\n"
    # An OpenVINO export writes NAME.bin too: that one is checked as well.
    (tmp_path / "ov.bin").write_bytes(b"weights")
    assert main(["export", "--out", str(tmp_path / "ov.xml")]) == 2
    assert "ov.bin already exists" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.onnx", "ov.bin"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--out", "m.pt"], "cannot tell the format from 'm.pt': name the file NAME.onnx (ONNX) or NAME.xml"),
        (["--out", "m.onnx", "--format", "openvino"], "an OpenVINO model is written as NAME.xml"),
        (["--out", "m.xml", "--format", "onnx"], "m.xml is an OpenVINO file name"),
        (["--out", "m.onnx", "--calibrate", "."], "--calibrate chooses the int8 calibration images: it needs"),
        (["--out", "m.onnx", "--precision", "int8", "--calibrate", "no-such-dir"], "no-such-dir does not exist"),
        (["--out", "m.onnx", "--preset", "nope"], "unknown inference preset 'nope'"),
        (["--out", "m.onnx", "--model-taxonomy", "nope"], "nope"),
        (["missing.safetensors", "--out", "m.onnx"], "missing.safetensors"),
        (["no-such-model", "--out", "m.onnx"], "unknown model 'no-such-model'"),
        (["--out", "m.onnx", "--output-taxonomy", "drive.tsv"], "drive.tsv: no such taxonomy file"),
    ],
)
def test_mistakes_are_one_line_and_write_nothing(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["export", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mseg export: error: ") and message in err and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--format", "tflite"], "argument --format: invalid choice: 'tflite'"),
        (["--precision", "fp16"], "argument --precision: invalid choice: 'fp16'"),
        (["--input-size", "97"], "expected HEIGHTxWIDTH in pixels, e.g. 360x480; got '97'"),
        (["--input-size", "97xW"], "expected HEIGHTxWIDTH"),
        (["--input-size", "16x16"], "both sides must be at least 32 pixels"),
        (["--input-size", "97x130", "--dynamic"], "not allowed with argument --input-size"),
    ],
)
def test_malformed_options_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["export", "--out", "m.onnx", *argv])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_a_missing_runtime_names_the_extra_that_installs_it():
    with pytest.raises(InputError, match=r'install it with: pip install "mseg-semantic\[.+\]"') as exc:
        require("a_module_that_does_not_exist", "testing")
    assert "testing needs the Python package 'a_module_that_does_not_exist'" in str(exc.value)


def test_help_shows_how_to_run_the_file(capsys):
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    text = capsys.readouterr().out
    assert 'session = ort.InferenceSession("camvid11.onnx")' in text
    assert 'logits = session.run(None, {"image": x})[0]' in text
    assert '"CPU", {"INFERENCE_PRECISION_HINT": "f32"})' in text


@runtimes
def test_an_output_taxonomy_baked_in_gives_its_summed_probabilities(model, batches, folder):
    drive = folder / "drive.tsv"
    rows = {"drivable": ["Road"], "obstacle": ["Car", "Pedestrian", "Bicyclist", "Fence", "SignSymbol", "Column_Pole"],
            "sky": ["Sky"], "other": ["Building", "Tree", "Sidewalk"]}  # fmt: skip
    drive.write_text("id\tname\tcamvid-11\n" + "".join(f"{i}\t{n}\t{'; '.join(c)}\n" for i, (n, c) in
                                                        enumerate(rows.items())))  # fmt: skip
    path = folder / "drive.onnx"
    summary = export("--out", path, "--output-taxonomy", drive, "--input-size", "97x130")
    assert "output probs   float32 [1, 4, 97, 130]" in summary and "probabilities of drive" in summary
    x = batches[0][:1]
    camvid = class_names("camvid-11")
    probs = torch.softmax(torch.from_numpy(ours(model, x)), dim=1)[0].numpy()
    expected = np.stack([probs[[camvid.index(c) for c in cs]].sum(0) for cs in rows.values()])
    got = onnxruntime_logits(path, x)[0]
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert (got.argmax(0) == expected.argmax(0)).mean() > 0.999
    meta = read_metadata(path)
    assert json.loads(meta["class_names"]) == list(rows) and meta["taxonomy"] == "drive"
    assert meta["model_taxonomy"] == "camvid-11" and meta["taxonomy_file"] == str(drive.resolve())
    assert meta["output"].startswith("probs: float32 (N, K, H, W), the softmax over the model's camvid-11 classes")
