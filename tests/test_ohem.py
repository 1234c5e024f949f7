"""Online hard example mining (``loss.ohem``): which pixels it keeps, the loss over them, the option and a run."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_train_run import read_log, tiny_config, write_config, write_list

from mseg_semantic.cli import main
from mseg_semantic.configs import ConfigError
from mseg_semantic.training import OHEMConfig, load_train_config
from mseg_semantic.training.objectives import CrossEntropy, pixel_sampler
from mseg_semantic.training.ohem import HardPixelSampler, hard_pixels


@pytest.fixture(scope="module")
def camvid(camvid11):
    return camvid11


def _logits_for(probability: torch.Tensor, labels: torch.Tensor, classes: int = 3) -> torch.Tensor:
    """Logits whose softmax gives each pixel's label exactly ``probability`` (the rest shared by the others)."""
    rest = (1 - probability) / (classes - 1)
    probs = rest[:, None].repeat(1, classes, 1, 1)
    probs.scatter_(1, labels.clamp(max=classes - 1)[:, None], probability[:, None])
    return probs.log()


def test_keeps_the_pixels_below_the_threshold_and_at_least_the_hardest_share():
    labels = torch.tensor([[[0, 1, 2, 0, 1], [2, 255, 0, 1, 255]]])
    probability = torch.tensor([[[0.9, 0.2, 0.6, 0.95, 0.71], [0.7, 0.01, 0.99, 0.4, 0.05]]])
    logits = _logits_for(probability, labels)
    valid = labels != 255
    kept = hard_pixels(logits, labels, valid, 0.7, 0.1)
    assert kept.tolist() == [[[False, True, True, False, False], [True, False, False, True, False]]]
    # Nearly every pixel easy: the hardest ceil(0.5 x 8) = 4 labelled ones are kept all the same.
    kept = hard_pixels(logits, labels, valid, 0.1, 0.5)
    assert kept.tolist() == [[[False, True, True, False, False], [True, False, False, True, False]]]
    kept = hard_pixels(logits, labels, valid, 0.1, 0.6)  # 5 of 8: 0.71 joins; the void pixels (0.01, 0.05) never
    assert kept.sum() == 5 and kept[0, 0, 4] and not kept[0, 1, 1] and not kept[0, 1, 4]
    assert hard_pixels(logits, labels, valid, 1.0, 0.1).equal(valid)
    void = torch.full_like(labels, 255)
    assert not hard_pixels(logits, void, void != 255, 0.7, 0.1).any()


def test_the_loss_is_the_mean_over_the_kept_pixels_and_off_changes_nothing():
    torch.manual_seed(0)
    logits, aux = torch.randn(2, 4, 6, 7), torch.randn(2, 4, 6, 7)
    labels = torch.randint(0, 4, (2, 6, 7))
    labels[1, :2] = 255
    ohem = OHEMConfig(thresh=0.3, min_kept=0.2)
    assert pixel_sampler(ohem) == HardPixelSampler(0.3, 0.2)
    ce = CrossEntropy(aux_weight=0.4, sampler=pixel_sampler(ohem))((logits, aux), labels)
    expected = hard_pixels(logits, labels, labels != 255, 0.3, 0.2)
    assert ce.counted.equal(expected) and 0 < ce.counted.sum() < (labels != 255).sum()
    plain = F.cross_entropy(logits, labels, ignore_index=255, reduction="none")
    assert ce.pixel.equal(plain * ce.counted)
    assert ce.loss == pytest.approx(float(plain[ce.counted].mean()), rel=1e-6)
    aux_plain = F.cross_entropy(aux, labels, ignore_index=255, reduction="none")
    assert ce.total == pytest.approx(float(ce.loss + 0.4 * aux_plain[ce.counted].mean()), rel=1e-6)
    # Off (thresh null, the default): no sampler, the original's loss.
    assert pixel_sampler(OHEMConfig()) is None
    original = CrossEntropy(aux_weight=0.4)((logits, aux), labels)
    assert original.counted.equal(labels != 255) and original.pixel.equal(plain)
    labelled = (labels != 255).sum()
    assert original.total == pytest.approx(float((plain.sum() + 0.4 * aux_plain.sum()) / labelled), rel=1e-6)


def test_the_option_is_off_by_default_and_checked():
    _, config = load_train_config("camvid11")
    assert config.loss.ohem.thresh is None
    _, config = load_train_config("camvid11", ["loss.ohem.thresh=0.7"])
    assert config.loss.ohem == OHEMConfig(thresh=0.7, min_kept=0.1)
    with pytest.raises(ConfigError, match=r"loss\.ohem\.thresh.*\[0, 1\]"):
        load_train_config("camvid11", ["loss.ohem.thresh=7"])
    with pytest.raises(ConfigError, match=r"loss\.ohem\.min_kept.*\(0, 1\]"):
        load_train_config("camvid11", ["loss.ohem.min_kept=0"])


def test_a_run_with_ohem_says_so_and_trains(camvid, tmp_path, capsys):
    config = tiny_config(camvid, write_list(tmp_path / "train.txt", camvid, 4), max_iters=4)
    config["loss"] = {"ohem": {"thresh": 0.7, "min_kept": 0.25}}
    path = write_config(tmp_path / "tiny.yaml", config)
    assert main(["train", str(path), "--out", str(tmp_path / "run"), "--quiet"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "hard pixels (loss.ohem)" in out and "at most 0.7" in out and "hardest 25%" in out
    assert (tmp_path / "run" / "model.safetensors").is_file()
    assert math.isfinite(float(read_log(tmp_path / "run")[-1]["loss"]))
