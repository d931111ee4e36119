"""Fine-tuning throughput at full size (random weights): SoVITS v2 (generator + discriminator) and GPT v2.

    python -m bench.train                       # CPU, small batches, a few steps per mode
    python -m bench.train --device cuda --batch-sovits 16 --batch-gpt 32 --steps 20     # on a GPU

Each mode runs the real training step (`SoVITSTask.train_step` / `GPTTask.train_step`) in its own child process, so
the peak-memory figure belongs to that mode only (max RSS on CPU, torch.cuda.max_memory_allocated on a GPU).
Training examples are synthetic 6 s segments (300 spectrogram frames, 150 semantic tokens, 72 phones), the
length of a typical prepared segment. Ratios are against the fp32 mode of the same model in the same run.

The projection: one minute of audio is 10 such segments; the official recipe trains SoVITS 8 epochs and the GPT
15 epochs; wall time = steps x seconds per step at the measured batch size (GPT at 4 batches per optimizer step
counts every batch).
"""

from __future__ import annotations

import argparse
import math
import resource
import statistics
import tempfile
import time
from pathlib import Path

SEGMENT_S = 6.0
MINUTE_SEGMENTS = 10
SOVITS_EPOCHS, GPT_EPOCHS = 8, 15


def _sovits_examples(n: int, folder: Path):
    import numpy as np
    import torch

    from components.finetune_sovits import SoVITSExample
    from models.audio import spectrogram
    from narrator.audiofile import write_wav

    g = torch.Generator().manual_seed(0)
    frames = int(SEGMENT_S * 50)
    out = []
    for i in range(n):
        wav = (torch.rand(frames * 640, generator=g) * 2 - 1) * 0.3
        path = write_wav(folder / f"{i}.wav", wav.numpy().astype(np.float32), 32000)
        out.append(SoVITSExample(f"e{i}", torch.randn(768, frames, generator=g), spectrogram(wav[None])[0],
                                 torch.randint(1, 732, (72,), generator=g), str(path), None))
    return out


def _gpt_examples(n: int):
    import torch

    from components.finetune_gpt import GPTExample

    g = torch.Generator().manual_seed(0)
    return [GPTExample(f"e{i}", torch.randint(1, 732, (72,), generator=g), torch.randn(1024, 72, generator=g),
                       torch.randint(0, 1024, (int(SEGMENT_S * 25),), generator=g)) for i in range(n)]


def _peak_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(model: str, mode: str, device_name: str, batch: int, steps: int, threads: int,
            config: dict | None = None) -> dict:
    """One mode in this process: warm-up step, then `steps` timed steps. Returns seconds per step and peak MB.
    `config`: SoVITSConfig / GPTConfig fields replacing the full v2 sizes (bench/gpu.py's small CPU fallback); for
    SoVITS its "discriminator" entry holds DiscriminatorConfig fields."""
    import torch

    from components.training import Precision
    from narrator.config import FinetuneGPTConfig, FinetuneSoVITSConfig

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    device = torch.device(device_name)
    precision = Precision("bf16" if mode.startswith("bf16") else "fp32", device)
    recompute = mode.endswith("+ckpt")
    with tempfile.TemporaryDirectory() as tmp:
        if model == "sovits":
            from components.finetune_sovits import SoVITSTask
            from models.discriminators import DiscriminatorConfig, MultiPeriodDiscriminator
            from models.sovits import SoVITS, SoVITSConfig

            sizes = dict(config or {})
            discriminator = MultiPeriodDiscriminator(DiscriminatorConfig(**sizes.pop("discriminator", {})))
            sovits = SoVITS(SoVITSConfig(**sizes))
            sovits.gradient_checkpointing = recompute
            examples = _sovits_examples(batch, Path(tmp))
            task = SoVITSTask(sovits, discriminator, examples, FinetuneSoVITSConfig(), batch, 0, device,
                              precision)
        else:
            from components.finetune_gpt import GPTTask
            from models.gpt import GPT, GPTConfig

            gpt = GPT(GPTConfig(**(config or {})))
            gpt.h.gradient_checkpointing = recompute
            examples = _gpt_examples(batch)
            task = GPTTask(gpt, examples, FinetuneGPTConfig(accumulate_batches=1), 0, device, batch, precision)
        task.train_step(examples)  # warm-up (allocator, oneDNN primitives, cuDNN autotune)
        times = []
        for _ in range(steps):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            task.train_step(examples)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return {"s_per_step": statistics.median(times), "best": min(times), "peak_mb": _peak_mb(device)}


def _projected_minutes(model: str, batch: int, s_per_step: float) -> float:
    epochs = SOVITS_EPOCHS if model == "sovits" else GPT_EPOCHS
    return epochs * math.ceil(MINUTE_SEGMENTS / batch) * s_per_step / 60


def main() -> None:
    from bench._child import in_child

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-sovits", type=int, default=2)
    parser.add_argument("--batch-gpt", type=int, default=4)
    parser.add_argument("--models", default="sovits,gpt")
    parser.add_argument("--modes", default="fp32,bf16,fp32+ckpt")
    args = parser.parse_args()

    print(f"| model | mode | batch | s/step (median) | steps/s | samples/s | peak MB | speed vs fp32 | memory vs fp32 "
          f"| projected 1 min of audio ({SOVITS_EPOCHS}/{GPT_EPOCHS} epochs) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for model in args.models.split(","):
        batch = args.batch_sovits if model == "sovits" else args.batch_gpt
        baseline = None
        for mode in args.modes.split(","):
            r = in_child(measure, model, mode, args.device, batch, args.steps, args.threads)
            baseline = baseline or r
            print(f"| {model} | {mode} | {batch} | {r['s_per_step']:.2f} | {1 / r['s_per_step']:.2f} "
                  f"| {batch / r['s_per_step']:.2f} | {r['peak_mb']:.0f} "
                  f"| {baseline['s_per_step'] / r['s_per_step']:.2f}x | {r['peak_mb'] / baseline['peak_mb']:.2f}x "
                  f"| {_projected_minutes(model, batch, r['s_per_step']):.1f} min |", flush=True)


if __name__ == "__main__":
    main()
