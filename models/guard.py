"""The quality guard: is a synthesized sentence what the text asked for? Regenerate it when it is not.

The GPT's failure modes are loops (it repeats a stretch of semantic tokens: repeated words, babbling), a stuck
decoder (one token over and over: a drone or a long silence) and early stops (skipped words). Per sentence the
guard checks, with thresholds from `narrate.guard` in params.yaml (`GuardConfig`):

    loop            the most frequent n-gram of `loop_ngram_tokens` semantic tokens (of at least half as many
                    different tokens: a pause is not a loop) occurs at most `loop_max_repeats` times, and no token
                    runs longer than `loop_max_run_tokens`
    duration        seconds per phone (the GPT's tokens at 25 per second over the sentence's phones) within
                    [`min_s_per_phone`, `max_s_per_phone`]
    asr             when a transcriber is given (`narrate.guard.asr_model_dir`, a local Whisper), the WER (en) or
                    CER (zh) of its transcript against the text, normalised as evaluation does
                    (`narrator.metrics.word_error_rate`), at most `max_error_rate`

Each check gives a score relative to its limit (1.0 is the limit; above fails), so attempts compare: a failing
sentence is spoken again with the next seed (attempt a of sentence i draws from `sentence_seed(seed + a, i)`;
attempt 0 is exactly what `Synthesizer.stream` speaks) up to `max_attempts`, and the attempt with the lowest
worst score is kept. Narration (components/narrate.py) and the service (`quality: "checked"`) both use
`guarded_sentence`.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from models.tts import (
    SAMPLE_RATE_HZ,
    Decoder,
    Reference,
    SamplingSettings,
    SentenceAudio,
    Synthesizer,
    spoken_sentences,
)
from narrator.config import GuardConfig

TOKENS_PER_S = 25.0  # semantic tokens per second of speech
ASR_RATE_HZ = 16000
# (wav at 16 kHz, language) -> transcript: components.prepare.Transcriber, or a test's stand-in
Transcriber = Callable[[np.ndarray, str], str]


# The guard's thresholds are the `narrate.guard_limits` settings themselves: one set of defaults, validated once.
GuardLimits = GuardConfig


@dataclass
class GuardVerdict:
    """One attempt's checks: `scores` relative to their limits (above 1.0 fails), the raw `figures` and the
    failed checks' `reasons`."""

    scores: dict[str, float]
    figures: dict[str, float | str | None]
    reasons: list[str]

    @property
    def passed(self) -> bool:
        return not self.reasons

    @property
    def worst(self) -> float:
        return max(self.scores.values()) if self.scores else 0.0

    def as_dict(self) -> dict:
        return {"passed": self.passed, "reasons": list(self.reasons),
                "scores": {k: round(v, 4) for k, v in self.scores.items()},
                "figures": {k: round(v, 4) if isinstance(v, float) else v for k, v in self.figures.items()}}


