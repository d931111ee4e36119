"""Text to speech with one voice (models/tts.py) over the reduced official-format models of ../shared/gsv: the
sentences come out as 32 kHz audio of the length the GPT's tokens imply, a seed makes it repeatable, and bad
references are refused with advice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.checkpoints import load_gpt, load_sovits
from models.inference import decoding_mode
from models.tts import SamplingSettings, Synthesizer, SynthesisError
from tests.intake import speech

TEXT = "The quick brown fox jumps over the lazy dog. Then it runs home."


def test_reference_holds_spectrogram_prompt_codes_and_phones(reference):
    assert reference.spec.shape[:2] == (1, 1025)
    assert reference.codes.shape[0] == 1 and abs(reference.codes.shape[1] - reference.spec.shape[2] / 2) <= 2
    assert reference.bert.shape == (1024, reference.phones.numel()) and reference.sv is None


def test_each_sentence_becomes_audio_of_its_token_count(synth, reference):
    settings = SamplingSettings(max_tokens_per_phone=1.0)
    out = synth.speak(TEXT, reference, "en", settings, seed=0)
    assert out.sample_rate_hz == 32000 and len(out.sentences) == 2
    pause = int(settings.pause_s * 32000)
    expected = sum(s.tokens * 1280 for s in out.sentences) + pause
    assert len(out.samples) == expected
    assert np.abs(out.samples).max() <= 1.0 and np.isfinite(out.samples).all()
    assert 0 < out.first_audio_s <= out.seconds and out.real_time_factor > 0


def test_the_same_seed_gives_the_same_audio(synth, reference):
    settings = SamplingSettings(max_tokens_per_phone=1.0)
    a = synth.speak("Hello there, reader.", reference, "en", settings, seed=3)
    b = synth.speak("Hello there, reader.", reference, "en", settings, seed=3)
    assert np.array_equal(a.samples, b.samples)


def test_stream_yields_one_chunk_per_sentence(synth, reference):
    chunks = list(synth.stream(TEXT, reference, "en", SamplingSettings(max_tokens_per_phone=1.0), seed=1))
    assert len(chunks) == 2 and chunks[0].text.lower().startswith("the quick")


@pytest.mark.parametrize("seconds", [1.0, 12.0])
def test_reference_outside_3_to_10_seconds_is_refused(synth, seconds):
    with pytest.raises(SynthesisError, match="3-10 s"):
        synth.reference(np.zeros(int(seconds * 16000), np.float32), 16000, "Hello.", "en", ssl=torch.zeros(768, 50))


def test_pro_voice_without_sv_model_is_refused(gsv_dir):
    with pytest.raises(SynthesisError, match="sv_checkpoint"):
        Synthesizer(load_sovits(gsv_dir / "golden_A_s2_v2Pro.pth"), load_gpt(gsv_dir / "golden_A_s1.ckpt"))


def test_reference_goes_through_hubert_when_no_features_are_given(synth, tmp_path):
    from transformers import HubertConfig, HubertModel

    from models.features import REFERENCE_PAD_SAMPLES, HubertExtractor

    torch.manual_seed(0)
    HubertModel(HubertConfig(hidden_size=768, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                             conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
                 ).save_pretrained(tmp_path / "hubert")
    with_hubert = Synthesizer(synth.sovits, synth.gpt, hubert=HubertExtractor(tmp_path / "hubert", device="cpu"))
    samples, rate = speech("A second reference clip, long enough to use.")
    ref = with_hubert.reference(samples, rate, "A second reference clip, long enough to use.", "en")
    padded_s = len(samples) / rate + REFERENCE_PAD_SAMPLES / 16000  # the official zero padding at 16 kHz
    assert ref.codes.shape[1] == pytest.approx(padded_s * 25, abs=2)


def test_exact_mode_speaks_as_the_models_were_loaded(gsv_dir, reference):
    settings = SamplingSettings(max_tokens_per_phone=1.0)
    plain = Synthesizer(load_sovits(gsv_dir / "golden_A_s2_v2.pth"), load_gpt(gsv_dir / "golden_A_s1.ckpt"))
    exact = Synthesizer(load_sovits(gsv_dir / "golden_A_s2_v2.pth"), load_gpt(gsv_dir / "golden_A_s1.ckpt"))
    exact.prepare("exact")
    a = plain.speak("Hello there, reader.", reference, "en", settings, seed=3)
    b = exact.speak("Hello there, reader.", reference, "en", settings, seed=3)
    assert exact.mode == "exact" and len(a.samples) == len(b.samples)
    assert np.abs(a.samples - b.samples).max() < 1e-5  # float rounding only


def test_fast_mode_runs_bfloat16_sovits_and_int8_gpt_steps_on_cpu(gsv_dir, reference):
    fast = Synthesizer(load_sovits(gsv_dir / "golden_A_s2_v2.pth"), load_gpt(gsv_dir / "golden_A_s1.ckpt"))
    fast.prepare("fast")
    assert next(fast.sovits.parameters()).dtype == torch.bfloat16 and decoding_mode(fast.gpt) in ("numba_int8", "int8")
    out = fast.speak(TEXT, reference, "en", SamplingSettings(max_tokens_per_phone=1.0), seed=0)
    assert out.samples.dtype == np.float32 and np.isfinite(out.samples).all() and len(out.sentences) == 2
    assert np.abs(out.samples).max() > 0


def test_an_unknown_inference_mode_is_refused(synth):
    with pytest.raises(SynthesisError, match="exact, fast"):
        synth.prepare("turbo")
