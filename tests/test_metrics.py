"""Specifications of the evaluation metrics (narrator/metrics.py): known answers on espeak-ng speech and on
hand-computed texts."""

from __future__ import annotations

import math
import time
from pathlib import Path

import librosa
import numpy as np
import pytest

from narrator.audiofile import read_audio
from cli.demo import SENTENCES, espeak
from narrator.errors import NarratorError
from narrator.metrics import (
    DEFAULT_GATES,
    DurationCheck,
    ErrorRate,
    Gate,
    MetricError,
    duration_check,
    evaluate_gates,
    f0_metrics,
    mel_cepstral_distortion,
    normalize_for_wer,
    real_time_factor,
    repeated_or_skipped_words,
    speaking_rate_s_per_phone,
    word_error_rate,
)
from tests.intake import INTRUDER_VOICE, NARRATOR_VOICE

TEXT = SENTENCES[0]  # about 4.4 s of speech


def _say(tmp: Path, text: str = TEXT, voice: str = NARRATOR_VOICE, **kwargs) -> tuple[np.ndarray, int]:
    audio = read_audio(espeak(text, tmp / f"clip{len(list(tmp.iterdir()))}.wav", voice, **kwargs))
    return audio.mono(), audio.sample_rate_hz


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, np.ndarray]:
    """One sentence in several renderings, all 22.05 kHz float32 mono."""
    tmp = tmp_path_factory.mktemp("metrics")
    narrator, rate = _say(tmp)
    assert rate == 22050
    return {
        "narrator": narrator,
        "shifted": np.concatenate([np.zeros(int(0.3137 * rate), np.float32), narrator]),  # not a whole frame
        "faster": _say(tmp, speed_wpm=170, seed=3)[0],  # the same voice reading about 13 % faster
        "stretched": librosa.effects.time_stretch(narrator, rate=1.1),
        "other_voice": _say(tmp, voice=INTRUDER_VOICE, seed=4)[0],
        "other_sentence": _say(tmp, SENTENCES[5], seed=5)[0],
        "two_semitones_up": librosa.effects.pitch_shift(narrator, sr=rate, n_steps=2),
        "espeak_pitch_70": _say(tmp, pitch=70, seed=6)[0],
    }


RATE = 22050


# ---------------------------------------------------------------------------------------------- MCD

def test_mcd_of_a_clip_against_itself_is_zero(clips):
    assert mel_cepstral_distortion(clips["narrator"], clips["narrator"], RATE) == pytest.approx(0.0, abs=1e-9)


def test_mcd_ignores_loudness_because_c0_is_left_out(clips):
    quieter = clips["narrator"] * np.float32(0.25)
    assert mel_cepstral_distortion(clips["narrator"], quieter, RATE) < 0.05


def test_mcd_of_a_time_shifted_copy_is_small(clips):
    assert mel_cepstral_distortion(clips["narrator"], clips["shifted"], RATE) < 1.5


def test_mcd_of_the_same_voice_reading_faster_is_small(clips):
    assert mel_cepstral_distortion(clips["narrator"], clips["faster"], RATE) < 1.5


def test_mcd_of_a_phase_vocoder_stretched_copy_stays_below_another_voice(clips):
    stretched = mel_cepstral_distortion(clips["narrator"], clips["stretched"], RATE)
    other = mel_cepstral_distortion(clips["narrator"], clips["other_voice"], RATE)
    assert stretched < 3.5 < other


def test_mcd_of_another_voice_is_clearly_larger_than_of_the_same_voice(clips):
    same = mel_cepstral_distortion(clips["narrator"], clips["faster"], RATE)
    other = mel_cepstral_distortion(clips["narrator"], clips["other_voice"], RATE)
    assert other > 4.0
    assert other > 3 * same


def test_mcd_drops_silent_frames_before_alignment_unless_told_not_to(clips):
    pad = np.zeros(100 * 220, np.float32)  # one second of digital silence, a whole number of 10 ms hops
    padded = np.concatenate([pad, clips["narrator"], pad])
    assert mel_cepstral_distortion(clips["narrator"], padded, RATE) == pytest.approx(0.0, abs=1e-9)
    assert mel_cepstral_distortion(clips["narrator"], padded, RATE, trim_silence_db=None) > 0.1


