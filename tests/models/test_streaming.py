"""Sub-sentence streaming (models/tts.py `ChunkedRender`, models/gpt.py `generate_chunks`) over the reduced
official-format models of ../shared/gsv: the GPT's chunks are its whole decode's tokens, the streamed audio is as
long as the whole decode and close to it, its joins make no step the audio itself rarely makes, and the first
chunk comes while the GPT is still decoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.tts import NOISE_BLOCK_FRAMES, NoiseTrack, SamplingSettings
from narrator.config import StreamingConfig
from narrator.metrics import join_steps, log_mel_distance_db

SENTENCE = "The quick brown fox jumps over the lazy dog and then it runs all the way home to sleep."
# small chunks, so that the golden models' short sentences still stream in several pieces
CHUNKING = StreamingConfig(first_chunk_tokens=6, chunk_tokens=8, context_tokens=8, lookahead_tokens=2,
                           crossfade_ms=20.0)
MEL_BOUND_DB = 0.5  # streamed vs whole decode: mean absolute log-mel difference at most this (dB)


@pytest.fixture(scope="module")
def whole_and_streamed(synth, reference):
    """The sentence from seed 0, decoded whole (`sentence`) and streamed (`sentence_pieces` with CHUNKING)."""
    settings = SamplingSettings()
    whole = synth.sentence(SENTENCE, reference, "en", settings, synth.generator(0, 0))
    pieces = list(synth.sentence_pieces(SENTENCE, reference, "en", settings, synth.generator(0, 0),
                                        chunking=CHUNKING))
    return whole, pieces


def test_gpt_chunks_joined_are_the_whole_decodes_tokens_for_a_seed(synth, reference):
    plan = synth.plan(SENTENCE, reference, "en")
    whole = synth.decode(plan, reference, generator=synth.generator(5, 0))
    chunks = list(synth.decode_chunks(plan, reference, generator=synth.generator(5, 0), chunking=CHUNKING))
    assert len(chunks) >= 3 and [last for _, last in chunks] == [False] * (len(chunks) - 1) + [True]
    assert chunks[0][0].shape[1] == CHUNKING.first_chunk_tokens
    assert all(c.shape[1] == CHUNKING.chunk_tokens for c, _ in chunks[1:-1])
    assert torch.equal(torch.cat([c for c, _ in chunks], dim=1), whole)


def test_streamed_audio_is_as_long_as_the_whole_decode(whole_and_streamed):
    whole, pieces = whole_and_streamed
    assert len(pieces) >= 3 and pieces[-1].last and not any(p.last for p in pieces[:-1])
    assert sum(p.tokens for p in pieces) == whole.tokens
    assert sum(len(p.samples) for p in pieces) == len(whole.samples) == whole.tokens * 1280


def test_joins_make_no_step_above_the_signals_99_9th_percentile(whole_and_streamed):
    _, pieces = whole_and_streamed
    streamed = np.concatenate([p.samples for p in pieces])
    joins = np.cumsum([len(p.samples) for p in pieces])[:-1]
    steps, threshold = join_steps(streamed, joins)
    assert len(steps) >= 2 and steps.max() <= threshold, (steps, threshold)


def test_streamed_audio_is_within_the_mel_bound_of_the_whole_decode(whole_and_streamed):
    whole, pieces = whole_and_streamed
    streamed = np.concatenate([p.samples for p in pieces])
    assert log_mel_distance_db(streamed, whole.samples, 32000) <= MEL_BOUND_DB
    assert not np.array_equal(streamed, np.zeros_like(streamed))


def test_the_first_chunk_comes_before_the_gpt_has_finished(synth, reference):
    steps = []
    hook = synth.gpt.ar_predict_layer.register_forward_hook(lambda *_: steps.append(1))
    try:
        pieces = synth.sentence_pieces(SENTENCE, reference, "en", SamplingSettings(), synth.generator(0, 0),
                                       chunking=CHUNKING)
        first = next(pieces)
        at_first = len(steps)
        rest = list(pieces)
    finally:
        hook.remove()
    total = first.tokens + sum(p.tokens for p in rest)
    assert len(first.samples) == first.tokens * 1280 > 0
    assert at_first == CHUNKING.first_chunk_tokens < total <= len(steps)


def test_a_seeded_stream_of_a_text_yields_several_pieces_per_sentence_with_the_pause_after_the_last(synth, reference):
    text = SENTENCE + " Then it sleeps."
    settings = SamplingSettings()
    pieces = list(synth.stream(text, reference, "en", settings, seed=2, chunking=CHUNKING))
    whole = synth.speak(text, reference, "en", settings, seed=2)
    assert sum(p.last for p in pieces) == 2 and len(pieces) > 2
    assert sum(len(p.samples) for p in pieces) == len(whole.samples)
    first_last = next(i for i, p in enumerate(pieces) if p.last)
    assert not pieces[first_last].samples[-int(settings.pause_s * 32000):].any()  # the pause, after its last piece


def test_another_speed_is_spoken_a_sentence_at_a_time(synth, reference):
    pieces = list(synth.sentence_pieces(SENTENCE, reference, "en", SamplingSettings(speed=1.2),
                                        synth.generator(0, 0), chunking=CHUNKING))
    assert len(pieces) == 1 and pieces[0].last


def test_noise_track_gives_a_frame_the_same_noise_whatever_is_asked_for():
    def track():
        return NoiseTrack(4, torch.device("cpu"), torch.Generator().manual_seed(9))

    whole = track().frames(0, 3 * NOISE_BLOCK_FRAMES + 7)
    chunked = track()
    parts = [chunked.frames(a, b) for a, b in ((0, 20), (20, 75), (60, 3 * NOISE_BLOCK_FRAMES + 7))]
    assert torch.equal(torch.cat([parts[0], parts[1], parts[2][:, :, 15:]], dim=2), whole)
    assert whole.shape == (1, 4, 3 * NOISE_BLOCK_FRAMES + 7)


def test_a_crossfade_longer_than_the_held_back_audio_is_refused():
    with pytest.raises(ValueError, match="crossfade_ms"):
        StreamingConfig(lookahead_tokens=1, crossfade_ms=50.0)
