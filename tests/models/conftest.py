"""Fixtures of the model tests: the golden vectors, and one intra-op thread for the small models."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import torch_threads


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are tiny: one intra-op thread is faster and immune to a busy machine's oversubscription."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def golden(gsv_dir):
    """../shared/gsv/golden_A.pt: reduced official models, their inputs and the official outputs."""
    return torch.load(gsv_dir / "golden_A.pt", weights_only=False)
