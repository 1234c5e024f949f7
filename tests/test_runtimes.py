"""The onnxruntime and openvino backends: same algorithm, the network exported once and cached.

fp32 on a runtime must give the probabilities of PyTorch's fp32 path (the same arithmetic in another library);
bf16 and int8 are judged by label agreement with the trained bundled model on real photos, the way the README
states them. Exports go to a cache under a temporary ``MSEG_HOME`` shared by the module (an export takes seconds).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_hrnet

from mseg_semantic import load_model
from mseg_semantic.cli import main
from mseg_semantic.errors import InputError
from mseg_semantic.export import require
from mseg_semantic.fileio import read_image, read_label
from mseg_semantic.inference import Segmenter
from mseg_semantic.inference.network import cpu_has_native_bf16
from mseg_semantic.inference.runtimes import (
    available,
    backend_cache,
    calibration_images,
    resolve_backend,
    weights_digest,
)

SMALL = {"config": "360_ss", "base_size": 64, "crop_size": 97}
CPU = torch.device("cpu")


@pytest.fixture(scope="module", autouse=True)
def cache_home(tmp_path_factory):
    """Runtime files go to a fresh cache, not the user's."""
    home = tmp_path_factory.mktemp("mseg-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MSEG_HOME", str(home))
        yield home


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    return tiny_hrnet(11)


@pytest.fixture(scope="module")
def photos(example_photos: Path) -> list[np.ndarray]:
    return [read_image(example_photos / name) for name in ("street.jpg", "street_wide.png", "freeway.png")]


@pytest.mark.slow
def test_fp32_runtimes_give_pytorchs_probabilities(tiny, photos):
    image = photos[0][::3, ::3].copy()
    torch_probs = Segmenter(tiny, model_taxonomy="camvid-11", **SMALL).predict_proba(image)
    for backend in ("onnxruntime", "openvino"):
        seg = Segmenter(tiny, model_taxonomy="camvid-11", backend=backend, precision="fp32", **SMALL)
        assert (seg.backend, seg.precision, seg.model) == (backend, "fp32", None)
        probs = seg.predict_proba(image)
        assert probs.shape == torch_probs.shape
        assert np.abs(probs - torch_probs).max() < 1e-4, backend
        labels = seg.predict(image)
        assert (labels == torch_probs.argmax(0)).mean() > 0.999


@pytest.mark.slow  # exports to ONNX and converts to OpenVINO
def test_export_happens_once_per_weights(tiny, cache_home):
    notices: list[str] = []
    Segmenter(tiny, model_taxonomy="camvid-11", backend="onnxruntime", log=notices.append, **SMALL)
    folder = backend_cache(tiny)
    assert folder.parent == cache_home / "backends" and (folder / "fp32.onnx").is_file()
    before = (folder / "fp32.onnx").stat().st_mtime_ns
    notices.clear()
    Segmenter(tiny, model_taxonomy="camvid-11", backend="openvino", log=notices.append, **SMALL)
    assert notices == [] and (folder / "fp32.onnx").stat().st_mtime_ns == before  # reused, not re-exported

    # Other weights (a fine-tuned checkpoint of the same architecture) get their own folder: no stale file is reused.
    changed = tiny_hrnet(11, seed=1)
    assert weights_digest(changed) != weights_digest(tiny) and backend_cache(changed) != folder
    with torch.no_grad():
        changed.load_state_dict(tiny.state_dict())
    assert backend_cache(changed) == folder


@pytest.fixture(scope="module")
def compact_labels(photos) -> list[np.ndarray]:
    """The faithful labels of the trained bundled model on the photos."""
    seg = Segmenter()
    return [seg.predict(image) for image in photos]


def _agreement(seg: Segmenter, photos, reference) -> list[float]:
    return [float((seg.predict(image) == labels).mean()) for image, labels in zip(photos, reference, strict=True)]


@pytest.mark.slow
def test_bf16_and_int8_agreement_with_the_trained_model(photos, compact_labels):
    # Measured on this machine: OpenVINO bf16 99.6-99.8% per photo; int8 (calibrated on the bundled examples, first
    # and last convolution in float) 95-97.5% on these photos (98.4% mean over them and 8 CamVid val images; neither
    # entropy/percentile calibration, more float layers nor in-domain calibration images did better).
    model = load_model()
    if cpu_has_native_bf16():
        bf16 = Segmenter(model, backend="openvino", precision="bf16")
        assert min(_agreement(bf16, photos, compact_labels)) >= 0.99
    notices: list[str] = []
    for backend in ("onnxruntime", "openvino"):
        int8 = Segmenter(model, backend=backend, precision="int8", log=notices.append)
        assert int8.precision == "int8"
        agreement = _agreement(int8, photos, compact_labels)
        assert min(agreement) >= 0.93 and np.mean(agreement) >= 0.95, (backend, agreement)
    # Calibrated once: the second backend reused the int8 file the first made. (OpenVINO int8 runs in this process on
    # purpose: releasing OpenVINO's last Core used to unload its CPU plugin and leave a dangling signal handler, and
    # the training tests that run later in the same pytest process crashed at their next child process's exit.)
    assert sum("calibrating" in n for n in notices) == 1
    assert any(p.name.startswith("int8-360x480-") for p in backend_cache(model).iterdir())


@pytest.mark.slow
def test_fast_picks_the_fastest_installed_backend_that_keeps_99_percent(photos, compact_labels):
    seg = Segmenter(fast=True)
    expected = "openvino" if available("openvino") else "torch" if cpu_has_native_bf16() else "onnxruntime"
    assert seg.backend == expected
    assert min(_agreement(seg, photos, compact_labels)) >= 0.99
    # An explicit setting wins over fast: PyTorch stays PyTorch.
    assert Segmenter(fast=True, backend="torch").backend == "torch"


