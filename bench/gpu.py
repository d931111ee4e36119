"""Every GPU figure in one call (`bash bench/gpu.sh`, under 8 minutes on one H100): GPT tokens/s, SoVITS and
sentence real-time factors, time to first audio at 1, 8 and 32 concurrent streams, fine-tuning steps/s.

    bash bench/gpu.sh                 # full v2 size, random weights, on the GPU (CPU + --small without one)
    python -m bench.gpu --small       # tiny models, a few steps: the CPU fallback (what CI runs)

Rows (one table, printed after the machine: device, torch version, date, load average):
  GPT tokens/s         inference mode "fast" as `models.inference.prepare_for_inference` makes it: on a GPU
                       bfloat16 with CUDA-graph decoding steps (`GraphDecoding`), and the float32 "exact" step for
                       comparison; batch 1 and batched (sentences sharing a prompt, `GPT.generate_batch`). Prefill
                       included; EOS is zeroed in the output head so random weights decode the full length.
  SoVITS RTF           one `decode` of `sovits_s` seconds of audio / its duration, bfloat16 and float32.
  sentence RTF         GPT (`sentence_tokens` tokens) + SoVITS decode of them, / the audio's duration ("fast").
  time to first audio  N streams start together; each sends one sentence through the service's GPT batcher
                       (`serving.engine.GptBatcher`, which batches the decodes of concurrent requests with
                       `Synthesizer.decode_batch`) and renders its audio in its own thread (`Synthesizer.render`),
                       as the service does; median and worst over the N streams, after one warm-up round.
  fine-tuning steps/s  `bench.train.measure` (the real SoVITS and GPT training steps), bfloat16 on a GPU.

Without CUDA (or with --small) the same rows run on CPU with tiny models and few steps, in well under a minute:
a check that the script works end to end, not a measurement. The graph rows then run `StaticDecoding` (the same
fixed-shape step without graphs) and say so.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import threading
import time
import traceback
from dataclasses import dataclass
from types import SimpleNamespace

import torch

FULL_GPT: dict = {}  # GPTConfig defaults: the official v2 model
FULL_SOVITS: dict = {}
SMALL_GPT = {"n_layer": 2, "n_head": 2, "n_embd": 64}
SMALL_SOVITS = {
    "inter_channels": 8, "hidden_channels": 16, "filter_channels": 32, "n_layers": 1, "resblock_kernel_sizes": [3],
    "resblock_dilation_sizes": [[1, 3, 5]], "upsample_initial_channel": 32, "gin_channels": 32, "segment_size": 8,
    "mrte": {"content_enc_channels": 16, "hidden_size": 32, "out_channels": 16, "n_heads": 4},
}

SMALL_DISCRIMINATOR = {"periods": (2, 3), "channel_divisor": 16}


@dataclass(frozen=True)
class Budget:
    """How much each row runs: bounded so that the full run stays under 8 minutes on one H100."""

    gpt: dict
    sovits: dict
    tokens: int  # new tokens per GPT timing
    batches: tuple[int, ...]  # batched GPT timings
    prompt_tokens: int
    sovits_s: float
    sentence_tokens: int
    streams: tuple[int, ...]
    stream_tokens: int
    repeats: int
    train_steps: int
    train_batch: dict  # model -> batch size


FULL = Budget(gpt=FULL_GPT, sovits=FULL_SOVITS, tokens=500, batches=(8, 32), prompt_tokens=150, sovits_s=10.0,
              sentence_tokens=250, streams=(1, 8, 32), stream_tokens=150, repeats=3, train_steps=10,
              train_batch={"sovits": 8, "gpt": 16})
SMALL = Budget(gpt=SMALL_GPT, sovits=SMALL_SOVITS, tokens=40, batches=(8,), prompt_tokens=30, sovits_s=1.0,
               sentence_tokens=25, streams=(1, 8, 32), stream_tokens=20, repeats=1, train_steps=1,
               train_batch={"sovits": 1, "gpt": 2})


# ---------------------------------------------------------------------------------------------------------------


def machine(device: torch.device) -> list[str]:
    """Device name, torch version, date, load average: the lines printed before the table."""
    if device.type == "cuda":
        name = f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    else:
        name = f"CPU: {_cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return [f"device: {name}", f"torch: {torch.__version__} (python {platform.python_version()})",
            f"date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
            f"load average: {load}"]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device: torch.device, fn) -> tuple[float, object]:
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - start, out


def _models(budget: Budget, device: torch.device):
    """Random-weight GPT and SoVITS (float32, on `device`); EOS zeroed in the GPT head so decodes run full length."""
    from models.gpt import GPT, GPTConfig
    from models.sovits import SoVITS, SoVITSConfig

    torch.manual_seed(0)
    gpt = GPT(GPTConfig(**budget.gpt)).eval()
    with torch.no_grad():
        gpt.ar_predict_layer.weight[gpt.cfg.eos] = 0.0
    return gpt.to(device), SoVITS(SoVITSConfig(**budget.sovits)).eval().to(device)


def _sentences(n: int, device: torch.device, dtype: torch.dtype):
    from bench.infer_gpt import _sentence

    sents = [_sentence(30 + 5 * (i % 8), i) for i in range(n)]
    return [p.to(device) for p, _ in sents], [b.to(device, dtype) for _, b in sents]


def _prompt(n: int, device: torch.device) -> torch.Tensor:
    from bench.infer_gpt import _prompt as prompt

    return prompt(n).to(device)


def gpt_tokens_per_s(gpt, budget: Budget, batch: int, device: torch.device) -> float:
    """New tokens per second over a batch of `batch` sentences (prefill included), best of `repeats`."""
    dtype = next(gpt.parameters()).dtype
    phones, bert = _sentences(batch, device, dtype)
    prompt = _prompt(budget.prompt_tokens, device)

    def run():
        return gpt.generate_batch(phones, bert, prompt, top_k=15, early_stop_num=budget.tokens - 1, seed=0)

    run()  # warm-up: allocator, cuBLAS, the CUDA graph of this (batch, length) bucket
    best = 0.0
    for _ in range(budget.repeats):
        seconds, out = _timed(device, run)
        best = max(best, sum(o.shape[1] for o in out) / seconds)
    return best


def sovits_rtf(sovits, budget: Budget, device: torch.device) -> float:
    """Seconds per second of audio of one `decode`, best of `repeats`."""
    from bench.infer_sovits import _inputs

    dtype = next(sovits.parameters()).dtype
    codes, text, refer, _ = _inputs(budget.sovits_s)
    codes, text, refer = codes.to(device), text.to(device), refer.to(device, dtype)

    def run():
        with torch.inference_mode():
            return sovits.decode(codes, text, [refer], noise_scale=0.5)

    run()
    best = min(_timed(device, run)[0] for _ in range(budget.repeats))
    return best / budget.sovits_s


def _reference_and_plans(synth, budget: Budget, n: int, tokens: int):
    from bench.infer_sovits import _inputs
    from models.gpt import BERT_DIM
    from models.tts import Reference, SentencePlan

    _, _, refer, _ = _inputs(1.0)
    g = torch.Generator().manual_seed(2)
    ref_phones = torch.randint(0, 732, (12,), generator=g)
    reference = Reference(spec=refer.to(synth.device, next(synth.sovits.parameters()).dtype),
                          codes=_prompt(budget.prompt_tokens, torch.device("cpu")), phones=ref_phones,
                          bert=0.1 * torch.randn(BERT_DIM, 12, generator=g), sv=None, text="", duration_s=5.0)
    plans = []
    for i in range(n):
        target = torch.randint(0, 732, (20 + i % 8,), generator=g)
        phones = torch.cat([reference.phones, target])[None]
        bert = torch.cat([reference.bert, 0.1 * torch.randn(BERT_DIM, len(target), generator=g)], dim=1)[None]
        plans.append(SentencePlan(text=f"sentence {i}", language="en", target_phones=target, phones=phones,
                                  bert=bert, max_new_tokens=tokens - 1))
    return reference, plans


def sentence_rtf(synth, budget: Budget, device: torch.device) -> float:
    """One sentence: GPT decode (`sentence_tokens` tokens) + SoVITS render, wall time / audio duration."""
    reference, (plan,) = _reference_and_plans(synth, budget, 1, budget.sentence_tokens)

    def run():
        codes = synth.decode(plan, reference, None, torch.Generator(device=device).manual_seed(0))
        return synth.render(plan, codes, reference)

    run()
    best = float("inf")
    for _ in range(budget.repeats):
        seconds, samples = _timed(device, run)
        best = min(best, seconds / (len(samples) / 32000))
    return best


def time_to_first_audio(synth, budget: Budget, streams: int, device: torch.device) -> tuple[float, float]:
    """(median, worst) seconds from the start until each of `streams` concurrent requests has its first sentence's
    audio: decodes through the service's GPT batcher, renders in the requests' threads."""
    from models.tts import SamplingSettings
    from serving.engine import GptBatcher

    reference, plans = _reference_and_plans(synth, budget, streams, budget.stream_tokens)
    settings = SamplingSettings()
    voice = SimpleNamespace(synth=synth, reference=reference, lock=threading.Lock())  # what the batcher reads
    batcher = GptBatcher(max_batch_size=32, max_latency_ms=20)
    decode = batcher.decoder(voice, settings)
    try:
        rounds = []
        for _ in range(2):  # the first round warms up (graph capture of this batch bucket), the second counts
            ready = [0.0] * streams
            go = threading.Barrier(streams + 1)

            def stream(i: int) -> None:
                go.wait()
                codes = decode(plans[i], None)
                synth.render(plans[i], codes, reference, settings)
                _sync(device)
                ready[i] = time.perf_counter()

            threads = [threading.Thread(target=stream, args=(i,)) for i in range(streams)]
            for t in threads:
                t.start()
            go.wait()
            start = time.perf_counter()
            for t in threads:
                t.join()
            rounds.append([r - start for r in ready])
    finally:
        batcher.stop()
    last = rounds[-1]
    return statistics.median(last), max(last)


def train_steps_per_s(model: str, budget: Budget, device: torch.device, small: bool) -> float:
    from bench.train import measure

    mode = "bf16" if device.type == "cuda" else "fp32"
    config = None
    if small:
        config = {**budget.sovits, "discriminator": SMALL_DISCRIMINATOR} if model == "sovits" else budget.gpt
    r = measure(model, mode, str(device), budget.train_batch[model], budget.train_steps, torch.get_num_threads(),
                config)
    return 1.0 / r["s_per_step"]


# ---------------------------------------------------------------------------------------------------------------


def run(small: bool, device: torch.device, print_row=print,
        failed: list | None = None) -> list[tuple[str, str, float, str]]:
    """Measure every row, printing each as it comes; returns (figure, setting, value, unit) rows. Rows that raise
    are printed as failed and appended to `failed` as (figure, setting, error)."""
    from models.inference import prepare_for_inference, prepare_gpt
    from models.tts import Synthesizer

    budget = SMALL if small else FULL
    rows: list[tuple[str, str, float, str]] = []
    failed = [] if failed is None else failed
    on_gpu = device.type == "cuda"

    def row(figure: str, setting: str, measure, unit: str) -> None:
        """Measure one row (`measure()` -> value) and print it; a row that raises prints its error instead, so
        one broken row does not lose the rest of a GPU lease's figures (`main` then exits non-zero)."""
        try:
            value = float(measure())
        except Exception as error:  # noqa: BLE001 - reported in the table and on stderr, counted by `main`
            failed.append((figure, setting, error))
            traceback.print_exc()
            print_row(f"| {figure} | {setting} | failed: {type(error).__name__}: {error} | {unit} |", flush=True)
            return
        rows.append((figure, setting, value, unit))
        print_row(f"| {figure} | {setting} | {value:.3f} | {unit} |", flush=True)

    # "exact" (float32, float decoding steps) first, then "fast" (bfloat16; GPU: CUDA graphs)
    gpt, sovits = _models(budget, device)
    prepare_for_inference(sovits, gpt, "exact")
    row("GPT tokens/s", "fp32 float step, batch 1", lambda: gpt_tokens_per_s(gpt, budget, 1, device), "tokens/s")
    row("SoVITS RTF", f"fp32, {budget.sovits_s:g} s audio", lambda: sovits_rtf(sovits, budget, device), "s/s")

    plan = prepare_for_inference(sovits, gpt, "fast")
    if on_gpu:
        label = f"bf16 {plan.gpt_decoding} step"
    else:  # CPU "fast" is int8; run the fixed-shape step the GPU replays as a graph, in float32
        prepare_gpt(gpt.float(), "static")
        label = "fp32 static step (CPU stand-in for the graph)"
    for batch in (1, *budget.batches):
        row("GPT tokens/s", f"{label}, batch {batch}", lambda: gpt_tokens_per_s(gpt, budget, batch, device),
            "tokens/s")
    row("SoVITS RTF", f"bf16, {budget.sovits_s:g} s audio", lambda: sovits_rtf(sovits, budget, device), "s/s")

    synth = Synthesizer(sovits, gpt)
    synth.mode = "fast"
    row("sentence RTF", f"{label}, bf16 SoVITS, {budget.sentence_tokens} tokens",
        lambda: sentence_rtf(synth, budget, device), "s/s")
    for streams in budget.streams:
        measured: dict[str, float] = {}  # one measurement gives both rows: "median" and "worst"

        def median_s(streams: int = streams) -> float:
            measured["median"], measured["worst"] = time_to_first_audio(synth, budget, streams, device)
            return measured["median"]

        row("time to first audio", f"{streams} streams, median", median_s, "s")
        if measured:
            row("time to first audio", f"{streams} streams, worst", lambda: measured["worst"], "s")
    synth = gpt = sovits = None  # free the GPU memory before fine-tuning (the rows above hold no reference)
    if on_gpu:
        torch.cuda.empty_cache()

    for model in ("sovits", "gpt"):
        mode = "bf16" if on_gpu else "fp32"
        row("fine-tuning steps/s", f"{model} {mode}, batch {budget.train_batch[model]}",
            lambda: train_steps_per_s(model, budget, device, small), "steps/s")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny models and few steps (automatic without CUDA)")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    small = args.small or device.type != "cuda" or os.environ.get("NARRATOR_BENCH_SMALL") == "1"
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    for line in machine(device):
        print(line)
    size = "tiny models (CPU fallback / --small: checks the script, measures nothing)" if small else \
        "full v2 size, random weights"
    print(f"models: {size}")
    print("| figure | setting | value | unit |\n|---|---|---:|---|", flush=True)
    failed: list = []
    run(small, device, failed=failed)
    print(f"total: {time.perf_counter() - started:.1f} s", flush=True)
    if failed:
        raise SystemExit(f"{len(failed)} row(s) failed: " + "; ".join(f"{f} ({s})" for f, s, _ in failed))


if __name__ == "__main__":
    main()
