"""Sub-sentence streaming against a sentence at a time, on CPU at full v2 size (random weights), in one run.

One 25-word sentence (about 100 phones, 8.4 s of speech = 210 semantic tokens at 25 Hz) after a 150-token prompt,
spoken twice from one seed (the same tokens and decoder noise both times):
  - per sentence (today's first audio): the GPT decodes the whole sentence, then SoVITS decodes it whole
    (`Synthesizer.decode` + `Synthesizer.render`);
  - streamed (`Synthesizer.plan_pieces` with the `inference.stream` defaults, as in params.yaml): the GPT hands out
    chunks and `models.tts.ChunkedRender` decodes each with left context and a cross-fade.
Every time is the best of `--repeats` runs, the two paths alternating (other processes on a shared machine only
make a run slower). Printed: time to first audio of each and their ratio (goal: at most 0.25), the streamed total, the
mean absolute log-mel difference (dB; `narrator.metrics.log_mel_distance_db`, 80 bands, 25 ms frames every 10 ms)
of the streamed audio against the whole decode, and the click check: the largest |x[j] - x[j-1]| at any chunk join
j against the 99.9th percentile of |x[n+1] - x[n]| over the streamed audio (goal: no join above it).

    python -m bench.stream [--threads 2] [--mode exact|fast] [--repeats 2] [--small]

--small: the reduced model sizes of the tests, a few seconds in all (a smoke run, not a figure to report).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import numpy as np
import torch

WORDS = 25
PHONES = 100  # about 4 phones per English word
TOKENS = 210  # 8.4 s of speech: 25 words at about 3 words per second
PROMPT_TOKENS = 150
SEED = 0
GOAL_RATIO = 0.25
WARM_UP_TOKENS = 30
SMALL_GPT = {"n_layer": 2, "n_head": 2, "n_embd": 32}
SMALL_SOVITS = {"inter_channels": 8, "hidden_channels": 16, "filter_channels": 32, "n_layers": 2,
                "resblock_kernel_sizes": (3,), "resblock_dilation_sizes": ((1, 3, 5),), "upsample_initial_channel": 32,
                "gin_channels": 32}
SMALL_MRTE = {"content_enc_channels": 16, "hidden_size": 32, "out_channels": 16, "n_heads": 4}


def _synthesizer(small: bool, mode: str):
    from bench.infer_gpt import _model
    from models.gpt import GPT, GPTConfig
    from models.sovits import MRTEConfig, SoVITS, SoVITSConfig
    from models.tts import Synthesizer

    torch.manual_seed(0)
    if small:
        gpt = GPT(GPTConfig(**SMALL_GPT)).eval()
        with torch.no_grad():  # random weights: keep EOS from ending the sentence early
            gpt.ar_predict_layer.weight[gpt.cfg.eos] = 0.0
        sovits = SoVITS(SoVITSConfig(**SMALL_SOVITS, mrte=MRTEConfig(**SMALL_MRTE)))
    else:
        gpt, sovits = _model(torch.float32), SoVITS(SoVITSConfig())
    return Synthesizer(sovits.eval(), gpt).prepare(mode)


def _inputs(synth):
    """A reference and the sentence's plan, from the bench helpers' random inputs."""
    from bench.infer_gpt import _prompt, _sentence
    from bench.infer_sovits import _inputs as sovits_inputs
    from models.tts import Reference, SentencePlan

    ref_phones, ref_bert = _sentence(30, 1)
    phones, bert = _sentence(PHONES, 0)
    _, _, refer, _ = sovits_inputs(TOKENS / 25)
    reference = Reference(spec=refer, codes=_prompt(PROMPT_TOKENS), phones=ref_phones[0], bert=ref_bert[0], sv=None,
                          text="(random reference)", duration_s=5.0)
    plan = SentencePlan(text=f"({WORDS} random words)", language="en", target_phones=phones[0],
                        phones=torch.cat([ref_phones, phones], dim=1), bert=torch.cat([ref_bert, bert], dim=2),
                        max_new_tokens=TOKENS - 1)
    return reference, plan


def measure(small: bool = False, threads: int = 2, mode: str = "exact", repeats: int = 2) -> dict:
    from models.tts import SamplingSettings
    from narrator.config import Params
    from narrator.metrics import join_steps, log_mel_distance_db

    torch.set_num_threads(threads)
    synth = _synthesizer(small, mode)
    reference, plan = _inputs(synth)
    chunking = Params().inference.stream
    settings = SamplingSettings()
    with torch.inference_mode():  # warm-up: first calls allocate and pack weights
        warm = dataclasses.replace(plan, max_new_tokens=WARM_UP_TOKENS - 1)
        synth.render(warm, synth.decode(warm, reference, settings, synth.generator(SEED + 1, 0)), reference, settings)

        gpt_s = sentence_s = first_s = stream_s = float("inf")
        for _ in range(repeats):  # the two paths alternate; each time is the best of its runs
            started = time.perf_counter()
            generator = synth.generator(SEED, 0)
            codes = synth.decode(plan, reference, settings, generator)
            gpt_s = min(gpt_s, time.perf_counter() - started)
            whole = synth.render(plan, codes, reference, settings, generator)
            sentence_s = min(sentence_s, time.perf_counter() - started)

            started = time.perf_counter()
            pieces, first = [], None
            for piece in synth.plan_pieces(plan, reference, settings, synth.generator(SEED, 0), chunking):
                if first is None and len(piece.samples):
                    first = time.perf_counter() - started
                pieces.append(piece.samples)
            first_s, stream_s = min(first_s, first), min(stream_s, time.perf_counter() - started)
    streamed = np.concatenate(pieces)
    joins = np.cumsum([len(p) for p in pieces if len(p)])[:-1]
    steps, threshold = join_steps(streamed, joins)
    return {"tokens": int(codes.shape[1]), "audio_s": len(whole) / 32000, "gpt_s": gpt_s, "sentence_s": sentence_s,
            "first_s": first_s, "stream_s": stream_s, "ratio": first_s / sentence_s, "chunks": len(joins) + 1,
            "same_length": len(streamed) == len(whole), "mel_db": log_mel_distance_db(streamed, whole, 32000),
            "max_join_step": float(steps.max()) if len(steps) else 0.0, "p999_step": threshold,
            "joins_above": int((steps > threshold).sum()), "chunking": chunking, "load": os.getloadavg()[0]}


def table(r: dict) -> str:
    c = r["chunking"]
    return "\n".join([
        f"streaming settings: first {c.first_chunk_tokens} tokens, then {c.chunk_tokens}; context {c.context_tokens}, "
        f"lookahead {c.lookahead_tokens} tokens; cross-fade {c.crossfade_ms:g} ms",
        "| tokens | audio s | per-sentence first audio s (GPT s) | streamed first audio s | ratio (goal <= "
        f"{GOAL_RATIO}) | streamed total s | chunks | same length | log-mel dB vs whole | max join step | "
        "p99.9 step | joins above |",
        "|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
        f"| {r['tokens']} | {r['audio_s']:.2f} | {r['sentence_s']:.2f} ({r['gpt_s']:.2f}) | {r['first_s']:.2f} | "
        f"{r['ratio']:.3f} | {r['stream_s']:.2f} | {r['chunks']} | {r['same_length']} | {r['mel_db']:.3f} | "
        f"{r['max_join_step']:.4f} | {r['p999_step']:.4f} | {r['joins_above']} |",
        f"1-minute load average during the run: {r['load']:.2f}",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mode", choices=("exact", "fast"), default="exact", help="inference.mode")
    parser.add_argument("--small", action="store_true", help="reduced model sizes: a quick smoke run")
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs per timing")
    args = parser.parse_args()
    size = "reduced sizes" if args.small else "full v2 size"
    print(f"one {WORDS}-word sentence ({PHONES} phones, {TOKENS} tokens), {size}, random weights, "
          f"{args.threads} threads, inference.mode {args.mode}, best of {args.repeats}")
    print(table(measure(args.small, args.threads, args.mode, args.repeats)))


if __name__ == "__main__":
    main()
