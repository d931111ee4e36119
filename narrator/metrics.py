"""Evaluation metrics for `narrator evaluate`: pure functions, no models, no global state.

What each measures and the conventions used:

- `mel_cepstral_distortion`: spectral-envelope distance (dB) between a synthesized clip and a real recording of the
  same text, after aligning their frames with dynamic time warping (DTW). Cepstra are in the natural-log convention
  of SPTK (``ln|X(w)| = c0 + 2 * sum_k c_k cos(k w)`` on a mel frequency axis), so the standard constant
  ``10 / ln(10) * sqrt(2 * sum_k (c_k - c'_k)^2)`` gives decibels comparable with the literature; c0 (loudness)
  is left out.
- `f0_metrics`: pitch error (Hz and cents) and pitch-contour correlation over frames voiced in both clips, on the
  same DTW alignment.
- `normalize_for_wer`, `word_error_rate`: word (en) or character (zh) error rate after the Seed-TTS evaluation
  normalisation; `repeated_or_skipped_words` reads the same alignment for the GPT stage's typical failures.
- `speaking_rate_s_per_phone`, `duration_check`: synthesized duration against the narrator's own speaking rate.
- `real_time_factor`: synthesis time over audio time.
- `log_mel_distance_db`: mean absolute log-mel difference (dB) of two renderings of the same frames (no alignment),
  e.g. a streamed decode against the whole one; `join_steps`: sample steps at chunk joins against the signal's own
  steps (the click check of streamed audio).
- `Gate`, `evaluate_gates`, `DEFAULT_GATES`: pass/fail thresholds over a dict of metric values.

Audio arguments are mono float arrays, shape ``(samples,)``, values in [-1, 1], both clips at the same
``sample_rate_hz`` (resample first with `narrator.audiofile.resample`). Bad inputs raise `MetricError`.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from narrator.errors import NarratorError

__all__ = [
    "DEFAULT_GATES",
    "DurationCheck",
    "ErrorRate",
    "F0Metrics",
    "Gate",
    "MetricError",
    "NOT_APPLICABLE",
    "NOT_MEASURED",
    "Verdict",
    "WordIssues",
    "duration_check",
    "evaluate_gates",
    "f0_metrics",
    "join_steps",
    "log_mel_distance_db",
    "mel_cepstral_distortion",
    "normalize_for_wer",
    "real_time_factor",
    "repeated_or_skipped_words",
    "speaking_rate_s_per_phone",
    "word_error_rate",
]


class MetricError(NarratorError):
    """A metric cannot be computed from the inputs given (wrong shape, silent clip, unknown language...)."""


# --------------------------------------------------------------------------------------------------------------
# Frame analysis shared by MCD and F0
# --------------------------------------------------------------------------------------------------------------

_HOP_S = 0.010  # 10 ms frame shift (both the cepstra and the F0 track, so their frames line up)
_WINDOW_S = 0.025  # 25 ms analysis window for the cepstra
_N_MELS = 40  # mel bands the cepstra are taken from
_POWER_FLOOR = 1e-10  # -100 dB: keeps log() finite on digital silence
_MIN_CLIP_S = 0.1
_MIN_SAMPLE_RATE_HZ = 8000
_MAX_DTW_CELLS = 25_000_000  # 50 s against 50 s at 10 ms frames (two float64 matrices, 400 MB)
_MCD_CONSTANT = 10.0 / math.log(10.0) * math.sqrt(2.0)


def _check_audio(name: str, samples: np.ndarray, sample_rate_hz: int) -> np.ndarray:
    """Validate one clip and return it as float64 `(samples,)`."""
    array = np.asarray(samples)
    if array.ndim != 1:
        raise MetricError(f"{name} has shape {array.shape}: pass mono audio of shape (samples,) "
                          "(average the channels first, e.g. narrator.audiofile.Audio.mono())")
    if not np.issubdtype(array.dtype, np.floating):
        raise MetricError(f"{name} has dtype {array.dtype}: pass float samples in [-1, 1] "
                          "(e.g. narrator.audiofile.read_audio(path).mono())")
    if len(array) < _MIN_CLIP_S * sample_rate_hz:
        raise MetricError(f"{name} is {len(array) / sample_rate_hz:.3f} s long: metrics need at least "
                          f"{_MIN_CLIP_S} s of audio")
    if not np.all(np.isfinite(array)):
        raise MetricError(f"{name} contains NaN or infinite samples: fix the synthesis or the file it came from")
    if float(np.max(np.abs(array))) < 1e-5:  # below -100 dBFS
        raise MetricError(f"{name} is silent (peak below -100 dBFS): there is nothing to measure; check that "
                          "the synthesis produced audio")
    return array.astype(np.float64, copy=False)


def _check_rate(sample_rate_hz: int) -> int:
    if isinstance(sample_rate_hz, bool) or not isinstance(sample_rate_hz, (int, np.integer)) \
            or sample_rate_hz < _MIN_SAMPLE_RATE_HZ:
        raise MetricError(f"sample_rate_hz={sample_rate_hz!r}: pass the clips' sample rate as an integer of at "
                          f"least {_MIN_SAMPLE_RATE_HZ} Hz (resample both clips to one rate first)")
    return int(sample_rate_hz)


def _hop(sample_rate_hz: int) -> int:
    return int(round(_HOP_S * sample_rate_hz))


def _mel_cepstra(samples: np.ndarray, sample_rate_hz: int, n_coefficients: int) -> tuple[np.ndarray, np.ndarray]:
    """Mel-cepstra and frame energies of one clip.

    Returns ``(cepstra, energy_db)``: cepstra `(frames, n_coefficients)` with c0 in column 0, natural-log units
    (``ln|X| = c0 + 2 sum c_k cos(k w)`` over the mel-warped axis of `_N_MELS` bands); energy_db `(frames,)`,
    the frame's mel power in dB. Frames are centred every 10 ms (frame t at t * hop samples).
    """
    import librosa
    import scipy.fft

    win = int(round(_WINDOW_S * sample_rate_hz))
    n_fft = 1 << (win - 1).bit_length()
    spectrum = np.abs(librosa.stft(samples, n_fft=n_fft, hop_length=_hop(sample_rate_hz), win_length=win,
                                   window="hann", center=True, pad_mode="constant")) ** 2
    mel_basis = librosa.filters.mel(sr=sample_rate_hz, n_fft=n_fft, n_mels=_N_MELS, fmin=0.0,
                                    fmax=sample_rate_hz / 2.0)
    mel_power = np.maximum(mel_basis @ spectrum, _POWER_FLOOR).T  # (frames, mels)
    log_magnitude = 0.5 * np.log(mel_power)
    # unnormalised DCT-II: y_k = 2 sum_m x_m cos(pi k (2m + 1) / 2M); c_k = y_k / 2M inverts the cosine series
    # ln|X_m| = c0 + 2 sum_k c_k cos(pi k (m + 1/2) / M) sampled at the band centres
    cepstra = scipy.fft.dct(log_magnitude, type=2, axis=1)[:, :n_coefficients] / (2.0 * _N_MELS)
    energy_db = 10.0 * np.log10(mel_power.sum(axis=1))
    return cepstra, energy_db


_LOG_MEL_BANDS = 80  # log_mel_distance_db: mel bands per frame
_LOG_MEL_FLOOR_DB = -80.0  # log_mel_distance_db: band powers below this (relative to full scale) count as this


def log_mel_distance_db(a: np.ndarray, b: np.ndarray, sample_rate_hz: int) -> float:
    """Mean over frames and bands of |10 log10 P_a - 10 log10 P_b| (dB), P the mel-band power of 25 ms Hann
    frames every 10 ms (`_LOG_MEL_BANDS` bands, floored at `_LOG_MEL_FLOOR_DB`), frame t of one clip against frame
    t of the other: for two renderings of the same audio `(samples,)` of equal length (no time alignment)."""
    import librosa

    rate = _check_rate(sample_rate_hz)
    a, b = _check_audio("a", a, rate), _check_audio("b", b, rate)
    if len(a) != len(b):
        raise MetricError(f"log_mel_distance_db compares renderings of the same frames: got {len(a)} and {len(b)} "
                          "samples; trim both to the same length")
    win = int(round(_WINDOW_S * rate))
    n_fft = 1 << (win - 1).bit_length()
    mel_basis = librosa.filters.mel(sr=rate, n_fft=n_fft, n_mels=_LOG_MEL_BANDS, fmin=0.0, fmax=rate / 2.0)

    def log_mel(x: np.ndarray) -> np.ndarray:
        power = np.abs(librosa.stft(x, n_fft=n_fft, hop_length=_hop(rate), win_length=win, window="hann",
                                    center=True, pad_mode="constant")) ** 2
        return 10.0 * np.log10(np.maximum(mel_basis @ power, 10.0 ** (_LOG_MEL_FLOOR_DB / 10.0)))

    return float(np.mean(np.abs(log_mel(a) - log_mel(b))))


def join_steps(samples: np.ndarray, joins: Sequence[int], percentile: float = 99.9) -> tuple[np.ndarray, float]:
    """The click check of audio joined from chunks: `(steps (len(joins),), threshold)`, where steps[i] is
    |x[j] - x[j - 1]| at join j (the first sample of a chunk) and threshold is the `percentile` of |x[n+1] - x[n]|
    over the whole signal. A join whose step is above the threshold is a step the audio itself rarely makes."""
    x = np.asarray(samples, np.float64)
    if x.ndim != 1 or len(x) < 2:
        raise MetricError(f"join_steps takes mono audio (samples,) of at least 2 samples, got shape {x.shape}")
    if any(not 0 < j < len(x) for j in joins):
        raise MetricError(f"joins must lie inside the signal (1..{len(x) - 1}), got {list(joins)}")
    steps = np.abs(np.diff(x))
    return np.array([steps[j - 1] for j in joins]), float(np.percentile(steps, percentile))


def _sounding(energy_db: np.ndarray, trim_silence_db: float | None) -> np.ndarray:
    """Indices of frames within `trim_silence_db` of the loudest frame (all frames when None)."""
    if trim_silence_db is None:
        return np.arange(len(energy_db))
    return np.flatnonzero(energy_db >= energy_db.max() - trim_silence_db)


def _dtw_path(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DTW between `x` `(n, d)` and `y` `(m, d)` with Euclidean frame cost and steps (1,1), (1,0), (0,1).

    Returns the aligned index pairs ``(ix, iy)``, each `(path_length,)`, from (0, 0) to (n-1, m-1).
    """
    from scipy.spatial.distance import cdist

    n, m = len(x), len(y)
    if n * m > _MAX_DTW_CELLS:
        raise MetricError(f"clips of {n} and {m} frames are too long to align ({n * m:,} DTW cells): evaluate "
                          "sentence-length clips (under about a minute each)")
    cost = cdist(x, y)
    acc = np.full((n + 1, m + 1), np.inf)
    acc[0, 0] = 0.0
    # fill anti-diagonal by anti-diagonal: every cell of diagonal d depends only on diagonals d-1 and d-2
    for d in range(n + m - 1):
        i = np.arange(max(0, d - m + 1), min(d, n - 1) + 1)
        j = d - i
        best = np.minimum(np.minimum(acc[i, j], acc[i, j + 1]), acc[i + 1, j])
        acc[i + 1, j + 1] = cost[i, j] + best
    ix, iy = [n - 1], [m - 1]
    i, j = n, m
    while (i, j) != (1, 1):
        diagonal, up, left = acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1]
        if diagonal <= up and diagonal <= left:
            i, j = i - 1, j - 1
        elif up <= left:
            i -= 1
        else:
            j -= 1
        ix.append(i - 1)
        iy.append(j - 1)
    return np.array(ix[::-1]), np.array(iy[::-1])


