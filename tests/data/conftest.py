"""Shared fixtures for the data-layer tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest

# The repository sits next to `shared/` (locally /work/main and /work/shared; in CI a clone with shared/ beside
# it). tests/data/conftest.py -> parents[2] is the repository root.
REPO_ROOT = Path(__file__).resolve().parents[2]
REALDATA_CANDIDATES = (REPO_ROOT.parent / "shared" / "realdata", REPO_ROOT / "shared" / "realdata")


@pytest.fixture(scope="session")
def realdata() -> Path:
    """The folder of real third-party samples, or skip when this checkout has none."""
    for candidate in REALDATA_CANDIDATES:
        if candidate.is_dir():
            return candidate
    pytest.skip(f"real sample data not found (looked for {', '.join(map(str, REALDATA_CANDIDATES))})")


@pytest.fixture
def write_json(tmp_path: Path) -> Callable[..., Path]:
    """Write a list of records as a JSON dataset file in tmp_path and return its path."""

    def write(records: Any, name: str = "data.json") -> Path:
        path = tmp_path / name
        path.write_text(json.dumps(records, ensure_ascii=False, indent=2), encoding="utf-8")
        return path

    return write

