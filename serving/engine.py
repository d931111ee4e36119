"""Speech for a request: `models.tts.Synthesizer.stream` with GPT decodes batched across requests, then the
watermark.

The synthesizer does all the speaking (plan, decode, render; the one seeding rule), exactly as evaluation and the
packaged sample do; this module adds only what a server needs around it:

Adaptive batching: `GptBatcher` runs one worker thread. A sentence's GPT decode is queued; the worker takes the
oldest job, waits up to `max_latency_ms` for more (fewer when the queue is idle: the wait ends early once
`max_batch_size` jobs are there) and decodes together every queued job of the same loaded voice and sampling
settings with `Synthesizer.decode_batch`. Seeded sentences decode alone with `Synthesizer.decode`, so a seed gives
the same audio here as anywhere else. SoVITS rendering runs in the request's thread.

Watermark: every sentence is marked before it leaves (`WatermarkStream`), with the voice's payload (voice id and
model version) and the service key; there is no switch to turn it off. The stream keeps the mark's period phase
across sentences by re-marking from the last period boundary before the new audio, so the payload reads back from
any 10 s of the output, streamed or whole.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

from models.tts import SAMPLE_RATE_HZ, SamplingSettings, SentenceAudio, SentencePlan
from serving.voices import LoadedVoice


@dataclass
class _Job:
    voice: LoadedVoice
    settings: SamplingSettings
    plan: SentencePlan
    generator: torch.Generator | None
    future: Future = field(default_factory=Future)

    def batch_key(self) -> tuple | None:
        if self.generator is not None:
            return None
        return (id(self.voice), *self.settings.batch_key())


class GptBatcher:
    """The GPT decode queue of one process (see the module docstring). `depth()` is the queue depth."""

    def __init__(self, max_batch_size: int, max_latency_ms: int) -> None:
        self.max_batch_size, self.max_latency_s = max_batch_size, max_latency_ms / 1000.0
        self._queue: queue.Queue[_Job] = queue.Queue()
        self._held: list[_Job] = []  # taken from the queue but not batchable with the last batch
        self._stop = threading.Event()
        self.batches = 0
        self.batched_jobs = 0
        self._worker = threading.Thread(target=self._run, name="gpt-batcher", daemon=True)
        self._worker.start()

    def depth(self) -> int:
        return self._queue.qsize() + len(self._held)

    @property
    def running(self) -> bool:
        """Whether the worker thread is alive (until `stop` returns)."""
        return self._worker.is_alive()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the worker and wait for it, so no decode (and no reference to a voice's tensors) outlives the
        batcher: a daemon thread still freeing tensors while the interpreter shuts down aborts the process."""
        self._stop.set()
        if self._worker is not threading.current_thread():
            self._worker.join(timeout_s)
        self._held.clear()

    def decoder(self, voice: LoadedVoice, settings: SamplingSettings):
        """A `models.tts.Decoder` for `voice`'s synthesizer that sends every decode through this queue."""
        def decode(plan: SentencePlan, generator: torch.Generator | None) -> torch.Tensor:
            job = _Job(voice, settings, plan, generator)
            self._queue.put(job)
            return job.future.result()

        return decode

    def _next(self, timeout: float | None) -> _Job | None:
        if self._held:
            return self._held.pop(0)
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def _run(self) -> None:
        while not self._stop.is_set():
            first = self._next(0.2)
            if first is None:
                continue
            batch = [first]
            key = first.batch_key()
            if key is not None:
                deadline = time.monotonic() + self.max_latency_s
                rest = []
                while len(batch) < self.max_batch_size:
                    job = self._next(max(0.0, deadline - time.monotonic()))
                    if job is None:
                        break
                    (batch if job.batch_key() == key else rest).append(job)
                self._held = rest + self._held
            self._decode(batch)

    def _decode(self, batch: list[_Job]) -> None:
        voice, settings = batch[0].voice, batch[0].settings
        try:
            with voice.lock:
                if batch[0].generator is not None:  # seeded: alone, exactly as Synthesizer.decode
                    codes = [voice.synth.decode(batch[0].plan, voice.reference, settings, batch[0].generator)]
                else:
                    codes = voice.synth.decode_batch([job.plan for job in batch], voice.reference, settings)
            self.batches += 1
            self.batched_jobs += len(batch)
            for job, row in zip(batch, codes):
                job.future.set_result(row)
        except BaseException as error:  # every waiting request hears about it
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(error)