@dataclass(frozen=True)
class _Aligned:
    """Two clips' sounding frames aligned by DTW: frame indices into each clip's 10 ms frame grid."""

    ref_frames: np.ndarray  # (path_length,)
    syn_frames: np.ndarray  # (path_length,)
    ref_cepstra: np.ndarray  # (ref_frames_total, n_coefficients)
    syn_cepstra: np.ndarray  # (syn_frames_total, n_coefficients)


def _align(ref: np.ndarray, syn: np.ndarray, sample_rate_hz: int, n_coefficients: int,
           trim_silence_db: float | None) -> _Aligned:
    ref_cep, ref_energy = _mel_cepstra(ref, sample_rate_hz, n_coefficients)
    syn_cep, syn_energy = _mel_cepstra(syn, sample_rate_hz, n_coefficients)
    ref_keep = _sounding(ref_energy, trim_silence_db)
    syn_keep = _sounding(syn_energy, trim_silence_db)
    ix, iy = _dtw_path(ref_cep[ref_keep, 1:], syn_cep[syn_keep, 1:])
    return _Aligned(ref_keep[ix], syn_keep[iy], ref_cep, syn_cep)


# --------------------------------------------------------------------------------------------------------------
# Mel-cepstral distortion
# --------------------------------------------------------------------------------------------------------------

