"""Fixtures of the model tests: the golden vectors, and one intra-op thread for the small models."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are tiny: one intra-op thread is faster and immune to a busy machine's oversubscription."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def golden(gsv_dir):
    """../shared/gsv/golden_A.pt: reduced official models, their inputs and the official outputs."""
    return torch.load(gsv_dir / "golden_A.pt", weights_only=False)