def sentences(voice: LoadedVoice, text: str, language: str, settings: SamplingSettings, seed: int | None,
              batcher: GptBatcher, segments: list | None = None) -> Iterator[SentenceAudio]:
    """`text` spoken by `voice`, sentence by sentence (with their pauses), each as soon as it is ready; `segments`
    (an SSML document's, `models.text.ssml.parse_ssml`) are spoken instead of `text` when given."""
    if segments is not None:
        return voice.synth.stream_segments(segments, voice.reference, settings, seed,
                                           decode=batcher.decoder(voice, settings))
    return voice.synth.stream(text, voice.reference, language, settings, seed,
                              decode=batcher.decoder(voice, settings))


def checked_sentences(voice: LoadedVoice, text: str, language: str, settings: SamplingSettings, seed: int | None,
                      batcher: GptBatcher, narrate_cfg) -> Iterator[SentenceAudio]:
    """`sentences` through the narration quality guard (a request's `quality: "checked"`): each sentence is checked
    (`models.guard`, `narrate.guard_limits`) and spoken again with the next seed when it fails, up to
    `narrate.max_attempts`. A sentence that passes at once is exactly what `sentences` gives."""
    from models.guard import guarded_stream

    for kept in guarded_stream(voice.synth, text, voice.reference, language, settings, seed,
                               narrate_cfg.guard_limits, narrate_cfg.max_attempts,
                               decode=batcher.decoder(voice, settings)):
        yield kept.audio


class WatermarkStream:
    """Marks 32 kHz audio as it arrives with one payload, keeping the mark's period phase (module docstring)."""

    def __init__(self, payload: int, key: bytes | str, sample_rate_hz: int = SAMPLE_RATE_HZ) -> None:
        from models.watermark import WatermarkConfig

        cfg = WatermarkConfig()
        period = cfg.period_columns * cfg.column_samples * sample_rate_hz / cfg.analysis_rate_hz
        if period != int(period):
            raise ValueError(f"mark at a rate that holds a whole period in samples (e.g. 32000), not {sample_rate_hz}")
        self.period = int(period)
        self.margin = cfg.column_samples * sample_rate_hz // cfg.analysis_rate_hz
        self.payload, self.key, self.rate = payload, key, sample_rate_hz
        self._raw = np.zeros(0, np.float32)  # audio from sample `_base` on
        self._base = 0
        self._emitted = 0

    def push(self, samples: np.ndarray) -> np.ndarray:
        """The marked copy of `samples` `(n,)` (same length)."""
        from models.watermark import embed

        self._raw = np.concatenate([self._raw, np.asarray(samples, np.float32)])
        start = max(0, self._emitted - self.margin) // self.period * self.period
        if start > self._base:  # forget audio before the context needed
            self._raw = self._raw[start - self._base:]
            self._base = start
        marked = embed(self._raw, self.rate, self.payload, self.key)
        out = marked[self._emitted - self._base:]
        self._emitted += len(out)
        return out


class Resampler:
    """32 kHz -> the requested rate, chunk by chunk without seams."""

    def __init__(self, out_rate_hz: int, in_rate_hz: int = SAMPLE_RATE_HZ) -> None:
        import soxr

        self.same = out_rate_hz == in_rate_hz
        self._stream = None if self.same else soxr.ResampleStream(in_rate_hz, out_rate_hz, 1, dtype="float32",
                                                                  quality="HQ")

    def push(self, samples: np.ndarray, last: bool = False) -> np.ndarray:
        if self.same:
            return samples
        return self._stream.resample_chunk(np.asarray(samples, np.float32), last=last)