def token_loops(codes: Sequence[int], ngram_tokens: int) -> tuple[int, int]:
    """(occurrences of the most frequent n-gram of `ngram_tokens` tokens, longest run of one token) in `codes`.

    N-grams of fewer than half as many different tokens (a pause is one or two tokens held) are left to the run."""
    codes = [int(c) for c in codes]
    if not codes:
        return 0, 0
    grams = Counter(gram for gram in (tuple(codes[i:i + ngram_tokens]) for i in range(len(codes) - ngram_tokens + 1))
                    if len(set(gram)) >= max(2, ngram_tokens // 2))  # pauses (one or two tokens) are not loops
    most = max(grams.values()) if grams else 0
    longest = run = 1
    for before, after in itertools.pairwise(codes):
        run = run + 1 if after == before else 1
        longest = max(longest, run)
    return most, longest


def check_sentence(codes: Sequence[int], n_phones: int, limits: GuardLimits, text: str = "", language: str = "en",
                   asr_text: str | None = None) -> GuardVerdict:
    """The guard's verdict on one sentence: its semantic `codes`, its phone count, and optionally what an ASR
    heard (`asr_text`) against `text`."""
    from narrator.metrics import MetricError, word_error_rate

    scores: dict[str, float] = {}
    figures: dict[str, float | str | None] = {}
    reasons: list[str] = []
    repeats, run = token_loops(codes, limits.loop_ngram_tokens)
    figures.update(ngram_repeats=repeats, longest_run_tokens=run)
    scores["loop"] = max(repeats / max(limits.loop_max_repeats, 1), run / max(limits.loop_max_run_tokens, 1))
    if repeats > limits.loop_max_repeats:
        reasons.append(f"loop: a {limits.loop_ngram_tokens}-token stretch repeats {repeats} times "
                       f"(at most {limits.loop_max_repeats})")
    if run > limits.loop_max_run_tokens:
        reasons.append(f"loop: one token runs {run} times (at most {limits.loop_max_run_tokens})")
    s_per_phone = len(codes) / TOKENS_PER_S / max(n_phones, 1)
    figures["s_per_phone"] = s_per_phone
    scores["duration"] = max(s_per_phone / limits.max_s_per_phone, limits.min_s_per_phone / max(s_per_phone, 1e-9))
    if s_per_phone > limits.max_s_per_phone:
        reasons.append(f"duration: {s_per_phone:.3f} s per phone, more than {limits.max_s_per_phone:g} (repeated or "
                       "babbled words)")
    elif s_per_phone < limits.min_s_per_phone:
        reasons.append(f"duration: {s_per_phone:.3f} s per phone, less than {limits.min_s_per_phone:g} (skipped "
                       "words)")
    if asr_text is not None:
        figures["asr_text"] = asr_text
        try:
            rate = word_error_rate(text, asr_text, language if language in ("en", "zh") else "en").rate
        except MetricError:  # nothing to score against (a text of numbers or symbols only)
            rate = None
        figures["error_rate"] = rate
        if rate is not None:
            scores["asr"] = rate / max(limits.max_error_rate, 1e-9)
            if rate > limits.max_error_rate:
                reasons.append(f"asr: {'CER' if language == 'zh' else 'WER'} {rate:.2f} against the text (at most "
                               f"{limits.max_error_rate:g})")
    return GuardVerdict(scores, figures, reasons)


@dataclass
class GuardedSentence:
    """The kept attempt of one sentence: its audio and codes `(n,)`, which attempt it was (0: the first seed),
    and every attempt's verdict (when the guard ran)."""

    audio: SentenceAudio
    codes: np.ndarray
    attempt: int
    verdicts: list[GuardVerdict] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.verdicts or self.verdicts[self.attempt].passed

    @property
    def regenerated(self) -> bool:
        return len(self.verdicts) > 1


def guarded_sentence(synth: Synthesizer, reference: Reference, text: str, language: str,
                     settings: SamplingSettings | None, seed: int | None, index: int,
                     limits: GuardLimits | None, max_attempts: int = 1, transcriber: Transcriber | None = None,
                     decode: Decoder | None = None) -> GuardedSentence:
    """Sentence `index` of a text, spoken with `seed` (plan once; decode and render per attempt). `limits` None:
    no guard, one attempt, exactly `Synthesizer.sentence`. Otherwise up to `max_attempts`, attempt a drawing from
    `synth.generator(seed + a, index)`, stopping at the first that passes; the best attempt is kept."""
    import time

    from narrator.audiofile import resample

    s = settings or SamplingSettings()
    plan = synth.plan(text, reference, language, s)
    attempts = 1 if limits is None else max(1, max_attempts)
    best: GuardedSentence | None = None
    verdicts: list[GuardVerdict] = []
    for attempt in range(attempts):
        started = time.perf_counter()
        generator = synth.generator(None if seed is None else seed + attempt, index)
        codes = synth.decode(plan, reference, s, generator) if decode is None else decode(plan, generator)
        samples = synth.render(plan, codes, reference, s, generator)
        n_phones = int(plan.target_phones.numel())
        audio = SentenceAudio(plan.text, samples, int(codes.shape[1]), n_phones, time.perf_counter() - started)
        flat = codes.reshape(-1).cpu().numpy()
        if limits is None:
            return GuardedSentence(audio, flat, 0)
        asr_text = None
        if transcriber is not None:
            asr_text = transcriber(resample(samples, SAMPLE_RATE_HZ, ASR_RATE_HZ), plan.language)
        verdict = check_sentence(flat, n_phones, limits, text, plan.language, asr_text)
        verdicts.append(verdict)
        if best is None or verdict.worst < verdicts[best.attempt].worst:
            best = GuardedSentence(audio, flat, attempt)
        if verdict.passed:
            break
    assert best is not None
    best.verdicts = verdicts
    return best


def guarded_stream(synth: Synthesizer, text: str, reference: Reference, language: str = "auto",
                   settings: SamplingSettings | None = None, seed: int | None = None,
                   limits: GuardLimits | None = None, max_attempts: int = 1,
                   transcriber: Transcriber | None = None, decode: Decoder | None = None) -> Iterator[GuardedSentence]:
    """`Synthesizer.stream` with the guard on every sentence (the service's `quality: "checked"`): the same
    sentences, seeds and pauses; a sentence that fails is spoken again with the next seed."""
    s = settings or SamplingSettings()
    sentences = spoken_sentences(text, language)
    pause = s.pause()
    for i, sentence in enumerate(sentences):
        kept = guarded_sentence(synth, reference, sentence.text, sentence.language, s, seed, i, limits, max_attempts,
                                transcriber, decode)
        if i + 1 < len(sentences):
            kept.audio.samples = np.concatenate([kept.audio.samples, pause])
        yield kept
