"""Whole-sentence inference on CPU at full v2 size (random weights): GPT decodes 250 semantic tokens (10 s of
speech at 25 Hz) from a sentence and a 150-token prompt, then SoVITS decodes them to 32 kHz audio.

The per-token GPT figures are in bench/infer_gpt.py and the SoVITS decode figures in bench/infer_sovits.py;
this table adds the whole path, with each mode's speed as a ratio to float32 measured in the same invocation.
Comparisons with the official GPT-SoVITS code and peer engines are made side by side by bench/versus.py (no
figure taken elsewhere is printed here).

    python -m bench.infer [--threads 2]
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from bench._child import in_child

TOKENS = 250
AUDIO_S = TOKENS / 25
MIXED = "int8-gpt+bf16-sovits"  # int8 GPT decoding steps with a bfloat16 SoVITS (inference mode "fast" on CPU)


def _measure(dtype_name: str, threads: int) -> dict:
    from bench.infer_gpt import _model, _prompt, _sentence
    from bench.infer_sovits import _inputs
    from models.inference import prepare_sovits
    from models.sovits import SoVITS, SoVITSConfig

    torch.set_num_threads(threads)
    int8_gpt = dtype_name == MIXED
    dtype = torch.bfloat16 if int8_gpt else getattr(torch, dtype_name)
    gpt = _model(torch.float32, "int8") if int8_gpt else _model(dtype)
    sovits = prepare_sovits(SoVITS(SoVITSConfig()).eval().to(dtype), channels_last=True)
    phones, bert = _sentence(60, 0)
    prompt = _prompt(150)
    _, text, refer, _ = _inputs(AUDIO_S)
    with torch.inference_mode():
        gpt_bert = bert if int8_gpt else bert.to(dtype)
        gpt.generate(phones, gpt_bert, prompt, top_k=15, early_stop_num=10, seed=0)  # warm-up
        start = time.perf_counter()
        tokens = gpt.generate(phones, gpt_bert, prompt, top_k=15, early_stop_num=TOKENS - 1, seed=0)
        gpt_s = time.perf_counter() - start
        start = time.perf_counter()
        wav = sovits.decode(tokens[None], text, [refer.to(dtype)], noise_scale=0.5)
        sovits_s = time.perf_counter() - start
    audio_s = wav.shape[-1] / 32000
    return {"dtype": dtype_name, "tokens": int(tokens.shape[1]), "audio_s": audio_s, "gpt_s": gpt_s,
            "sovits_s": sovits_s, "rtf": (gpt_s + sovits_s) / audio_s,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run(threads: int = 2, dtypes: tuple[str, ...] = ("float32", "bfloat16", MIXED)) -> list[dict]:
    return [in_child(_measure, name, threads) for name in dtypes]


def table(rows: list[dict]) -> str:
    lines = ["| dtype | tokens | audio s | GPT s | SoVITS s | sentence RTF | vs float32 | peak RSS MB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    base = next((r["rtf"] for r in rows if r["dtype"] == "float32"), rows[0]["rtf"])
    for r in rows:
        lines.append(f"| {r['dtype']} | {r['tokens']} | {r['audio_s']:.1f} | {r['gpt_s']:.2f} | {r['sovits_s']:.2f} "
                     f"| {r['rtf']:.3f} | {base / r['rtf']:.2f}x "
                     f"| {r['peak_mb']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(f"whole sentence ({TOKENS} tokens + decode), full v2 size, random weights, {args.threads} threads; "
          "(against the official code: python -m bench.versus)")
    print(table(run(args.threads)))


if __name__ == "__main__":
    main()
