"""Speech for a request: `models.tts.Synthesizer.stream` with GPT decodes batched across requests, then the
watermark.

The synthesizer does all the speaking (plan, decode, render; the one seeding rule), exactly as evaluation and the
packaged sample do; this module adds only what a server needs around it:

Adaptive batching: `GptBatcher` runs one worker thread. A sentence's GPT decode is queued; the worker takes the
oldest job, waits up to `max_latency_ms` for more (fewer when the queue is idle: the wait ends early once
`max_batch_size` jobs are there) and decodes together every queued job of the same loaded voice and sampling
settings with `Synthesizer.decode_batch`. Seeded sentences decode alone with `Synthesizer.decode`, so a seed gives
the same audio here as anywhere else. SoVITS rendering runs in the request's thread.

Sub-sentence streaming (the streamed routes, `inference.stream.enabled`): `sentences(..., chunking=...)` speaks each
sentence in chunks as its GPT tokens come (`models.tts.ChunkedRender`). Those GPT decodes run in the request's
thread, one sentence alone, holding the voice's lock for one chunk at a time (so concurrent streams and batches of
one voice take turns between chunks); they are not batched across requests. The whole-file routes keep the batcher.

Watermark: every sentence (or sub-sentence chunk) is marked before it leaves (`WatermarkStream`), with the voice's
payload (voice id and model version) and the service key; there is no switch to turn it off. The stream keeps the
mark's period phase across chunks by re-marking from the last period boundary before the new audio, so the payload
reads back from any 10 s of the output, streamed or whole.
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

from models.tts import SAMPLE_RATE_HZ, ChunkDecoder, SamplingSettings, SentenceAudio, SentencePlan
from narrator.config import StreamingConfig
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


def locked_chunks(voice: LoadedVoice, settings: SamplingSettings, chunking: StreamingConfig) -> ChunkDecoder:
    """A `models.tts.ChunkDecoder` for `voice` that advances the GPT one chunk at a time under the voice's lock."""
    def decode_chunks(plan: SentencePlan, generator: torch.Generator | None) -> Iterator[tuple[torch.Tensor, bool]]:
        chunks = voice.synth.decode_chunks(plan, voice.reference, settings, generator, chunking)
        try:
            while True:
                with voice.lock:
                    item = next(chunks, None)
                if item is None:
                    return
                yield item
        finally:
            with voice.lock:
                chunks.close()

    return decode_chunks


def sentences(voice: LoadedVoice, text: str, language: str, settings: SamplingSettings, seed: int | None,
              batcher: GptBatcher, segments: list | None = None,
              chunking: StreamingConfig | None = None) -> Iterator[SentenceAudio]:
    """`text` spoken by `voice`, sentence by sentence (with their pauses), each as soon as it is ready; `segments`
    (an SSML document's, `models.text.ssml.parse_ssml`) are spoken instead of `text` when given. `chunking`:
    sub-sentence chunks as the GPT makes its tokens (not batched; module docstring), else whole sentences
    whose GPT decodes go through `batcher`."""
    decode = batcher.decoder(voice, settings)
    decode_chunks = None if chunking is None else locked_chunks(voice, settings, chunking)
    if segments is not None:
        return voice.synth.stream_segments(segments, voice.reference, settings, seed, decode=decode,
                                           chunking=chunking, decode_chunks=decode_chunks)
    return voice.synth.stream(text, voice.reference, language, settings, seed, decode=decode, chunking=chunking,
                              decode_chunks=decode_chunks)


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

    def push(self, samples: np.ndarray, complete: bool = True) -> np.ndarray:
        """The marked copy of `samples` `(n,)` and of any audio held back before it. A complete push (a sentence's
        end, with its pause, or the stream's last audio) hands everything out: the same length. `complete=False`
        (a sub-sentence chunk, which speech goes on after) holds back the audio from the last whole mark column
        with a full column after it, until the next push: a column marked before the audio after it was known is
        a weakened tile in the middle of speech at every chunk join (about 0.6 lower detection score after mp3
        with a chunk every 1.6 s, without the hold-back)."""
        from models.watermark import embed

        self._raw = np.concatenate([self._raw, np.asarray(samples, np.float32)])
        start = max(0, self._emitted - self.margin) // self.period * self.period
        if start > self._base:  # forget audio before the context needed
            self._raw = self._raw[start - self._base:]
            self._base = start
        end = self._base + len(self._raw)
        if not complete:  # columns start at _base (a period boundary); keep one whole column after `end`
            end = self._base + max(0, len(self._raw) - self.margin) // self.margin * self.margin
            if end <= self._emitted:
                return np.zeros(0, np.float32)
        marked = embed(self._raw, self.rate, self.payload, self.key)
        out = marked[self._emitted - self._base:end - self._base]
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
