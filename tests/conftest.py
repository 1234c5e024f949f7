"""Shared test fixtures: where the optional reference data lives."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared() -> Path:
    """The project's sibling ``shared/`` folder (reference data, real images); skips the test without it."""
    if not SHARED.is_dir():
        pytest.skip("reference data folder ../shared is not available")
    return SHARED


@pytest.fixture(scope="session")
def mseg_api(shared: Path) -> Path:
    path = shared / "reference" / "mseg-api" / "mseg"
    if not path.is_dir():
        pytest.skip("../shared/reference/mseg-api is not available")
    return path
