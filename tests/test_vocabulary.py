"""One vocabulary per concept: precisions, backends, ``auto`` and presets are each defined once, in a low module,
and the command line's choices are derived from those definitions."""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import pytest

from mseg_semantic.cli import build_parser
from mseg_semantic.export import FORMATS
from mseg_semantic.precision import (
    AUTO,
    BACKEND_PRECISIONS,
    BACKENDS,
    FILE_PRECISIONS,
    INFERENCE_BACKENDS,
    INFERENCE_PRECISIONS,
    PRECISIONS,
    TORCH_PRECISIONS,
)
from mseg_semantic.presets import DEFAULT_PRESET, EVAL_PRESET, PRESET_FILES, preset_for

PACKAGE = Path(__file__).resolve().parents[1] / "mseg_semantic"


def _sources() -> dict[str, ast.Module]:
    return {str(path.relative_to(PACKAGE)): ast.parse(path.read_text()) for path in sorted(PACKAGE.rglob("*.py"))}


def test_each_vocabulary_name_is_assigned_in_one_module():
    homes = {
        "PRECISIONS": "precision.py",
        "BACKENDS": "precision.py",
        "AUTO": "precision.py",
        "DEFAULT_PRESET": "presets.py",
        "EVAL_PRESET": "presets.py",
        "PRESET_FILES": "presets.py",
    }
    assigned = {name: set() for name in homes}
    for module, tree in _sources().items():
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            for target in targets:
                if isinstance(target, ast.Name) and target.id in assigned:
                    assigned[target.id].add(module)
    assert assigned == {name: {home} for name, home in homes.items()}


def test_each_preset_name_is_written_once():
    """As a whole string literal (docstrings and help texts that mention a preset are longer strings)."""
    counts: Counter[tuple[str, str]] = Counter()
    for module, tree in _sources().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in PRESET_FILES:
                counts[node.value, module] += 1
    assert sorted(counts) == sorted((name, "presets.py") for name in PRESET_FILES)
    assert set(counts.values()) == {1}


def test_the_precision_tables_agree():
    assert set(BACKEND_PRECISIONS) == set(BACKENDS)
    assert set().union(*BACKEND_PRECISIONS.values()) == set(PRECISIONS)
    assert TORCH_PRECISIONS == ("fp32", "bf16", "fp16") and FILE_PRECISIONS == ("fp32", "int8")
    assert (*PRECISIONS, AUTO) == INFERENCE_PRECISIONS and (*BACKENDS, AUTO) == INFERENCE_BACKENDS
    assert {DEFAULT_PRESET, EVAL_PRESET} <= set(PRESET_FILES)


def _choices(command: str) -> dict[str, list[str]]:
    parser = build_parser([command])._subparsers._group_actions[0].choices[command]
    return {action.dest: list(action.choices) for action in parser._actions if action.choices is not None}


@pytest.mark.parametrize("command", ["demo", "eval"])
def test_inference_choices_come_from_the_vocabulary(command):
    choices = _choices(command)
    assert choices["precision"] == list(INFERENCE_PRECISIONS)
    assert choices["backend"] == list(INFERENCE_BACKENDS)


def test_export_choices_come_from_the_vocabulary():
    choices = _choices("export")
    assert choices["precision"] == list(FILE_PRECISIONS)
    assert choices["format"] == list(FORMATS)


class _Model:
    preset = "compact_360_ss"


def test_preset_for_the_given_then_the_models_then_the_default():
    assert preset_for(_Model(), "720_ss") == "720_ss"
    assert preset_for(_Model()) == "compact_360_ss"
    assert preset_for(None) == DEFAULT_PRESET
    assert preset_for(object(), default=EVAL_PRESET) == EVAL_PRESET
