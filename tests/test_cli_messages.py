"""The command line speaks in its own options: never a Python keyword argument, a doubled ``%`` or a bare
"unrecognized arguments" when the option was only misspelled."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from conftest import tiny_hrnet

from mseg_semantic.cli import build_parser, command_line_message, main
from mseg_semantic.errors import CheckpointError, InputError
from mseg_semantic.fileio import write_label
from mseg_semantic.models.checkpoint import build_from_checkpoint


def run(capsys, *argv: str) -> tuple[int, str]:
    """``mseg ARGV`` in this process: its exit status and its standard error."""
    status = main(list(argv))
    return status, capsys.readouterr().err


@pytest.fixture(scope="module")
def bare_pth(tmp_path_factory):
    """An original-style .pth: a bare state_dict that records no architecture."""
    path = tmp_path_factory.mktemp("pth") / "bare.pth"
    torch.save({"state_dict": tiny_hrnet(11).state_dict()}, path)
    return path


def test_convert_names_force_not_overwrite(capsys, tmp_checkpoint_pair):
    source, existing = tmp_checkpoint_pair
    status, err = run(capsys, "convert", str(source), str(existing))
    assert status == 2
    assert f"{existing} already exists; pass --force to replace it" in err
    assert "overwrite" not in err


@pytest.fixture
def tmp_checkpoint_pair(tiny_checkpoint, tmp_path):
    existing = tmp_path / "out.safetensors"
    existing.write_bytes(b"")
    return tiny_checkpoint, existing


def test_missing_arch_names_the_option_on_the_command_line_and_the_keyword_in_python(capsys, bare_pth, tmp_path):
    status, err = run(capsys, "convert", str(bare_pth), str(tmp_path / "out.safetensors"))
    assert status == 2
    assert "does not record its architecture; pass --arch" in err and "arch=" not in err
    status, err = run(capsys, "demo", "--example", "--model", str(bare_pth), "--out", str(tmp_path / "demo"))
    assert status == 2
    assert "pass --arch" in err and "arch=" not in err
    with pytest.raises(CheckpointError, match=r"pass arch=\.\.\."):
        build_from_checkpoint(bare_pth)


def test_remap_names_non_strict(capsys, tmp_path):
    labels = tmp_path / "in"
    labels.mkdir()
    write_label(labels / "a.png", np.full((4, 5), 200, dtype=np.uint8))  # not a cityscapes-34 class
    status, err = run(capsys, "remap", "--from", "cityscapes-34", "--to", "cityscapes-19", str(labels), str(tmp_path))
    assert status == 2
    assert "pass --non-strict to map them to 255" in err and "strict=False" not in err


def test_a_keyword_without_an_option_is_left_as_it_is():
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch")
    error = InputError("pass arch=... or depth=3", keywords={"arch": "arch=...", "depth": "depth=3"})
    assert command_line_message(error, parser, argparse.Namespace()) == "pass --arch or depth=3"


def test_help_prints_single_percent_signs():
    text = build_parser(["demo"])._subparsers._group_actions[0].choices["demo"].format_help()
    assert ">= 99% of pixels" in text and "99% of labels" in text
    assert "%%" not in text


@pytest.mark.parametrize(
    ("argv", "typo", "hint"),
    [
        (["demo", "--example", "--ouput", "x"], "--ouput", "(did you mean --outputs or --out?)"),
        (["export", "--out", "m.onnx", "--precison", "int8"], "--precison", "(did you mean --precision?)"),
        (["zoo", "list", "--jsn"], "--jsn", "(did you mean --json?)"),
    ],
)
def test_a_misspelled_option_gets_the_closest_ones(capsys, argv, typo, hint):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"unrecognized arguments: {typo}" in err and hint in err


def test_an_unknown_option_far_from_all_gets_no_hint(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--example", "--zzzzzzzz"])
    assert "did you mean" not in capsys.readouterr().err
