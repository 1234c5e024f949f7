"""The model zoo against a local HTTP mirror on 127.0.0.1: download, cache, resume, refusal, offline; torch.hub."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mirror_server import serve

from mseg_semantic import CheckpointError, DownloadError, InputError
from mseg_semantic.cli import main
from mseg_semantic.models import build_model
from mseg_semantic.zoo import fetch, get_model_info, load_model, model_names

REPO = Path(__file__).resolve().parents[1]
NAME = "camvid-11-1m"  # HRNet-W48 with 11 classes


@pytest.fixture(scope="module")
def w48_checkpoint(tmp_path_factory) -> Path:
    """An HRNet-W48 (11 classes) checkpoint in the original layout, as the released files are."""
    torch.manual_seed(0)
    model = build_model("hrnet_w48", 11)
    path = tmp_path_factory.mktemp("weights") / f"{NAME}.pth"
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """(folder the mirror serves, its handler class: ``cut_next_at``, the recorded requests)."""
    with serve(tmp_path / "mirror") as handler:
        monkeypatch.setenv("MSEG_HOME", str(tmp_path / "cache"))
        monkeypatch.setenv("MSEG_MODEL_MIRROR", handler.url)
        yield handler.root, handler


def test_registry_covers_every_released_model():
    names = set(model_names())
    for name in ["mseg-1m", "mseg-3m-480p", "mseg-3m-720p", "mseg-3m", "mseg-unrelabeled-1m", "mseg-mgda-1m",
                 "mseg-naive-1m", "ade20k-150-1m", "bdd-1m", "cityscapes-19-1m", "coco-panoptic-133-1m", "idd-39-1m",
                 "mapillary-65-1m", "sunrgbd-37-1m", "voc2012-1m", "pascal-context-60-1m", "camvid-11-1m",
                 "kitti-19-1m", "scannet-20-1m"]:  # fmt: skip
        assert name in names
    assert get_model_info("mseg-3m-1080p").name == "mseg-3m"
    assert get_model_info("mseg-naive-baseline-1m").num_classes == 316
    assert get_model_info("voc2012-1m").num_classes == 21
    assert get_model_info("mseg-3m").published["camvid-11"] == 84.5
    with pytest.raises(InputError, match="Did you mean 'mseg-3m'"):
        get_model_info("mseg-3n")


def test_download_cache_hit_and_demo(mirror, w48_checkpoint, tmp_path, monkeypatch, capsys):
    root, _ = mirror
    (root / f"{NAME}.pth").symlink_to(w48_checkpoint)
    slim = fetch(NAME, progress=False)
    assert slim.suffix == ".safetensors" and slim.exists()
    folder = slim.parent
    assert (folder / f"{NAME}.pth.sha256").exists() and (folder / f"{NAME}.safetensors.sha256").exists()
    assert not list(folder.glob("*.part"))
    model = load_model(NAME)
    assert model.num_classes == 11 and not model.training
    reference = build_model("hrnet_w48", 11)
    reference.load_state_dict({k.removeprefix("module."): v for k, v in
                               torch.load(w48_checkpoint, weights_only=True)["state_dict"].items()})  # fmt: skip
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values(),
                                                 strict=True))  # fmt: skip
    # Cache hit: works with the mirror gone.
    monkeypatch.setenv("MSEG_MODEL_MIRROR", "http://127.0.0.1:9")
    assert fetch(NAME, progress=False) == slim
    import cv2
    import numpy as np

    image = tmp_path / "street.png"
    cv2.imwrite(str(image), np.full((40, 60, 3), 120, np.uint8))
    code = main(["demo", str(image), "--model", NAME, "--out", str(tmp_path / "out"), "--config", "360_ss",
                 "--base-size", "40", "--crop-size", "41", "--quiet"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "out" / "street_gray.png").exists()
    # A changed file is detected through its recorded sha256.
    with open(slim, "r+b") as handle:
        handle.seek(-4, 2)
        handle.write(b"\x00\x01\x02\x03")
    with pytest.raises(CheckpointError, match="does not match the sha256"):
        fetch(NAME, progress=False)


def test_interrupted_download_resumes(mirror, w48_checkpoint):
    root, handler = mirror
    (root / f"{NAME}.pth").symlink_to(w48_checkpoint)
    handler.cut_next_at = w48_checkpoint.stat().st_size // 3
    with pytest.raises(DownloadError, match="run again to resume"):
        fetch(NAME, progress=False)
    part = get_model_info(NAME)
    from mseg_semantic.zoo import model_dir

    partial = model_dir(part) / f"{NAME}.pth.part"
    assert partial.stat().st_size == w48_checkpoint.stat().st_size // 3
    fetch(NAME, progress=False)
    assert handler.ranges() == [f"bytes={w48_checkpoint.stat().st_size // 3}-"]
    assert (model_dir(part) / f"{NAME}.pth").read_bytes() == w48_checkpoint.read_bytes()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"<!DOCTYPE html><html><body>Google Drive - Virus scan warning</body></html>", "HTML"),
        (b"\x00garbage bytes that are not a checkpoint" * 100, "not a PyTorch or safetensors checkpoint"),
    ],
    ids=["html-page", "garbage"],
)
def test_bad_downloads_are_refused_and_not_cached(mirror, content, message):
    root, _ = mirror
    (root / f"{NAME}.pth").write_bytes(content)
    with pytest.raises(DownloadError, match=message):
        fetch(NAME, progress=False)
    from mseg_semantic.zoo import model_dir

    assert not any(model_dir(get_model_info(NAME)).glob("*"))  # nothing cached, no .part left to resume


def test_wrong_model_is_refused_with_its_class_count(mirror, tmp_path):
    root, _ = mirror
    model = build_model("hrnet_w48", 19)
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, root / f"{NAME}.pth")
    with pytest.raises(DownloadError, match="19"):
        fetch(NAME, progress=False)


def test_offline_failure_explains_the_manual_steps(mirror, monkeypatch, capsys):
    monkeypatch.setenv("MSEG_MODEL_MIRROR", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(DownloadError) as exc:
        fetch(NAME, progress=False)
    message = str(exc.value)
    assert "drive.google.com/file/d/1023eornZ2LP5NjDqIeunCIH35Ue38W8d" in message
    assert f"{NAME}.pth" in message and "MSEG_MODEL_MIRROR" in message
    assert main(["zoo", "download", NAME, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "mseg zoo: error:" in err and "Traceback" not in err


def test_zoo_cli(capsys):
    assert main(["zoo", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == len(model_names()) and rows[0]["name"] == "camvid11-compact" and rows[1]["name"] == "mseg-3m"
    assert main(["zoo", "info", "mseg-3m-720p", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["filename"] == "mseg-3m-720p.pth" and info["num_classes"] == 194 and info["arch"] == "hrnet_w48"
    assert main(["zoo", "info", "nope"]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err


def test_torch_hub_entry_points(mirror, w48_checkpoint):
    root, _ = mirror
    (root / f"{NAME}.pth").symlink_to(w48_checkpoint)
    model = torch.hub.load(str(REPO), "camvid_11_1m", source="local")
    assert model.num_classes == 11 and not model.training
    bare = torch.hub.load(str(REPO), "mseg_3m", source="local", pretrained=False)
    assert bare.num_classes == 194


@pytest.mark.slow
def test_fine_tuning_from_a_zoo_name(mirror, w48_checkpoint, camvid11, tmp_path, capsys):
    root, _ = mirror
    (root / f"{NAME}.pth").symlink_to(w48_checkpoint)
    camvid = camvid11
    out = tmp_path / "run"
    code = main(["train", "camvid11", "--data-root", str(camvid), "--out", str(out), "--max-iters", "1", "--quiet",
                 "--set", "model.arch=hrnet_w48", "model.hrnet=null", f"model.weights={NAME}", "batch_size=2",
                 "transform.short_size=65", "transform.crop=[65,65]", "val.every=0", "workers=0",
                 "precision=fp32", "channels_last=false"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    tuned = load_model(out / "model.safetensors")
    start = torch.load(w48_checkpoint, weights_only=True)["state_dict"]
    # One SGD step from the zoo weights: close to them, not equal (and far from a random initialisation).
    name = "last_layer.3.weight"
    delta = (tuned.state_dict()[name] - start[f"module.{name}"]).abs().max().item()
    assert 0 < delta < 0.05


@pytest.fixture(scope="module")
def w48_universal_checkpoint(tmp_path_factory) -> Path:
    """A universal (194 classes) HRNet-W48 checkpoint in the original layout, served as mseg-3m."""
    torch.manual_seed(1)
    model = build_model("hrnet_w48", 194)
    path = tmp_path_factory.mktemp("weights") / "mseg-3m.pth"
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


@pytest.mark.slow
def test_segmenter_from_a_zoo_name(mirror, w48_universal_checkpoint, w48_checkpoint):
    """`Segmenter("mseg-3m")`: downloaded once (here from the local mirror), with the zoo's taxonomy and preset."""
    import numpy as np

    from mseg_semantic import Segmenter
    from mseg_semantic import load_model as top_level_load_model

    root, _ = mirror
    (root / "mseg-3m.pth").symlink_to(w48_universal_checkpoint)
    (root / f"{NAME}.pth").symlink_to(w48_checkpoint)
    segmenter = Segmenter("mseg-3m")
    assert segmenter.model_taxonomy == "universal" and segmenter.num_classes == 194
    assert segmenter.config.name == "360_ms"  # the zoo's recommended preset
    assert Segmenter("mseg-3m", output_taxonomy="camvid-11").class_names[0] == "Building"
    oracle = top_level_load_model(NAME)
    assert (oracle.taxonomy, oracle.preset, oracle.num_classes) == ("camvid-11", "1080_ss", 11)
    small = Segmenter(oracle, config="360_ss", base_size=32, crop_size=33)
    assert small.model_taxonomy == "camvid-11"
    assert small.predict(np.zeros((24, 32, 3), np.uint8)).shape == (24, 32)
    # Options that agree with the zoo entry are accepted.
    assert load_model(NAME, arch="hrnet_w48", num_classes=11, taxonomy="camvid-11").num_classes == 11


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"arch": "pspnet50"}, "camvid-11-1m is a hrnet_w48 model; arch='pspnet50' contradicts it"),
        ({"num_classes": 19}, "camvid-11-1m has 11 classes; num_classes=19 contradicts it"),
        ({"taxonomy": "kitti-19"}, "camvid-11-1m outputs taxonomy 'camvid-11'; taxonomy='kitti-19' contradicts it"),
        ({"config": {"FINAL_CONV_KERNEL": 1}}, "config= applies to checkpoint files"),
    ],
)
def test_options_contradicting_a_zoo_name_are_errors(mirror, options, message):
    _, handler = mirror
    with pytest.raises(InputError, match=message):
        load_model(NAME, **options)
    assert handler.requests == []  # refused before any download


def test_cli_option_contradicting_a_zoo_name(mirror, tmp_path, capsys):
    import cv2
    import numpy as np

    _, handler = mirror
    image = tmp_path / "street.png"
    cv2.imwrite(str(image), np.zeros((20, 30, 3), np.uint8))
    code = main(["demo", str(image), "--model", NAME, "--arch", "pspnet50", "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "arch='pspnet50' contradicts it" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and handler.requests == []