@pytest.mark.slow  # exports the model to ONNX and calibrates it
def test_calibration_on_a_users_folder(tiny, photos, tmp_path):
    folder = tmp_path / "calib"
    folder.mkdir()
    for index, image in enumerate(photos[:2]):
        import cv2

        cv2.imwrite(str(folder / f"{index}.jpg"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    images, key = calibration_images(folder)
    assert len(list(images())) == 2 and "2 files" in key
    notices: list[str] = []
    seg = Segmenter(tiny, model_taxonomy="camvid-11", backend="onnxruntime", precision="int8", calibration=str(folder),
                    log=notices.append, **SMALL)  # fmt: skip
    assert any(str(folder.resolve()) in n for n in notices)
    assert seg.predict(photos[0][::4, ::4].copy()).shape == photos[0][::4, ::4].shape[:2]
    windows = list(seg.calibration_windows(photos[:1], limit=5))
    assert len(windows) <= 5 and all(w.shape[:2] == (1, 3) and w.dtype == np.float32 for w in windows)

    with pytest.raises(InputError, match="does not exist"):
        calibration_images(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images or videos"):
        calibration_images(tmp_path / "empty")


def test_backend_and_precision_choices():
    assert resolve_backend("auto", "auto", torch.device("cuda")) == ("torch", "bf16") or not torch.cuda.is_available()
    assert resolve_backend("auto", "fp32", torch.device("cuda"))[0] == "torch"
    assert resolve_backend("auto", "auto", CPU, torch.nn.Conv2d(3, 3, 1))[0] == "torch"  # not one of our models
    assert resolve_backend("torch", "fp32", CPU) == ("torch", "fp32")
    assert resolve_backend("onnxruntime", "auto", CPU) == ("onnxruntime", "fp32")
    assert resolve_backend("openvino", "auto", CPU) == ("openvino", "bf16" if cpu_has_native_bf16() else "fp32")
    with pytest.raises(InputError, match="int8 needs backend onnxruntime or openvino"):
        resolve_backend("torch", "int8", CPU)
    with pytest.raises(InputError, match="runs precision fp32 or int8, not 'bf16'"):
        resolve_backend("onnxruntime", "bf16", CPU)
    with pytest.raises(InputError, match="runs on the CPU here"):
        resolve_backend("openvino", "fp32", torch.device("cuda"))
    with pytest.raises(InputError, match="compile=True compiles PyTorch's network"):
        Segmenter(tiny_hrnet(11), model_taxonomy="camvid-11", backend="onnxruntime", compile=True, **SMALL)
    with pytest.raises(InputError, match=r'pip install "mseg-semantic\[onnx\]"'):
        require("onnxruntime.not_a_module_of_it", "a test")


@pytest.mark.slow
def test_demo_command_line_with_backends(example_photos, tiny_checkpoint, tmp_path, capsys):
    image = str(example_photos / "street.jpg")
    small = ["--preset", "360_ss", "--base-size", "64", "--crop-size", "97", "--quiet"]
    code = main(["demo", image, "--model", str(tiny_checkpoint), *small, "--out", str(tmp_path / "torch")])
    assert code == 0
    code = main(["demo", image, "--model", str(tiny_checkpoint), *small, "--out", str(tmp_path / "ort"),
                 "--backend", "onnxruntime"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0 and "onnxruntime fp32" in err, err
    ours, theirs = (read_label(tmp_path / d / "street_gray.png") for d in ("torch", "ort"))
    assert (ours == theirs).mean() > 0.999

    calibration = tmp_path / "calib"
    calibration.mkdir()
    shutil.copy(image, calibration)
    code = main(["demo", image, "--model", str(tiny_checkpoint), *small, "--out", str(tmp_path / "int8"),
                 "--backend", "openvino", "--precision", "int8", "--calibrate", str(calibration)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0 and "openvino int8" in err and "calibrating int8 once" in err, err
    assert read_label(tmp_path / "int8" / "street_gray.png").shape == ours.shape

    code = main(["demo", image, "--model", str(tiny_checkpoint), *small, "--out", str(tmp_path / "x"),
                 "--backend", "onnxruntime", "--precision", "fp16"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "runs precision fp32 or int8, not 'fp16'" in err and "Traceback" not in err
    assert not (tmp_path / "x" / "street_gray.png").exists()
    code = main(["demo", image, *small, "--out", str(tmp_path / "y"), "--calibrate", str(tmp_path / "nothing"),
                 "--backend", "onnxruntime", "--precision", "int8"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "calibration folder" in err and "does not exist" in err


@pytest.mark.slow
def test_eval_records_the_backend(camvid11, tmp_path):
    """The evaluation's metrics.json carries how it was run (backend and precision are part of its settings)."""
    import json

    camvid = camvid11
    names = [line for line in (camvid / "val.txt").read_text().splitlines() if line.strip()][:1]
    listing = tmp_path / "one.txt"
    listing.write_text("\n".join(names) + "\n")
    out = tmp_path / "eval"
    code = main(["eval", "--dataset", "camvid-11", "--data-root", str(camvid), "--list", str(listing),
                 "--out", str(out), "--backend", "onnxruntime", "--quiet"])  # fmt: skip
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert "onnxruntime" in json.dumps(metrics)
    assert os.path.isfile(out / "results.txt")
