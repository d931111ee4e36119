"""Shared fixtures. Tests make their own data in temporary directories or read ../shared (the project's facts)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_root() -> Path:
    """`../shared` beside the checkout (CI and developers have it), or $NARRATOR_SHARED_DIR."""
    return Path(os.environ.get("NARRATOR_SHARED_DIR", REPO_ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    root = shared_root()
    if not root.exists():
        pytest.fail(f"{root} is missing: the golden vectors and manifests live there (set NARRATOR_SHARED_DIR)")
    return root


@pytest.fixture(scope="session")
def gsv_dir(shared_dir: Path) -> Path:
    return shared_dir / "gsv"
