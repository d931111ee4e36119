"""The measurements `bench.versus` takes of one implementation, in one child process.

Every implementation (ours in each inference mode, the official GPT-SoVITS code from a checkout, a peer engine in
its own virtual environment) is wrapped by a small adapter that builds an `Engine` from the shared weight files and
hands it to `measure`. This module needs only torch and the standard library, so it runs under any of their
interpreters: an adapter puts the repository root on `sys.path` and imports `bench._probe`, nothing else of ours.

Workload files (written once by `bench.versus`, read by every adapter):
    gpt.ckpt      official stage-1 checkpoint (fp16 "model.*" weights + config), full v2 size, random weights
    sovits.pth    official stage-2 v2 checkpoint (fp16 weights + HParams config)
    inputs.pt     dict of tensors: phones (1, Lx) long, bert (1, 1024, Lx) float32, prompt (1, Ty) long,
                  text (1, n_text) long (the sentence's phones for SoVITS), refer (1, 1025, frames) float32
                  (the reference spectrogram), and per-step workloads (step{N}_phones, step{N}_bert,
                  step{N}_prompt) for the context lengths measured

One JSON object is printed on the last line of stdout (see `measure`).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

SAMPLE_RATE_HZ = 32000
STEP_POSITIONS = (200, 1700)  # context lengths at which one decoding step is timed
STEP_TOKENS = 32  # steps decoded per step timing (the median gap is taken)


@dataclass
class Engine:
    """What an adapter provides. `generate(phones (1, Lx), bert (1, 1024, Lx), prompt (1, Ty), n_tokens)` decodes
    exactly `n_tokens` new tokens (EOS cannot win with the bench weights) and returns them as (1, n) long;
    `decode(codes (1, n), text (1, n_text), refer (1, 1025, frames))` returns the waveform (samples,) or any shape
    whose last dimension is samples; `predict_layer` is the GPT's output head module, called once per decoding
    step, whose calls are time-stamped to time single steps."""

    name: str
    generate: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]
    decode: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    predict_layer: torch.nn.Module | None


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _step_ms(engine: Engine, inputs: dict, positions: int, repeats: int) -> float | None:
    """Median gap between consecutive output-head calls (= one decoding step) around `positions` positions; the
    best of `repeats` runs (other processes only ever slow a run down)."""
    if engine.predict_layer is None:
        return None
    stamps: list[float] = []
    hook = engine.predict_layer.register_forward_hook(lambda *_: stamps.append(time.perf_counter()))
    best = float("inf")
    try:
        for _ in range(repeats):
            stamps.clear()
            engine.generate(inputs[f"step{positions}_phones"], inputs[f"step{positions}_bert"],
                            inputs[f"step{positions}_prompt"], STEP_TOKENS)
            gaps = [b - a for a, b in zip(stamps, stamps[1:])]
            best = min(best, statistics.median(gaps) * 1e3)
    finally:
        hook.remove()
    return best


def measure(engine: Engine, inputs: dict, n_tokens: int, repeats: int = 2) -> dict:
    """Time `engine` on the workload: GPT step cost near 200 and 1700 positions, one whole sentence (`n_tokens`
    tokens from the prompt, then the SoVITS decode of those tokens), CPU time of the decode, and peak RSS.

    Returns {impl, load_avg, ms_per_token@200, ms_per_token@1700, tokens, gpt_s, gpt_cpu_s, tokens_per_s,
    cpu_ms_per_token, audio_s, sovits_s, sovits_rtf, sentence_s, sentence_rtf, peak_rss_mb}. Whole-sentence timings
    are the best of `repeats` runs after one warm-up.
    """
    row: dict = {"impl": engine.name, "load_avg": os.getloadavg()[0], "threads": torch.get_num_threads()}
    phones, bert, prompt = inputs["phones"], inputs["bert"], inputs["prompt"]
    engine.generate(phones, bert, prompt, 8)  # warm-up: first-call costs (int8 packs, allocator, lazy init)
    for positions in STEP_POSITIONS:
        row[f"ms_per_token@{positions}"] = _step_ms(engine, inputs, positions, repeats)
    best_gpt = best_sovits = float("inf")
    for _ in range(repeats):
        cpu0, t0 = _cpu_s(), time.perf_counter()
        codes = engine.generate(phones, bert, prompt, n_tokens)
        gpt_s, gpt_cpu_s = time.perf_counter() - t0, _cpu_s() - cpu0
        t0 = time.perf_counter()
        wav = engine.decode(codes, inputs["text"], inputs["refer"])
        sovits_s = time.perf_counter() - t0
        if gpt_s < best_gpt:
            best_gpt, row["gpt_cpu_s"] = gpt_s, gpt_cpu_s
        best_sovits = min(best_sovits, sovits_s)
    tokens = int(codes.shape[-1])
    audio_s = wav.shape[-1] / SAMPLE_RATE_HZ
    row.update(tokens=tokens, gpt_s=best_gpt, tokens_per_s=tokens / best_gpt,
               cpu_ms_per_token=row["gpt_cpu_s"] / tokens * 1e3, audio_s=audio_s, sovits_s=best_sovits,
               sovits_rtf=best_sovits / audio_s, sentence_s=best_gpt + best_sovits,
               sentence_rtf=(best_gpt + best_sovits) / audio_s,
               peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               load_avg_after=os.getloadavg()[0])
    return row


def emit(row: dict) -> None:
    """Print the result as the last line of stdout, where `bench.versus` reads it."""
    print(json.dumps(row), flush=True)
