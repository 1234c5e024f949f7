"""The package's shape, kept: no function longer than one screen (60 lines), argparse option lists aside, and the
training loop under 300 lines. A new capability goes in its own function or module, not into a growing one."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mseg_semantic"
MAX_LINES = 60
OPTION_LISTS = {"register", "add_config_arguments"}
"""Functions that only declare a command's argparse options (one ``add_argument`` after another) in ``cli/``."""


def long_functions() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                exempt = path.parent.name == "cli" and node.name in OPTION_LISTS
                if lines > MAX_LINES and not exempt:
                    found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_is_longer_than_one_screen() -> None:
    assert long_functions() == []


def test_the_training_loop_holds_the_loop_only() -> None:
    assert len((PACKAGE / "training" / "loop.py").read_text(encoding="utf-8").splitlines()) <= 300
