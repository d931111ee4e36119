"""Shared fixtures. Tests make their own data in temporary directories or read ../shared (the project's facts)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op threads set to `count` for the block, then restored. Tiny models run fastest on one, and a
    fixed count keeps float results reproducible on a busy machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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


# -- real services on loopback (tests marked `services`; see tests/services.py) ----------------------------------


@pytest.fixture(scope="session")
def postgres_service():
    from tests import services

    with services.postgres() as service:
        yield service


@pytest.fixture(scope="session")
def redis_service():
    from tests import services

    with services.redis() as service:
        yield service


@pytest.fixture(scope="session")
def s3_service():
    from tests import services

    with services.s3() as service:
        yield service


@pytest.fixture(scope="session")
def mlflow_service(postgres_service, s3_service):
    """An MLflow server on PostgreSQL + S3, shared by the session: tests keep apart by voice and model names."""
    from tests import services

    with services.mlflow_server(postgres_service, s3_service) as service:
        yield service
