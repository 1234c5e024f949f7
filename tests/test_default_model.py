"""The model that ships inside the package: found offline by name, the default of `mseg demo` and `mseg eval`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from mseg_semantic import zoo
from mseg_semantic.cli import main
from mseg_semantic.examples import example_path
from mseg_semantic.fileio import read_label
from mseg_semantic.models import read_metadata
from mseg_semantic.taxonomy import class_names


def test_bundled_model_is_in_the_package_with_its_metadata(tmp_path, monkeypatch):
    monkeypatch.setenv("MSEG_HOME", str(tmp_path / "empty-cache"))  # nothing cached, nothing downloaded
    path = zoo.fetch("camvid11-compact")
    assert path.is_file() and path.suffix == ".safetensors"
    assert path.stat().st_size <= 20_000_000
    assert zoo.fetch("default") == path and zoo.DEFAULT_MODEL == "camvid11-compact"
    meta = read_metadata(path)
    assert meta["taxonomy"] == "camvid-11" and meta["arch"] == "hrnet" and meta["num_classes"] == "11"
    assert "camvid-11" in meta["training_recipe"] and "mseg_semantic train camvid11" in meta["training_command"]
    metrics = json.loads(meta["metrics"])
    assert any(key.startswith("camvid-11 val") for key in metrics)
    assert not (tmp_path / "empty-cache").exists()
    model = zoo.load_model()  # no name: the bundled model
    assert model.num_classes == 11 and not model.training


def test_demo_example_without_model_uses_the_bundled_model(tmp_path):
    """The README's first example, as a user runs it: a fresh process, no network, no cache."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MSEG_HOME": str(tmp_path / "cache")}
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "mseg_semantic", "demo", "--example", "--out", str(out), "--quiet"],
                          capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "camvid11-compact" in done.stderr and "--model mseg-3m" in done.stderr
    assert "Traceback" not in done.stderr
    image = cv2.imread(str(example_path("dashcam")))
    gray = read_label(out / "dashcam_comma2k19_gray.png")
    assert gray.shape == image.shape[:2] and gray.max() < 11
    # A trained model, not noise: the sky of the photo's top rows is found, and a few classes share the image.
    names = class_names("camvid-11")
    top = gray[: gray.shape[0] // 8, gray.shape[1] // 4 : gray.shape[1] // 2]
    assert (top == names.index("Sky")).mean() > 0.8
    assert (np.bincount(gray.ravel(), minlength=11) > 0.005 * gray.size).sum() >= 3
    assert (out / "dashcam_comma2k19_color.png").is_file() and (out / "dashcam_comma2k19_overlay.jpg").is_file()
    assert not (tmp_path / "cache").exists()


def test_demo_needs_an_input_or_an_example(tmp_path, capsys):
    code = main(["demo", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code != 0 and "--example" in err
    assert not (tmp_path / "out").exists()


def test_zoo_lists_the_bundled_model(capsys):
    assert main(["zoo", "info", "camvid11-compact"]) == 0
    out = capsys.readouterr().out
    assert "bundled with the package" in out and "camvid-11" in out


@pytest.mark.slow
def test_eval_default_model_reports_the_recorded_val_miou(camvid11: Path, tmp_path, capsys):
    """`mseg eval` with no --model scores the bundled model; the result equals the figure it ships with."""
    root = camvid11
    code = main(["eval", "--dataset", "camvid-11", "--data-root", str(root), "--list", str(root / "val.txt"),
                 "--out", str(tmp_path / "eval"), "--quiet"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    measured = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    recorded = json.loads(read_metadata(zoo.fetch("camvid11-compact"))["metrics"])
    assert measured["config"]["name"] == "compact_360_ss"  # the bundled model's own preset
    assert measured["mIoU"] == pytest.approx(recorded["camvid-11 val (compact_360_ss)"]["mIoU"], abs=0.01)
    assert f"mIoU {measured['mIoU']:.2f}" in captured.out


def test_torch_hub_bundled_entry_point():
    import torch

    repo = Path(__file__).resolve().parents[1]
    model = torch.hub.load(str(repo), "camvid11_compact", source="local")
    bare = torch.hub.load(str(repo), "camvid11_compact", source="local", pretrained=False)
    assert model.num_classes == bare.num_classes == 11
    assert model.state_dict().keys() == bare.state_dict().keys()
    assert not torch.equal(model.state_dict()["last_layer.3.weight"], bare.state_dict()["last_layer.3.weight"])


def test_segmenter_from_the_bundled_model_in_one_line():
    """Issue #15: `Segmenter(load_model())` and `Segmenter("camvid11-compact")` once raised; `Segmenter()` too."""
    from mseg_semantic import Segmenter, load_model

    image = np.full((36, 48, 3), 120, np.uint8)
    for segmenter in (Segmenter(load_model()), Segmenter("camvid11-compact"), Segmenter()):
        # The taxonomy and the preset come with the model.
        assert segmenter.model_taxonomy == segmenter.output_taxonomy == "camvid-11"
        assert segmenter.config.name == "compact_360_ss" and segmenter.num_classes == 11
        labels = segmenter.predict(image)
        assert labels.shape == (36, 48) and labels.max() < 11
    explicit = Segmenter("default", config="360_ss", model_taxonomy="camvid-11")
    assert explicit.config.name == "360_ss"  # what the caller says wins


def test_the_loaded_bundled_model_carries_its_taxonomy_and_preset():
    import torch

    from mseg_semantic import load_model

    model = load_model()
    assert (model.taxonomy, model.preset) == ("camvid-11", "compact_360_ss")
    model = model.to(torch.device("cpu")).eval().train(False)  # plain attributes: moving the module keeps them
    assert (model.taxonomy, model.preset) == ("camvid-11", "compact_360_ss")
    by_path = load_model(zoo.fetch("camvid11-compact"))  # the file itself: taxonomy recorded, preset of its zoo name
    assert (by_path.taxonomy, by_path.preset) == ("camvid-11", "compact_360_ss")
