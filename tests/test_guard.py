"""The quality guard's checks on one sentence (models/guard.py): loops in the semantic tokens, seconds per phone,
and, given an ASR transcript, its error rate against the text as evaluation normalises it."""

from __future__ import annotations

import numpy as np

from models.guard import GuardLimits, check_sentence, token_loops

LIMITS = GuardLimits(loop_ngram_tokens=4, loop_max_repeats=3, loop_max_run_tokens=20, min_s_per_phone=0.03,
                     max_s_per_phone=0.3, max_error_rate=0.3)


def speech_like_tokens(n: int, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(0, 1024, n).tolist()


def test_ordinary_tokens_at_a_plausible_rate_pass():
    codes = speech_like_tokens(100)  # 4 s for 40 phones: 0.1 s per phone
    verdict = check_sentence(codes, 40, LIMITS)
    assert verdict.passed and verdict.reasons == []
    assert verdict.worst <= 1.0


def test_a_stretch_of_tokens_repeated_over_and_over_is_a_loop():
    codes = speech_like_tokens(30) + [7, 8, 9, 10] * 6 + speech_like_tokens(30, seed=1)
    assert token_loops(codes, 4)[0] == 6
    verdict = check_sentence(codes, 28, LIMITS)
    assert not verdict.passed
    assert any(r.startswith("loop: a 4-token stretch repeats 6 times") for r in verdict.reasons)
    assert verdict.scores["loop"] == 2.0


def test_one_token_held_for_seconds_is_a_stuck_decoder():
    codes = speech_like_tokens(40) + [5] * 30 + speech_like_tokens(20, seed=2)
    assert token_loops(codes, 4)[1] == 30
    assert "loop: one token runs 30 times" in check_sentence(codes, 30, LIMITS).reasons[0]


def test_too_many_seconds_per_phone_suggest_babbling_and_too_few_skipped_words():
    too_long = check_sentence(speech_like_tokens(200), 10, LIMITS)  # 8 s for 10 phones
    too_short = check_sentence(speech_like_tokens(10), 40, LIMITS)  # 0.4 s for 40 phones
    assert too_long.reasons == ["duration: 0.800 s per phone, more than 0.3 (repeated or babbled words)"]
    assert too_short.reasons[0].startswith("duration: 0.010 s per phone, less than 0.03")


def test_an_asr_transcript_is_scored_against_the_text_normalised_as_evaluation_does():
    codes = speech_like_tokens(100)
    heard_right = check_sentence(codes, 40, LIMITS, "Hello, World! It's late.", "en", "hello world it's late")
    assert heard_right.passed and heard_right.figures["error_rate"] == 0.0
    repeated = check_sentence(codes, 40, LIMITS, "Hello world, it's late.", "en",
                              "hello hello hello world it's late")
    assert not repeated.passed
    assert repeated.reasons == ["asr: WER 0.50 against the text (at most 0.3)"]


def test_chinese_is_scored_by_characters():
    verdict = check_sentence(speech_like_tokens(100), 40, LIMITS, "今天天气很好。", "zh", "今天天气")
    assert verdict.reasons == ["asr: CER 0.33 against the text (at most 0.3)"]
