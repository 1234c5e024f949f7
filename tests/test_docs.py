"""Every ```python and ```bash block of README.md and docs/*.md runs, so the documentation cannot drift from the code.

How a page marks a block that cannot run offline in a few seconds, on the line right before its fence:

    <!-- skip: needs the zoo -->       not run; the reason is the skip's message (the zoo, a GPU, a full dataset)
    <!-- slow -->                      run only with ``pytest -m slow`` (longer than a few seconds)

Blocks of one page run in order in one temporary folder and build on each other: the python blocks share one
namespace, and a file a bash block writes is there for the next block (a block selected alone, or with
``-m slow``, first runs the page's earlier unmarked blocks). Bash blocks run under ``bash -euo pipefail`` with
``mseg`` standing for ``python -m mseg_semantic`` of this checkout. Blocks in other languages (```text, ```yaml,
```json) are not run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import mseg_env

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"<!--\s*(skip|slow)\s*(?::\s*(.*?))?\s*-->")
FENCE = re.compile(r"^```(\w*)\s*$")
BASH_TIMEOUT = {None: 180, "slow": 900}  # seconds per bash block (a loaded 2-core machine takes many times longer)


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    marker: str | None  # "skip", "slow" or None
    reason: str

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def parse_blocks(page: Path) -> list[Block]:
    """The fenced blocks of a markdown page, with the marker of the line before each fence."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
        assert end is not None, f"{page.name}:{i + 1}: the block is never closed"
        marker = MARKER.fullmatch(lines[i - 1].strip()) if i > 0 else None
        blocks.append(
            Block(page, i + 1, opening.group(1), "\n".join(lines[i + 1 : end]) + "\n",
                  marker.group(1) if marker else None, (marker.group(2) or "") if marker else "")
        )  # fmt: skip
        i = end + 1
    return blocks


BLOCKS = [b for page in PAGES for b in parse_blocks(page) if b.language in ("python", "bash")]


def params():
    for block in BLOCKS:
        marks = []
        if block.marker == "skip":
            marks.append(pytest.mark.skip(reason=f"{block.id}: {block.reason or 'marked skip'}"))
        elif block.marker == "slow":
            marks.append(pytest.mark.slow)
        yield pytest.param(block, id=block.id, marks=marks)


class PageState:
    """One page's temporary folder and python namespace, and which of its blocks have run."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.namespace: dict = {"__name__": "__docs__"}
        self.done: set[int] = set()


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> dict[Path, PageState]:
    return {page: PageState(tmp_path_factory.mktemp(page.stem)) for page in PAGES}


def run_python(block: Block, state: PageState) -> None:
    previous = os.getcwd()
    os.chdir(state.folder)
    try:
        exec(compile(block.code, block.id, "exec"), state.namespace)
    finally:
        os.chdir(previous)


def run_bash(block: Block, state: PageState) -> subprocess.CompletedProcess:
    script = f'mseg() {{ "{sys.executable}" -m mseg_semantic "$@"; }}\nexport -f mseg\n{block.code}'
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True,
                          cwd=state.folder, env=mseg_env(threads=2), timeout=BASH_TIMEOUT[block.marker])  # fmt: skip


def test_blocks_are_marked_well():
    """Every page parses, and every marker sits right before a block it applies to (a typo would run a block that
    needs the zoo, or silently skip nothing)."""
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, 1):
            if MARKER.fullmatch(line.strip()):
                following = lines[number] if number < len(lines) else ""
                assert FENCE.match(following), f"{page.name}:{number}: a marker not followed by a fenced block"
            elif re.match(r"<!--\s*(skip|slow)\b", line.strip()):
                pytest.fail(f"{page.name}:{number}: malformed marker {line.strip()!r}")
    assert any(b.language == "python" for b in BLOCKS) and any(b.language == "bash" for b in BLOCKS)


def run_block(block: Block, state: PageState) -> None:
    if block.language == "python":
        run_python(block, state)
    else:
        done = run_bash(block, state)
        assert done.returncode == 0, f"{block.id}: exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    state.done.add(block.line)


@pytest.mark.parametrize("block", list(params()))
def test_doc_block(block: Block, pages: dict[Path, PageState], request):
    if block.marker == "slow" and "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip(f"{block.id}: slow; run with pytest -m slow")
    state = pages[block.page]
    # A page's blocks build on each other: first run its earlier unmarked blocks that have not run in this session
    # (when this block is selected alone, or with -m slow).
    for earlier in BLOCKS:
        earlier_here = earlier.page == block.page and earlier.line < block.line
        if earlier_here and earlier.marker is None and earlier.line not in state.done:
            run_block(earlier, state)
    run_block(block, state)