def test_mcd_rejects_stereo_audio_with_a_hint_to_mix_down(clips):
    stereo = np.stack([clips["narrator"], clips["narrator"]])
    with pytest.raises(MetricError, match=r"shape \(2, .*mono"):
        mel_cepstral_distortion(stereo, clips["narrator"], RATE)


def test_mcd_rejects_integer_pcm_with_a_hint_to_convert(clips):
    pcm = (clips["narrator"] * 32767).astype(np.int16)
    with pytest.raises(MetricError, match="float samples"):
        mel_cepstral_distortion(clips["narrator"], pcm, RATE)


def test_mcd_rejects_a_silent_synthesis(clips):
    with pytest.raises(MetricError, match="syn is silent"):
        mel_cepstral_distortion(clips["narrator"], np.zeros(RATE, np.float32), RATE)


def test_mcd_rejects_a_missing_sample_rate(clips):
    with pytest.raises(MetricError, match="sample_rate_hz"):
        mel_cepstral_distortion(clips["narrator"], clips["narrator"], 22050.0)


def test_metric_errors_are_narrator_errors():
    assert issubclass(MetricError, NarratorError)


# ---------------------------------------------------------------------------------------------- F0

def test_f0_of_a_clip_against_itself_has_zero_error_and_full_correlation(clips):
    result = f0_metrics(clips["narrator"], clips["narrator"], RATE)
    assert result.rmse_hz == pytest.approx(0.0, abs=1e-9)
    assert result.rmse_cents == pytest.approx(0.0, abs=1e-9)
    assert result.correlation == pytest.approx(1.0)
    assert result.voiced_frames > 100  # 10 ms frames: over a second of voiced speech in a 4.4 s sentence


def test_f0_of_a_copy_two_semitones_higher_is_about_200_cents_off(clips):
    result = f0_metrics(clips["narrator"], clips["two_semitones_up"], RATE)
    assert result.rmse_cents == pytest.approx(200.0, abs=25.0)
    assert result.correlation > 0.95  # same intonation, transposed


def test_f0_error_in_hz_matches_the_pitch_ratio_of_a_shifted_copy(clips):
    result = f0_metrics(clips["narrator"], clips["two_semitones_up"], RATE)
    voice_hz = float(np.nanmedian(librosa.yin(clips["narrator"], fmin=60, fmax=500, sr=RATE)))
    assert result.rmse_hz == pytest.approx(voice_hz * (2 ** (2 / 12) - 1), rel=0.3)


def test_f0_of_a_higher_espeak_pitch_setting_is_several_semitones_off(clips):
    assert f0_metrics(clips["narrator"], clips["espeak_pitch_70"], RATE).rmse_cents > 250.0


def test_f0_of_a_female_voice_is_about_an_octave_off(clips):
    assert f0_metrics(clips["narrator"], clips["other_voice"], RATE).rmse_cents > 800.0


def test_f0_of_a_shifted_copy_is_aligned_by_dtw(clips):
    result = f0_metrics(clips["narrator"], clips["shifted"], RATE)
    assert result.rmse_cents < 30.0
    assert result.correlation > 0.98


def test_f0_of_unvoiced_noise_is_not_a_number_with_no_voiced_frames(clips):
    noise = (np.random.default_rng(0).standard_normal(3 * RATE) * 0.1).astype(np.float32)
    result = f0_metrics(clips["narrator"], noise, RATE)
    assert result.voiced_frames < 2
    assert math.isnan(result.rmse_cents) and math.isnan(result.correlation)


def test_f0_of_a_four_second_clip_takes_well_under_a_second(clips):
    f0_metrics(clips["narrator"], clips["faster"], RATE)  # warm-up: imports
    start = time.perf_counter()
    f0_metrics(clips["narrator"], clips["faster"], RATE)
    assert time.perf_counter() - start < 1.0


# ---------------------------------------------------------------------------------------------- WER / CER

def test_normalisation_lowercases_strips_punctuation_and_collapses_whitespace():
    assert normalize_for_wer("  Hello,   World!  How are YOU?", "en") == "hello world how are you"


def test_normalisation_keeps_apostrophes_inside_words_only():
    assert normalize_for_wer("'Don't' stop at O\u2019Clock,' she said.", "en") == "don't stop at o'clock she said"


def test_normalisation_splits_words_at_dashes_and_slashes():
    assert normalize_for_wer("Yes\u2014no, a well-known and/or", "en") == "yes no a well known and or"


