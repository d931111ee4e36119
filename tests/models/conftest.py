"""Fixtures of the model tests: the golden vectors, a synthesizer over the golden models with a reference clip, and
one intra-op thread for the small models."""

from __future__ import annotations

import pytest
import torch

from models.checkpoints import load_gpt, load_sovits
from models.tts import Synthesizer
from tests.conftest import torch_threads
from tests.intake import speech

REFERENCE_TEXT = "This is the reference clip of our narrator speaking."


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are tiny: one intra-op thread is faster and immune to a busy machine's oversubscription."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def golden(gsv_dir):
    """../shared/gsv/golden_A.pt: reduced official models, their inputs and the official outputs."""
    return torch.load(gsv_dir / "golden_A.pt", weights_only=False)


@pytest.fixture(scope="module")
def synth(gsv_dir) -> Synthesizer:
    """The golden v2 SoVITS and GPT as a synthesizer (no HuBERT, BERT or sv models: references take their ssl)."""
    return Synthesizer(load_sovits(gsv_dir / "golden_A_s2_v2.pth"), load_gpt(gsv_dir / "golden_A_s1.ckpt"))


@pytest.fixture(scope="module")
def reference(synth):
    """An espeak-ng reference clip with seeded stand-in HuBERT features."""
    samples, rate = speech(REFERENCE_TEXT)
    ssl = torch.randn(768, int(len(samples) / rate * 50), generator=torch.Generator().manual_seed(0))
    return synth.reference(samples, rate, REFERENCE_TEXT, "en", ssl=ssl)
