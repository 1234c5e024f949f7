"""Training runs end to end on a tiny HRNet and real CamVid images: loss, checkpoints, resume, DDP, two taxonomies."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY_HRNET, failure, mseg_env, run_mseg
from safetensors.torch import load_file

from mseg_semantic.cli import main
from mseg_semantic.data import KeyedDataset, LabelMapper, SampleKey, SegmentationDataset, TrainTransform, read_list
from mseg_semantic.fileio import read_label, write_label
from mseg_semantic.taxonomy import class_names
from mseg_semantic.training import config_from_dict, train
from mseg_semantic.training.class_weights import enet_weights, label_counts
from mseg_semantic.training.data import prepare_datasets
from mseg_semantic.zoo import load_model


@pytest.fixture(scope="module")
def camvid(camvid11: Path) -> Path:
    return camvid11


def write_list(path: Path, camvid: Path, count: int, offset: int = 0) -> Path:
    lines = (camvid / "train.txt").read_text().splitlines()[offset : offset + count]
    path.write_text("\n".join(lines) + "\n")
    return path


def tiny_config(camvid: Path, train_list: Path, **changes) -> dict:
    """A config in the YAML layout: tiny HRNet, small crops, one CPU process, no workers."""
    config = {
        "datasets": [{"name": "camvid-11", "root": str(camvid), "train_list": str(train_list)}],
        "taxonomy": "own",
        "batch_size": 4,
        "max_iters": 6,
        "model": {"arch": "hrnet", "hrnet": TINY_HRNET},
        "transform": {"short_size": 96, "crop": [64, 96]},
        "optim": {"base_lr": 0.05},
        "device": "cpu",
        "workers": 0,
        "log_every": 1,
        "checkpoint": {"every": 2, "keep": 2},
    }
    for key, value in changes.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) and key in config else value
    return config


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def read_log(out: Path) -> list[dict[str, str]]:
    with (out / "log.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_short_run_lowers_the_loss_and_its_checkpoints_load(camvid, tmp_path, capsys):
    train_list = write_list(tmp_path / "train.txt", camvid, 4)
    val_list = write_list(tmp_path / "val.txt", camvid, 2, offset=4)
    config = tiny_config(camvid, train_list, max_iters=16, checkpoint={"every": 5, "keep": 2})
    config["datasets"][0]["val_list"] = str(val_list)
    config["val"] = {"every": 8, "short_size": 96}
    path = write_config(tmp_path / "tiny.yaml", config)
    out = tmp_path / "run"
    assert main(["train", str(path), "--out", str(out), "--quiet"]) == 0, capsys.readouterr().err

    rows = read_log(out)
    assert [int(r["iter"]) for r in rows] == list(range(1, 17))
    losses = [float(r["loss"]) for r in rows]
    assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4]), losses
    assert [r["iter"] for r in rows if r["val_miou"]] == ["8", "16"]
    assert 0.0 <= float(rows[-1]["val_miou"]) <= 1.0

    checkpoints = out / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("*.pth")) == ["iter_00000015.pth", "iter_00000016.pth"]
    assert (checkpoints / "last").read_text().strip() == "iter_00000016.pth"
    original = torch.load(checkpoints / "iter_00000016.pth", weights_only=True)
    assert {"state_dict", "optimizer", "epoch", "current_iter", "max_iter"} <= set(original)
    assert (original["current_iter"], original["max_iter"]) == (16, 16)
    assert all(k.startswith("module.") for k in original["state_dict"])
    from_pth = load_model(checkpoints / "iter_00000016.pth")
    from_safetensors = load_model(out / "model.safetensors")
    assert from_safetensors.num_classes == 11
    for (name, a), b in zip(from_pth.state_dict().items(), from_safetensors.state_dict().values(), strict=True):
        assert torch.equal(a, b), name

    image = camvid / "images" / "0001TP_006690.png"
    demo_args = ["--config", "360_ss", "--base-size", "96", "--crop-size", "97", "--quiet"]
    assert (
        main(
            ["demo", str(image), "--model", str(out / "model.safetensors"), "--out", str(tmp_path / "demo"), *demo_args]
        )
        == 0
    )
    assert read_label(tmp_path / "demo" / "0001TP_006690_gray.png").max() < 11
    eval_args = [
        "--dataset",
        "camvid-11",
        "--data-root",
        str(camvid),
        "--list",
        str(val_list),
        "--out",
        str(tmp_path / "eval"),
    ]
    assert main(["eval", *eval_args, "--model", str(checkpoints / "iter_00000016.pth"), *demo_args]) == 0
    capsys.readouterr()

    # The folder now holds a run: starting again needs --resume, which finds the run complete.
    assert main(["train", str(path), "--out", str(out), "--quiet"]) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert main(["train", str(path), "--out", str(out), "--quiet", "--resume"]) == 0
    assert "already finished" in capsys.readouterr().out


def test_resume_after_a_crash_gives_the_same_weights(camvid, tmp_path, monkeypatch):
    config = config_from_dict(tiny_config(camvid, write_list(tmp_path / "train.txt", camvid, 3)))
    train(config, tmp_path / "straight", progress=False)

    # Crash inside the 5th optimiser step: the newest checkpoint is then iteration 4.
    calls = {"n": 0}
    step = torch.optim.SGD.step

    def crashing_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", crashing_step)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "crashed", progress=False)
    monkeypatch.setattr(torch.optim.SGD, "step", step)
    assert (tmp_path / "crashed" / "checkpoints" / "last").read_text().strip() == "iter_00000004.pth"
    train(config, tmp_path / "crashed", resume=True, progress=False)

    straight = load_file(tmp_path / "straight" / "model.safetensors")
    resumed = load_file(tmp_path / "crashed" / "model.safetensors")
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    # The log reads as one run: rows past the checkpoint were replaced, with the same losses.
    assert [(r["iter"], r["loss"]) for r in read_log(tmp_path / "crashed")] == [
        (r["iter"], r["loss"]) for r in read_log(tmp_path / "straight")
    ]


def remapped_dataset(camvid: Path, folder: Path, taxonomy: str, names: dict[str, str], count: int) -> Path:
    """CamVid images with their labels rewritten in another taxonomy, as a list file of absolute paths."""
    target = class_names(taxonomy)
    table = np.full(256, 255, np.uint8)
    for camvid_id, camvid_name in enumerate(class_names("camvid-11")):
        table[camvid_id] = target.index(names[camvid_name])
    lines = []
    for entry in read_list(camvid / "train.txt", camvid)[:count]:
        label_path = folder / entry.label.name
        write_label(label_path, table[read_label(entry.label)])
        lines.append(f"{entry.image} {label_path}")
    (folder / "list.txt").write_text("\n".join(lines) + "\n")
    return folder / "list.txt"


CITYSCAPES = {
    "Building": "building", "Tree": "vegetation", "Sky": "sky", "Car": "car", "SignSymbol": "traffic sign",
    "Road": "road", "Pedestrian": "person", "Fence": "fence", "Column_Pole": "pole", "Sidewalk": "sidewalk",
    "Bicyclist": "rider",
}  # fmt: skip
MAPILLARY = {
    "Building": "Building", "Tree": "Vegetation", "Sky": "Sky", "Car": "Car", "SignSymbol": "Traffic Sign (Front)",
    "Road": "Road", "Pedestrian": "Person", "Fence": "Fence", "Column_Pole": "Pole", "Sidewalk": "Sidewalk",
    "Bicyclist": "Bicyclist",
}  # fmt: skip


def test_two_taxonomies_train_together_in_the_universal_taxonomy(camvid, tmp_path):
    lists = {}
    for name, names, count in (("cityscapes-19", CITYSCAPES, 3), ("mapillary-public65", MAPILLARY, 2)):
        (tmp_path / name).mkdir()
        lists[name] = remapped_dataset(camvid, tmp_path / name, name, names, count)
    # Both label sets describe the same images: in the universal taxonomy they must agree, crop for crop.
    transform = TrainTransform(short_size=96, crop=(64, 96))
    data = KeyedDataset(
        [SegmentationDataset(read_list(lists[n], "/"), taxonomy=n) for n in lists],
        transform,
        [LabelMapper(n, "universal") for n in lists],
    )
    for index in range(2):
        (x0, y0, _), (x1, y1, _) = data[SampleKey(0, index, 11)], data[SampleKey(1, index, 11)]
        assert torch.equal(x0, x1) and torch.equal(y0, y1)
        assert len(set(y0.unique().tolist()) - {255}) >= 3

    config = tiny_config(camvid, lists["cityscapes-19"], taxonomy="universal", max_iters=3)
    config["datasets"] = [{"name": n, "root": "/", "train_list": str(p)} for n, p in lists.items()]
    result = train(config_from_dict(config), tmp_path / "run", progress=False)
    rows = read_log(tmp_path / "run")
    assert len(rows) == 3
    for row in rows:  # every step holds both datasets (2 crops each)
        assert np.isfinite(float(row["loss/cityscapes-19"])) and np.isfinite(float(row["loss/mapillary-public65"]))
    model = load_model(result.model_file)
    assert model.num_classes == 194


def test_unreadable_image_is_reported_with_its_list_line(camvid, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    first = (camvid / "train.txt").read_text().splitlines()[0]
    train_list = tmp_path / "train.txt"
    train_list.write_text(f"{first}\n{broken} labels/0001TP_006690.png\n")
    config = tiny_config(camvid, train_list, batch_size=2, workers=1)
    path = write_config(tmp_path / "tiny.yaml", config)
    assert main(["train", str(path), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{train_list}:2" in err and str(broken) in err and "not a readable image" in err
    assert len(err.splitlines()) == 1, err


def test_stage_two_without_stage_ones_weights_says_which_setting_to_change(camvid, tmp_path, capsys):
    """camvid11-robust fine-tunes runs/camvid11/model.safetensors by default; missing, the error names the key."""
    missing = tmp_path / "runs" / "camvid11" / "model.safetensors"
    args = ["train", "camvid11-robust", "--data-root", str(camvid), "--out", str(tmp_path / "run"), "--quiet"]
    assert main([*args, "--device", "cpu", "--set", f"model.weights={missing}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mseg train: error: model.weights (") and "--set model.weights=PATH" in err
    assert str(missing) in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_two_processes_with_torchrun_on_cpu(camvid, tmp_path):
    config = tiny_config(camvid, write_list(tmp_path / "train.txt", camvid, 4), max_iters=3, log_every=3)
    config["loss"] = {"class_weighting": "enet"}  # its label counts are split over the processes, then summed
    path = write_config(tmp_path / "tiny.yaml", config)
    out = tmp_path / "run"
    done = run_mseg(2, "train", str(path), "--out", str(out), "--quiet", timeout=120)
    assert done.returncode == 0, failure(done)
    assert "2 process(es) on cpu" in done.stdout
    resolved = config_from_dict(config)
    weights = enet_weights(label_counts(prepare_datasets(resolved), None, 11))
    names = class_names("camvid-11")
    line = "class weights (enet): " + ", ".join(f"{n} {w:.2f}" for n, w in zip(names, weights, strict=True))
    assert line in done.stdout.splitlines(), done.stdout
    assert [r["iter"] for r in read_log(out)] == ["3"]
    assert load_model(out / "model.safetensors").num_classes == 11


#: Run by each process under torchrun with the cyclic garbage collector off: what is still alive after train()?
_LEFT_ALIVE = """
import gc, sys, yaml
from torch.nn.parallel import DistributedDataParallel
from mseg_semantic.training import config_from_dict, train
from mseg_semantic.training.class_weights import enet_weights, label_counts
from mseg_semantic.training.data import prepare_datasets
gc.disable()
train(config_from_dict(yaml.safe_load(open(sys.argv[1]))), sys.argv[2], progress=False)
print("DDP wrappers alive:", sum(isinstance(o, DistributedDataParallel) for o in gc.get_objects()))
"""


def test_the_process_group_is_left_only_once_nothing_holds_it(camvid, tmp_path):
    """The model, its DDP wrapper (which holds the process group) and the optimizer are freed before the group is
    destroyed, not by a later garbage collection at exit (torch's first optimizer pins the caller's frames in a
    reference cycle). A CI run once ended with a C++ abort in that teardown."""
    config = tiny_config(camvid, write_list(tmp_path / "train.txt", camvid, 2), max_iters=1, log_every=1)
    script = tmp_path / "left_alive.py"
    script.write_text(_LEFT_ALIVE)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script)]
    command += [str(write_config(tmp_path / "tiny.yaml", config)), str(tmp_path / "run")]
    done = subprocess.run(command, capture_output=True, text=True, env=mseg_env(), timeout=120)
    assert done.returncode == 0, failure(done)
    assert done.stdout.count("DDP wrappers alive: 0") == 2, done.stdout


def test_a_training_checkpoint_is_read_back_whole_with_weights_only(tmp_path):
    """Weights, momentum buffers, fp16 scaler and strings survive ``weights_only=True`` bit for bit; bad files
    are refused with the safe reader's messages."""
    from conftest import tiny_hrnet

    from mseg_semantic.errors import CheckpointError
    from mseg_semantic.training.checkpoints import load_training_checkpoint, save_training_checkpoint
    from mseg_semantic.training.optim import build_optimizer

    model = tiny_hrnet(11).train()
    optimizer = build_optimizer(model, 0.05, 0.9, 1e-4, 10.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    for _ in range(2):
        optimizer.zero_grad()
        scaler.scale(model(torch.randn(2, 3, 33, 33)).square().mean()).backward()
        scaler.step(optimizer)
        scaler.update()
    path = save_training_checkpoint(
        tmp_path, model, optimizer, scaler, iteration=2, max_iters=6, epoch=1, taxonomy="camvid-11",
        train_config={"seed": 0}, keep=2,
    )  # fmt: skip
    state = load_training_checkpoint(path)
    assert (state["current_iter"], state["max_iter"], state["taxonomy"]) == (2, 6, "camvid-11")
    assert state["scaler"] == scaler.state_dict() and state["scaler"]["scale"] == scaler.get_scale() > 0
    for name, value in model.state_dict().items():
        assert torch.equal(state["state_dict"][f"module.{name}"], value), name
    saved, now = state["optimizer"], optimizer.state_dict()
    assert saved["param_groups"] == now["param_groups"]
    assert saved["state"].keys() == now["state"].keys()
    for i, entry in now["state"].items():
        assert torch.equal(saved["state"][i]["momentum_buffer"], entry["momentum_buffer"])

    for name, content, message in (
        ("empty.pth", b"", "is empty"),
        ("page.pth", b"<!DOCTYPE html><html>", "HTML"),
        ("cut.pth", path.read_bytes()[:5000], "corrupt or truncated"),
    ):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match=f"cannot resume: .*{name}.*{message}"):
            load_training_checkpoint(tmp_path / name)
    with pytest.raises(CheckpointError, match="safetensors file"):
        load_training_checkpoint(path.with_suffix(".safetensors"))
    torch.save({"state_dict": {}}, tmp_path / "weights.pth")
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        load_training_checkpoint(tmp_path / "weights.pth")


def test_bf16_on_a_cpu_without_bf16_arithmetic_is_flagged(camvid, tmp_path, capsys):
    """Emulated bf16 trained camvid11 8x slower than fp32 on an AVX2-only CPU (0.5 against 4.3 crops/s): say so."""
    from mseg_semantic.precision import cpu_has_native_bf16

    config = tiny_config(camvid, write_list(tmp_path / "train.txt", camvid, 2), max_iters=1, precision="bf16")
    path = write_config(tmp_path / "tiny.yaml", config)
    assert main(["train", str(path), "--out", str(tmp_path / "run"), "--quiet"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    warned = "warning: precision bf16, but this CPU has no bfloat16 arithmetic" in out
    assert warned == (not cpu_has_native_bf16()), out
    assert ("--set precision=fp32" in out) == warned