def mel_cepstral_distortion(ref: np.ndarray, syn: np.ndarray, sample_rate_hz: int, n_mfcc: int = 13,
                            trim_silence_db: float | None = 40.0) -> float:
    """Mel-cepstral distortion in dB between a reference recording and a synthesized clip of the same text.

    Args:
        ref: the real recording, mono float `(samples,)` in [-1, 1].
        syn: the synthesized clip, mono float `(samples,)`, same sample rate; its length may differ.
        sample_rate_hz: the sample rate of both clips (at least 8000 Hz).
        n_mfcc: mel-cepstral coefficients computed per 10 ms frame, c0 included; c1..c{n_mfcc-1} are compared
            (c0, the loudness, is left out).
        trim_silence_db: frames quieter than the clip's loudest frame by more than this many dB are dropped
            before alignment (pauses are not spectral distortion); None keeps every frame.

    Returns:
        The mean over the DTW path of ``10 / ln(10) * sqrt(2 * sum_k (c_k - c'_k)^2)``, in dB. The same clip
        against itself gives 0; the same voice and text a few dB; another voice clearly more. The mel axis spans
        0 Hz to half the sample rate, so compare values computed at one rate (`DEFAULT_GATES` assumes 22.05 kHz;
        at 16-48 kHz they differ by about 10 %).
    """
    rate = _check_rate(sample_rate_hz)
    ref = _check_audio("ref", ref, rate)
    syn = _check_audio("syn", syn, rate)
    if isinstance(n_mfcc, bool) or not isinstance(n_mfcc, (int, np.integer)) or not 2 <= n_mfcc <= _N_MELS:
        raise MetricError(f"n_mfcc={n_mfcc!r}: pass an integer between 2 and {_N_MELS} (13 is usual)")
    aligned = _align(ref, syn, rate, int(n_mfcc), trim_silence_db)
    diff = aligned.ref_cepstra[aligned.ref_frames, 1:] - aligned.syn_cepstra[aligned.syn_frames, 1:]
    return float(np.mean(_MCD_CONSTANT * np.sqrt(np.sum(diff ** 2, axis=1))))