def test_normalisation_of_chinese_removes_punctuation_and_spaces():
    assert normalize_for_wer("今天， 天气 很好！“是的”。", "zh") == "今天天气很好是的"


def test_wer_counts_one_substitution_and_one_deletion_over_six_words():
    result = word_error_rate("The cat sat on the mat.", "the cat sit on mat", "en")
    assert result == ErrorRate(rate=pytest.approx(2 / 6), substitutions=1, deletions=1, insertions=0,
                               reference_units=6)


def test_wer_is_zero_when_only_case_and_punctuation_differ():
    assert word_error_rate("Hello, World! It's me.", "hello world it's me", "en").rate == 0.0


def test_wer_counts_insertions_and_can_exceed_one():
    result = word_error_rate("hello", "hello hello world", "en")
    assert (result.insertions, result.rate) == (2, 2.0)


def test_wer_of_an_empty_hypothesis_is_one():
    result = word_error_rate("one two three", "", "en")
    assert (result.deletions, result.rate) == (3, 1.0)


def test_cer_of_chinese_counts_characters():
    result = word_error_rate("今天天气很好。", "今天 天汽很好", "zh")
    assert (result.substitutions, result.reference_units, result.rate) == (1, 6, pytest.approx(1 / 6))


def test_wer_refuses_an_unsupported_language_naming_the_supported_ones():
    with pytest.raises(MetricError, match="'en'.*'zh'"):
        word_error_rate("bonjour", "bonjour", "fr")


def test_wer_refuses_a_reference_without_words():
    with pytest.raises(MetricError, match="no words"):
        word_error_rate(" ... ", "hello", "en")


# ---------------------------------------------------------------------------------------------- robustness

def test_speaking_rate_is_the_median_seconds_per_phone():
    assert speaking_rate_s_per_phone([1.0, 2.0, 9.0], [10, 20, 30]) == pytest.approx(0.1)


def test_speaking_rate_refuses_mismatched_lists():
    with pytest.raises(MetricError, match="one duration and one phone count per"):
        speaking_rate_s_per_phone([1.0, 2.0], [10])


def test_duration_near_the_expected_one_is_ok():
    assert duration_check(3.3, 30, 0.1) == DurationCheck(ratio=pytest.approx(1.1), verdict="ok")


def test_duration_twice_the_expected_one_is_too_long():
    assert duration_check(6.0, 30, 0.1).verdict == "too_long"


def test_duration_half_the_expected_one_is_too_short():
    assert duration_check(1.5, 30, 0.1).verdict == "too_short"


def test_duration_tolerance_is_symmetric_on_a_log_scale():
    assert duration_check(4.5, 30, 0.1).verdict == "ok"  # 1.5 times
    assert duration_check(2.0, 30, 0.1).verdict == "ok"  # 1 / 1.5 times
    assert duration_check(1.9, 30, 0.1).verdict == "too_short"


def test_duration_check_refuses_zero_phones():
    with pytest.raises(MetricError, match="n_phones"):
        duration_check(2.0, 0, 0.1)


def test_a_doubled_word_is_reported_as_repeated():
    issues = repeated_or_skipped_words("The cat sat on the mat.", "the cat cat sat on the mat", "en")
    assert (issues.repeated, issues.skipped) == (["cat"], [])


def test_a_repeated_phrase_is_reported_word_by_word():
    issues = repeated_or_skipped_words("the cat sat on the mat", "the cat sat the cat sat on the mat", "en")
    assert sorted(issues.repeated) == ["cat", "sat", "the"]
    assert issues.skipped == []


def test_a_missing_word_is_reported_as_skipped():
    issues = repeated_or_skipped_words("The cat sat on the mat.", "the cat on the mat", "en")
    assert (issues.repeated, issues.skipped) == ([], ["sat"])


def test_an_extra_word_that_repeats_nothing_is_neither_repeated_nor_skipped():
    issues = repeated_or_skipped_words("the cat sat", "the big cat sat", "en")
    assert (issues.repeated, issues.skipped) == ([], [])


def test_chinese_repetition_and_skips_are_found_per_character():
    assert repeated_or_skipped_words("今天天气很好", "今天天气气很好", "zh").repeated == ["气"]
    assert repeated_or_skipped_words("今天天气很好", "今天气很好", "zh").skipped == ["天"]


