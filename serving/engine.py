"""Speech for a request: text -> sentences -> GPT codes (batched across requests) -> SoVITS audio -> watermark.

Adaptive batching: `GptBatcher` runs one worker thread. A sentence's GPT decode is queued; the worker takes the
oldest job, waits up to `max_latency_ms` for more (fewer when the queue is idle: the wait ends early once
`max_batch_size` jobs are there) and decodes together every queued job of the same loaded voice and sampling
settings with `GPT.generate_batch` (rows share the voice's prompt; each row computes what it would alone).
Seeded requests decode alone, so a seed always gives the same audio. SoVITS decoding runs in the request's thread.

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

from models.tts import SAMPLE_RATE_HZ, SamplingSettings, SynthesisError
from serving.voices import LoadedVoice


@dataclass
class _Job:
    voice: LoadedVoice
    settings: SamplingSettings
    phones: torch.Tensor  # (1, Lx)
    bert: torch.Tensor  # (1, 1024, Lx)
    max_new: int
    seed: int | None
    future: Future = field(default_factory=Future)

    def batch_key(self) -> tuple | None:
        if self.seed is not None:
            return None
        s = self.settings
        return (id(self.voice), s.top_k, s.top_p, s.temperature, s.repetition_penalty)


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

    def stop(self) -> None:
        self._stop.set()

    def decode(self, job: _Job) -> torch.Tensor:
        self._queue.put(job)
        return job.future.result()

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
        voice, s = batch[0].voice, batch[0].settings
        try:
            generator = (torch.Generator(device="cpu").manual_seed(batch[0].seed)
                         if batch[0].seed is not None else None)
            gpt = voice.synth.gpt
            dtype = next(gpt.parameters()).dtype
            device = voice.synth.device
            with voice.lock:
                codes = gpt.generate_batch([j.phones.to(device) for j in batch],
                                           [j.bert.to(device, dtype) for j in batch],
                                           voice.reference.codes.to(device), top_k=s.top_k, top_p=s.top_p,
                                           temperature=s.temperature, repetition_penalty=s.repetition_penalty,
                                           early_stop_num=max(j.max_new for j in batch), generator=generator)
            self.batches += 1
            self.batched_jobs += len(batch)
            for job, row in zip(batch, codes):
                job.future.set_result(row[:, :job.max_new + 1])
        except BaseException as error:  # every waiting request hears about it
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(error)


@dataclass
class SentenceOut:
    text: str
    samples: np.ndarray  # (n,) float32 at 32 kHz, with the trailing pause
    seconds: float  # wall time


def sentences(voice: LoadedVoice, text: str, language: str, settings: SamplingSettings, seed: int | None,
              batcher: GptBatcher) -> Iterator[SentenceOut]:
    """`text` spoken by `voice`, sentence by sentence (the official split), each as soon as it is ready."""
    from models.features import bert_for_segments
    from models.text import prepare_for_synthesis, split_sentences

    synth, ref = voice.synth, voice.reference
    parts = split_sentences(text, language)
    if not parts:
        raise SynthesisError("the text is empty: give at least one word to synthesize")
    pause = np.zeros(int(settings.pause_s * SAMPLE_RATE_HZ), np.float32)
    noise_generator = torch.Generator(device="cpu").manual_seed(seed) if seed is not None else None
    for i, part in enumerate(parts):
        started = time.perf_counter()
        with torch.inference_mode():
            target = prepare_for_synthesis(part.text, part.language)
            bert = bert_for_segments(synth.bert, target.segments, target.word2ph)
            target_ids = torch.tensor(target.ids, dtype=torch.long)
            job = _Job(voice, settings, torch.cat([ref.phones, target_ids])[None],
                       torch.cat([ref.bert, bert], dim=1)[None],
                       int(settings.max_tokens_per_phone * len(target.ids)) + 25,
                       None if seed is None else seed + i)
            codes = batcher.decode(job)
            if codes.shape[1] == 0:
                raise SynthesisError(f"the voice made no audio for {part.text!r}; try another seed")
            noise = None
            if noise_generator is not None and settings.noise_scale:
                frames = (int(2 * codes.shape[1] / settings.speed) + 1 if settings.speed != 1.0
                          else 2 * codes.shape[1])
                noise = torch.randn(1, synth.sovits.config.inter_channels, frames,
                                    generator=noise_generator).to(synth.device)
            wav = synth.sovits.decode(codes[None], target_ids[None].to(synth.device), ref.spec,
                                      noise_scale=settings.noise_scale, speed=settings.speed, sv_emb=ref.sv,
                                      noise=noise)
        samples = wav[0, 0].float().cpu().numpy()
        peak = float(np.abs(samples).max()) if len(samples) else 0.0
        if peak > 1.0:
            samples = samples / peak
        if i + 1 < len(parts):
            samples = np.concatenate([samples, pause])
        yield SentenceOut(part.text, samples.astype(np.float32), time.perf_counter() - started)


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