# --------------------------------------------------------------------------------------------------------------
# F0
# --------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class F0Metrics:
    """Pitch agreement over the frames voiced in both clips (after DTW alignment).

    rmse_hz: root-mean-square F0 difference in Hz. rmse_cents: the same in cents (1200 * log2 of the ratio; 100
    cents = one semitone). correlation: Pearson correlation of the two aligned F0 contours (Hz), 1 = same
    intonation. voiced_frames: aligned 10 ms frame pairs voiced in both clips. With fewer than 2 such frames
    every value but voiced_frames is NaN (the synthesis has no pitch to compare; a gate on it fails).
    """

    rmse_hz: float
    rmse_cents: float
    correlation: float
    voiced_frames: int


_PERIODICITY_VOICED = 0.75  # normalised autocorrelation at the detected period above which a frame is voiced


def _f0_track(samples: np.ndarray, sample_rate_hz: int, fmin_hz: float, fmax_hz: float) -> np.ndarray:
    """F0 in Hz per 10 ms frame (same grid as `_mel_cepstra`), NaN where unvoiced. Shape `(frames,)`.

    YIN gives a period per frame; a frame is voiced when the signal correlates with itself one period later
    (normalised autocorrelation >= `_PERIODICITY_VOICED`). Cheap: about 20 ms per second of audio.
    """
    import librosa

    hop = _hop(sample_rate_hz)
    frame_length = 1 << int(math.ceil(2.0 * sample_rate_hz / fmin_hz + 2)).bit_length()
    f0 = librosa.yin(samples, fmin=fmin_hz, fmax=fmax_hz, sr=sample_rate_hz, frame_length=frame_length,
                     hop_length=hop, center=True, pad_mode="constant")
    padded = np.pad(samples, frame_length // 2)
    frames = librosa.util.frame(padded, frame_length=frame_length, hop_length=hop, axis=0)[:len(f0)]
    span = frame_length // 2
    voiced = np.zeros(len(f0), dtype=bool)
    for t, (frame, hz) in enumerate(zip(frames, f0)):
        lag = int(round(sample_rate_hz / hz))
        a, b = frame[:span], frame[lag:lag + span]
        denominator = math.sqrt(float(a @ a) * float(b @ b))
        voiced[t] = denominator > 0 and float(a @ b) / denominator >= _PERIODICITY_VOICED
    return np.where(voiced, f0, np.nan)


def f0_metrics(ref: np.ndarray, syn: np.ndarray, sample_rate_hz: int, fmin_hz: float = 60.0,
               fmax_hz: float = 500.0, trim_silence_db: float | None = 40.0) -> F0Metrics:
    """Pitch error of a synthesized clip against a reference recording of the same text.

    Args:
        ref, syn: mono float `(samples,)` clips in [-1, 1] at `sample_rate_hz`; lengths may differ.
        sample_rate_hz: the sample rate of both clips (at least 8000 Hz).
        fmin_hz, fmax_hz: the F0 search range in Hz (60-500 covers adult speech).
        trim_silence_db: as for `mel_cepstral_distortion`; the frames are aligned by DTW on the same mel-cepstra.

    Returns:
        `F0Metrics` over the aligned frame pairs voiced in both clips. Same clip: rmse 0, correlation 1; a copy
        two semitones higher: rmse_cents near 200.
    """
    rate = _check_rate(sample_rate_hz)
    ref = _check_audio("ref", ref, rate)
    syn = _check_audio("syn", syn, rate)
    if not 0 < fmin_hz < fmax_hz < rate / 2:
        raise MetricError(f"fmin_hz={fmin_hz}, fmax_hz={fmax_hz}: need 0 < fmin_hz < fmax_hz < {rate / 2:g} "
                          "(half the sample rate); 60 and 500 suit adult speech")
    aligned = _align(ref, syn, rate, 13, trim_silence_db)
    ref_f0 = _f0_track(ref, rate, fmin_hz, fmax_hz)[aligned.ref_frames]
    syn_f0 = _f0_track(syn, rate, fmin_hz, fmax_hz)[aligned.syn_frames]
    both = ~np.isnan(ref_f0) & ~np.isnan(syn_f0)
    count = int(both.sum())
    if count < 2:
        return F0Metrics(math.nan, math.nan, math.nan, count)
    a, b = ref_f0[both], syn_f0[both]
    rmse_hz = float(np.sqrt(np.mean((b - a) ** 2)))
    rmse_cents = float(np.sqrt(np.mean((1200.0 * np.log2(b / a)) ** 2)))
    if np.std(a) == 0 or np.std(b) == 0:
        correlation = math.nan
    else:
        correlation = float(np.corrcoef(a, b)[0, 1])
    return F0Metrics(rmse_hz, rmse_cents, correlation, count)


# --------------------------------------------------------------------------------------------------------------
# Word / character error rate
# --------------------------------------------------------------------------------------------------------------

_LANGUAGES = ("en", "zh")


def _check_language(language: str) -> str:
    if language not in _LANGUAGES:
        raise MetricError(f"language {language!r} is not supported: use 'en' (word error rate) or 'zh' "
                          "(character error rate)")
    return language


def _is_punctuation_or_symbol(char: str) -> bool:
    return unicodedata.category(char)[0] in "PS"


def normalize_for_wer(text: str, language: str) -> str:
    """Normalise a transcript before scoring, as the Seed-TTS evaluation does.

    en: lower-case; delete punctuation and symbols ("U.S." becomes "us"), keeping apostrophes between letters
    ("don't", "o'clock"; curly apostrophes become straight); collapse whitespace. One departure from Seed-TTS,
    which deletes every mark: dashes and slashes become spaces, so the em dashes of narration ("yes—no") and
    hyphens ("well-known") split words the way an ASR transcript usually does. Digits are not spelled out.
    zh: delete punctuation, symbols and all whitespace; the result is scored character by character (latin
    letters are lower-cased). Traditional characters are not converted.
    """
    _check_language(language)
    text = unicodedata.normalize("NFKC", text).replace("\u2019", "'").replace("\u2018", "'").lower()
    kept = []
    for index, char in enumerate(text):
        if char == "'":
            before = text[index - 1] if index > 0 else " "
            after = text[index + 1] if index + 1 < len(text) else " "
            if language == "en" and before.isalnum() and after.isalnum():
                kept.append(char)
            continue
        if unicodedata.category(char) == "Pd" or char == "/":
            kept.append(" ")  # dashes and slashes separate words: "yes—no", "and/or"
            continue
        if _is_punctuation_or_symbol(char):
            continue
        kept.append(char)
    cleaned = "".join(kept)
    if language == "zh":
        return "".join(cleaned.split())
    return " ".join(cleaned.split())


def _units(text: str, language: str) -> list[str]:
    normalized = normalize_for_wer(text, language)
    return list(normalized) if language == "zh" else normalized.split()


_Op = Literal["match", "substitution", "deletion", "insertion"]


def _levenshtein(ref: Sequence[str], hyp: Sequence[str]) -> list[tuple[_Op, int | None, int | None]]:
    """Minimum-edit alignment: a list of (operation, reference index or None, hypothesis index or None)."""
    n, m = len(ref), len(hyp)
    dist = [[0] * (m + 1) for _ in range(n + 1)]  # dist[i][j]: edits between ref[:i] and hyp[:j]
    for i in range(n + 1):
        dist[i][0] = i
    for j in range(m + 1):
        dist[0][j] = j
    for i in range(1, n + 1):
        above, row, word = dist[i - 1], dist[i], ref[i - 1]
        for j in range(1, m + 1):
            row[j] = min(above[j - 1] + (word != hyp[j - 1]), above[j] + 1, row[j - 1] + 1)
    # walk back preferring match/substitution, then deletion, then insertion
    ops: list[tuple[_Op, int | None, int | None]] = []
    i, j = n, m
    while i > 0 or j > 0:
        if i > 0 and j > 0 and dist[i][j] == dist[i - 1][j - 1] + (ref[i - 1] != hyp[j - 1]):
            ops.append(("match" if ref[i - 1] == hyp[j - 1] else "substitution", i - 1, j - 1))
            i, j = i - 1, j - 1
        elif i > 0 and dist[i][j] == dist[i - 1][j] + 1:
            ops.append(("deletion", i - 1, None))
            i -= 1
        else:
            ops.append(("insertion", None, j - 1))
            j -= 1
    return ops[::-1]


@dataclass(frozen=True)
class ErrorRate:
    """Levenshtein errors of a hypothesis against a reference, in words (en) or characters (zh).

    rate = (substitutions + deletions + insertions) / reference_units; it can exceed 1 when the hypothesis
    has many extra words.
    """

    rate: float
    substitutions: int
    deletions: int
    insertions: int
    reference_units: int


def word_error_rate(reference: str, hypothesis: str, language: str) -> ErrorRate:
    """WER (language "en", words) or CER (language "zh", characters) after `normalize_for_wer` on both texts.

    `reference` is the text that was synthesized, `hypothesis` what the ASR heard. Raises `MetricError` when the
    reference has no words left after normalisation.
    """
    _check_language(language)
    ref, hyp = _units(reference, language), _units(hypothesis, language)
    if not ref:
        raise MetricError(f"the reference text {reference!r} has no words after normalisation: score a "
                          "non-empty transcript")
    counts = {"substitution": 0, "deletion": 0, "insertion": 0}
    for op, _, _ in _levenshtein(ref, hyp):
        if op != "match":
            counts[op] += 1
    errors = sum(counts.values())
    return ErrorRate(errors / len(ref), counts["substitution"], counts["deletion"], counts["insertion"], len(ref))


# --------------------------------------------------------------------------------------------------------------
# Robustness of the GPT stage
# --------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class WordIssues:
    """Words (en) or characters (zh), normalised, that the synthesis repeated or skipped, in text order.

    repeated: one entry per extra occurrence the ASR heard. skipped: one entry per reference word not heard.
    """

    repeated: list[str]
    skipped: list[str]


def repeated_or_skipped_words(reference_text: str, asr_text: str, language: str) -> WordIssues:
    """Read the word alignment of `word_error_rate` for the GPT stage's failures.

    An inserted word is *repeated* when it is part of a repeat in the ASR text: a run of k inserted words such
    that, for one period p <= k, each of them equals the word p positions before or after it ("the the cat",
    "the cat sat the cat sat on"); otherwise an inserted word equal to its neighbour still counts. Other
    insertions (e.g. a misheard extra word) are neither. A deleted reference word is *skipped*. For zh the units
    are characters.
    """
    _check_language(language)
    ref, hyp = _units(reference_text, language), _units(asr_text, language)
    ops = _levenshtein(ref, hyp)
    skipped = [ref[i] for op, i, _ in ops if op == "deletion" and i is not None]

    def same_at(t: int, p: int) -> bool:
        return (t - p >= 0 and hyp[t - p] == hyp[t]) or (t + p < len(hyp) and hyp[t + p] == hyp[t])

    inserted = [j for op, _, j in ops if op == "insertion" and j is not None]
    runs: list[list[int]] = []
    for j in inserted:
        if runs and runs[-1][-1] == j - 1:
            runs[-1].append(j)
        else:
            runs.append([j])
    repeated: list[str] = []
    for run in runs:
        period = next((p for p in range(1, len(run) + 1) if all(same_at(t, p) for t in run)), None)
        repeated += [hyp[t] for t in run if period is not None or same_at(t, 1)]
    return WordIssues(repeated=repeated, skipped=skipped)


def speaking_rate_s_per_phone(durations_s: Sequence[float], phone_counts: Sequence[int]) -> float:
    """The narrator's speaking rate in seconds per phone: the median over clips of duration / phones.

    Args:
        durations_s: speech duration of each held-out clip in seconds (trimmed of leading/trailing silence, the
            same way the synthesized clips will be measured).
        phone_counts: phones in each clip's transcript (from the text front-end), same order and length.
    """
    durations = np.asarray(durations_s, dtype=np.float64)
    phones = np.asarray(phone_counts, dtype=np.float64)
    if durations.ndim != 1 or durations.shape != phones.shape or len(durations) == 0:
        raise MetricError(f"got {durations.size} durations and {phones.size} phone counts: pass one duration "
                          "and one phone count per held-out clip (at least one clip)")
    if np.any(~np.isfinite(durations)) or np.any(durations <= 0) or np.any(phones <= 0):
        raise MetricError("every duration and phone count must be positive: drop clips without speech or "
                          "without phones before estimating the speaking rate")
    return float(np.median(durations / phones))


@dataclass(frozen=True)
class DurationCheck:
    """ratio = duration / (phones * expected seconds per phone); verdict "ok", "too_long" or "too_short"."""

    ratio: float
    verdict: Literal["ok", "too_long", "too_short"]


def duration_check(duration_s: float, n_phones: int, expected_s_per_phone: float,
                   tolerance: float = 0.5) -> DurationCheck:
    """Is a synthesized clip as long as the narrator would take to say its phones?

    Args:
        duration_s: the synthesized clip's speech duration in seconds (trim leading/trailing silence first).
        n_phones: phones in the text that was synthesized.
        expected_s_per_phone: the narrator's rate, from `speaking_rate_s_per_phone` on held-out clips.
        tolerance: allowed relative deviation, symmetric on a log scale: "ok" when
            1 / (1 + tolerance) <= ratio <= 1 + tolerance (0.5: from 0.67 to 1.5 times the expected duration).

    Returns:
        `DurationCheck`: "too_long" suggests repetition or babbling, "too_short" skipped words.
    """
    if not (math.isfinite(duration_s) and duration_s >= 0):
        raise MetricError(f"duration_s={duration_s!r}: pass the synthesized clip's duration in seconds (>= 0)")
    if isinstance(n_phones, bool) or not isinstance(n_phones, (int, np.integer)) or n_phones <= 0:
        raise MetricError(f"n_phones={n_phones!r}: pass the (positive) number of phones of the synthesized text")
    if not (math.isfinite(expected_s_per_phone) and expected_s_per_phone > 0):
        raise MetricError(f"expected_s_per_phone={expected_s_per_phone!r}: pass a positive rate from "
                          "speaking_rate_s_per_phone(...)")
    if not (math.isfinite(tolerance) and tolerance > 0):
        raise MetricError(f"tolerance={tolerance!r}: pass a positive relative tolerance such as 0.5")
    ratio = duration_s / (n_phones * expected_s_per_phone)
    if ratio > 1.0 + tolerance:
        return DurationCheck(ratio, "too_long")
    if ratio < 1.0 / (1.0 + tolerance):
        return DurationCheck(ratio, "too_short")
    return DurationCheck(ratio, "ok")


# --------------------------------------------------------------------------------------------------------------
# Speed
# --------------------------------------------------------------------------------------------------------------

def real_time_factor(synthesis_s: float, audio_s: float) -> float:
    """Seconds of compute per second of audio produced: synthesis_s / audio_s (below 1 is faster than real time)."""
    if not (math.isfinite(synthesis_s) and synthesis_s >= 0):
        raise MetricError(f"synthesis_s={synthesis_s!r}: pass the wall-clock synthesis time in seconds (>= 0)")
    if not (math.isfinite(audio_s) and audio_s > 0):
        raise MetricError(f"audio_s={audio_s!r}: pass the duration of the synthesized audio in seconds (> 0); an "
                          "empty synthesis has no real-time factor")
    return synthesis_s / audio_s


# --------------------------------------------------------------------------------------------------------------
# Quality gates
# --------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Gate:
    """A threshold a metric must meet: value `op` threshold, e.g. Gate("wer", "<=", 0.10). A `required` gate fails
    when its metric was not measured; one not required is skipped then."""

    metric: str
    op: Literal["<=", ">="]
    threshold: float
    required: bool = False

    def __post_init__(self) -> None:
        if self.op not in ("<=", ">="):
            raise MetricError(f"gate on {self.metric!r} has op {self.op!r}: use '<=' or '>='")
        if not (isinstance(self.threshold, (int, float)) and math.isfinite(self.threshold)):
            raise MetricError(f"gate on {self.metric!r} has threshold {self.threshold!r}: use a finite number")


@dataclass(frozen=True)
class Verdict:
    """The outcome of `evaluate_gates`.

    passed: no gate failed (skipped gates do not fail). reasons: one line per failed or skipped gate, failures
    first. checked: one dict per gate, in gate order: metric, op, threshold, required, value (None if not
    measured) and status "pass", "fail" or "skipped"; a gate whose metric has no value also has a reason:
    "not_measured" (failed when required, else skipped) or "not_applicable" (skipped: the metric does not apply).
    """

    passed: bool
    reasons: list[str]
    checked: list[dict]


# Suggested gates. Thresholds are a starting point, meant to be tuned on the first real narrators:
DEFAULT_GATES: tuple[Gate, ...] = (
    # cosine similarity of speaker embeddings (GE2E, narrator.speech) between synthesis and the narrator's
    # fingerprint: the same speaker usually scores above 0.8, different speakers below 0.7
    Gate("speaker_similarity", ">=", 0.75),
    # Seed-TTS reports 1-3 % WER / CER for strong systems with Whisper-large-v3 / Paraformer; 10 % leaves room
    # for ASR errors on short sentences and still catches garbled or truncated synthesis
    Gate("wer", "<=", 0.10),
    Gate("cer", "<=", 0.10),
    # this module's MCD reads within about 0.1 dB of an order-12 frequency-warped mel-cepstrum and about 15 %
    # below order-24 ones, the usual setting of published numbers (4-8 dB for TTS against held-out recordings).
    # Measured on espeak-ng speech of one sentence: the same voice re-spoken faster 0.8 dB, another voice
    # (en-us+f3 against en-us+m3) 5.0 dB, another sentence 5.4 dB. Real recordings carry more spectral detail
    # than espeak and score higher, so 8 dB is a loose first gate that catches a wrong voice or garbled audio
    Gate("mcd_db", "<=", 8.0),
    # RMS pitch error against the reference reading; 200 cents is two semitones. Measured on espeak-ng: a copy
    # pitch-shifted +2 semitones 206 cents, another male register 200, the same voice on another sentence
    # (intonation only) 184, a female voice 1200. 300 cents (a minor third) flags a wrong register or octave
    # jumps while tolerating a different intonation of the same text
    Gate("f0_rmse_cents", "<=", 300.0),
    # synthesis must keep up with playback on the serving hardware
    Gate("rtf", "<=", 1.0),
    # share of evaluation sentences whose duration_check verdict is not "ok" (repetition, skipped words)
    Gate("duration_outliers_share", "<=", 0.10),
)


def _format_pair(value: float, threshold: float) -> tuple[str, str]:
    """Format value and threshold with enough significant digits that distinct numbers print distinctly."""
    for digits in range(3, 10):
        a, b = f"{value:.{digits}g}", f"{threshold:.{digits}g}"
        if a != b or value == threshold:
            return a, b
    return repr(value), repr(threshold)


NOT_MEASURED = "not_measured"  # the reason of a gate whose metric has no value
NOT_APPLICABLE = "not_applicable"  # the reason of a gate whose metric does not apply (e.g. CER of English speech)


def evaluate_gates(metrics: Mapping[str, float | None], gates: Sequence[Gate] = DEFAULT_GATES, *,
                   not_applicable: Mapping[str, str] | None = None,
                   how_to_measure: Mapping[str, str] | None = None) -> Verdict:
    """Check metric values against gates.

    Args:
        metrics: metric name -> value; None (or absent) when not measured, e.g. "wer" without an ASR model.
        gates: the thresholds, e.g. `DEFAULT_GATES`.
        not_applicable: metric -> why it does not apply to what was measured (skipped even when required).
        how_to_measure: metric -> what to do so it is measured, the advice of a required gate's failure.

    Returns:
        `Verdict`. A gate whose metric is None or absent fails when it is required ("wer not measured, but its gate
        is required ...: set ...") and is skipped with a reason line otherwise. A NaN value (the metric could not
        be computed, e.g. no voiced frames) fails. A failure reads "speaker_similarity 0.61 < 0.75 (gate)".
    """
    failures: list[str] = []
    skips: list[str] = []
    checked: list[dict] = []
    for gate in gates:
        value = metrics.get(gate.metric)
        record = {"metric": gate.metric, "op": gate.op, "threshold": gate.threshold, "required": gate.required,
                  "value": value}
        rule = f"gate {gate.op} {gate.threshold:g}"
        if value is None and gate.metric in (not_applicable or {}):
            skips.append(f"{gate.metric} skipped: not applicable, {not_applicable[gate.metric]} ({rule})")
            record.update(status="skipped", reason=NOT_APPLICABLE)
        elif value is None:
            why = "not measured" if gate.metric in metrics else "not among the metrics given"
            record["reason"] = NOT_MEASURED
            if gate.required:
                how = (how_to_measure or {}).get(gate.metric, "measure it, or make its gate not required")
                failures.append(f"{gate.metric} {why}, but its gate is required ({rule}): {how}")
                record["status"] = "fail"
            else:
                skips.append(f"{gate.metric} skipped: {why} (not required; {rule})")
                record["status"] = "skipped"
        elif isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
            raise MetricError(f"metric {gate.metric!r} has value {value!r}: pass a number or None")
        elif math.isnan(value):
            failures.append(f"{gate.metric} is NaN: it could not be measured (gate {gate.op} {gate.threshold:g})")
            record["status"] = "fail"
        else:
            ok = value <= gate.threshold if gate.op == "<=" else value >= gate.threshold
            record["status"] = "pass" if ok else "fail"
            if not ok:
                shown, limit = _format_pair(float(value), float(gate.threshold))
                broken = ">" if gate.op == "<=" else "<"
                failures.append(f"{gate.metric} {shown} {broken} {limit} (gate)")
        checked.append(record)
    return Verdict(passed=not failures, reasons=failures + skips, checked=checked)