# ---------------------------------------------------------------------------------------------- speed

def test_real_time_factor_is_synthesis_time_over_audio_time():
    assert real_time_factor(2.0, 4.0) == 0.5


def test_real_time_factor_refuses_empty_audio():
    with pytest.raises(MetricError, match="audio_s"):
        real_time_factor(1.0, 0.0)


# ---------------------------------------------------------------------------------------------- gates

GATES = [Gate("speaker_similarity", ">=", 0.75), Gate("wer", "<=", 0.10)]


def test_gates_pass_when_every_metric_meets_its_threshold():
    verdict = evaluate_gates({"speaker_similarity": 0.82, "wer": 0.10}, GATES)
    assert verdict.passed and verdict.reasons == []
    assert [c["status"] for c in verdict.checked] == ["pass", "pass"]


def test_a_failing_gate_fails_the_verdict_with_a_readable_reason():
    verdict = evaluate_gates({"speaker_similarity": 0.61, "wer": 0.15}, GATES)
    assert not verdict.passed
    assert verdict.reasons == ["speaker_similarity 0.61 < 0.75 (gate)", "wer 0.15 > 0.1 (gate)"]


def test_a_metric_that_was_not_measured_is_skipped_not_failed_when_its_gate_is_not_required():
    verdict = evaluate_gates({"speaker_similarity": 0.8, "wer": None}, GATES)
    assert verdict.passed
    assert len(verdict.reasons) == 1 and verdict.reasons[0].startswith("wer skipped")
    assert verdict.checked[1] == {"metric": "wer", "op": "<=", "threshold": 0.10, "required": False, "value": None,
                                  "status": "skipped", "reason": "not_measured"}


def test_a_required_metric_that_was_not_measured_fails_with_what_to_do():
    verdict = evaluate_gates({"wer": None}, [Gate("wer", "<=", 0.1, required=True)],
                             how_to_measure={"wer": "set the ASR model"})
    assert not verdict.passed
    assert verdict.reasons == ["wer not measured, but its gate is required (gate <= 0.1): set the ASR model"]
    assert (verdict.checked[0]["status"], verdict.checked[0]["reason"]) == ("fail", "not_measured")


def test_a_required_metric_that_does_not_apply_is_skipped():
    verdict = evaluate_gates({"cer": None}, [Gate("cer", "<=", 0.1, required=True)],
                             not_applicable={"cer": "nothing Chinese was spoken"})
    assert verdict.passed and verdict.reasons == [
        "cer skipped: not applicable, nothing Chinese was spoken (gate <= 0.1)"]
    assert (verdict.checked[0]["status"], verdict.checked[0]["reason"]) == ("skipped", "not_applicable")


def test_a_metric_absent_from_the_results_is_skipped_with_a_reason():
    verdict = evaluate_gates({"speaker_similarity": 0.8}, GATES)
    assert verdict.passed and "wer skipped: not among the metrics given" in verdict.reasons[0]


def test_a_metric_that_could_not_be_computed_fails():
    verdict = evaluate_gates({"f0_rmse_cents": math.nan}, [Gate("f0_rmse_cents", "<=", 300.0)])
    assert not verdict.passed and "NaN" in verdict.reasons[0]


def test_failure_reasons_show_enough_digits_to_tell_value_from_threshold():
    verdict = evaluate_gates({"speaker_similarity": 0.7499}, GATES[:1])
    assert verdict.reasons == ["speaker_similarity 0.7499 < 0.75 (gate)"]


def test_a_gate_with_an_unknown_operator_is_refused():
    with pytest.raises(MetricError, match="'<=' or '>='"):
        Gate("wer", "<", 0.1)  # type: ignore[arg-type]


def test_default_gates_cover_the_evaluation_metrics():
    assert {gate.metric for gate in DEFAULT_GATES} == {
        "speaker_similarity", "wer", "cer", "mcd_db", "f0_rmse_cents", "rtf", "duration_outliers_share"}


def test_default_gates_pass_a_good_voice_evaluated_without_asr():
    metrics = {"speaker_similarity": 0.85, "wer": None, "cer": None, "mcd_db": 5.0, "f0_rmse_cents": 150.0,
               "rtf": 0.3, "duration_outliers_share": 0.0}
    verdict = evaluate_gates(metrics, DEFAULT_GATES)
    assert verdict.passed and len(verdict.reasons) == 2
