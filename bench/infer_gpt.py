"""Decoding speed of the stage-1 GPT (models/gpt.py) at full v2 size, on CPU, with random weights.

    python -m bench.infer_gpt            # prints a table; `bench_gpt()` returns the rows

Per mode (float32 and bfloat16: the float step; onednn: float32 through oneDNN; numba: float32 compiled step, what
"exact" runs on CPU; int8-dynamic: torch's dynamic int8 step; numba-int8: the weight-only int8 compiled step, what
"fast" runs on CPU), each prepared by `models.inference.prepare_gpt` and measured in a fresh process so that the
peak memory is its own:
  - ms/token for one decoding step with ~200 and ~1700 positions in the context (median over 32 steps),
  - tokens/s for one sentence and for a batch of 4 sentences sharing a prompt (prefill included),
  - peak resident memory of the process.
Every timing is the best of `repeats` runs: other processes on the machine only ever make a run slower.
Targets on the 2-core reference machine: <= 11 ms/token at 200 positions, <= 13 at 1700, >= 80 tokens/s single.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time

import torch

from bench._child import in_child
from models.gpt import GPT, GPTConfig
from models.inference import prepare_gpt

TARGETS = {"ms_per_token@200": 11.0, "ms_per_token@1700": 13.0, "tokens_per_s_single": 80.0}


# row name -> (model dtype, prepare_gpt decoding); a plain dtype name runs the "float" step in that dtype
MODES = {"onednn": (torch.float32, "onednn"), "numba": (torch.float32, "numba"),
         "int8-dynamic": (torch.float32, "int8"), "numba-int8": (torch.float32, "numba_int8")}
DEFAULT_ROWS = ("float32", "onednn", "numba", "bfloat16", "int8-dynamic", "numba-int8")


def _model(dtype: torch.dtype, decoding: str = "float") -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig()).eval().to(dtype)
    with torch.no_grad():  # random weights: keep EOS from ending a run early
        model.ar_predict_layer.weight[model.cfg.eos] = 0.0
    return prepare_gpt(model, decoding)


def _sentence(n_phones: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 732, (1, n_phones), generator=g), 0.1 * torch.randn(1, 1024, n_phones, generator=g)


def _prompt(n_codes: int) -> torch.Tensor:
    return torch.randint(0, 1024, (1, n_codes), generator=torch.Generator().manual_seed(1))


def _step_ms(model: GPT, positions: int, steps: int, repeats: int) -> float:
    """Median time between consecutive output-head calls = one decoding step, around `positions` positions."""
    stamps: list[float] = []
    hook = model.ar_predict_layer.register_forward_hook(lambda *_: stamps.append(time.perf_counter()))
    phones, bert = _sentence(40, 0)
    prompt = _prompt(positions - 40 - steps // 2)
    best = float("inf")
    for _ in range(repeats):
        stamps.clear()
        model.generate(phones, bert, prompt, top_k=15, max_steps=steps + 1, seed=0)
        gaps = [b - a for a, b in zip(stamps, stamps[1:])]
        best = min(best, statistics.median(gaps) * 1e3)
    hook.remove()
    return best


def _tokens_per_s(model: GPT, batch: int, n_new: int, repeats: int) -> float:
    sentences = [_sentence(30 + 5 * i, i) for i in range(batch)]
    prompt = _prompt(150)
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = model.generate_batch([s[0] for s in sentences], [s[1] for s in sentences], prompt, top_k=15,
                                   early_stop_num=n_new - 1, seed=0)
        elapsed = time.perf_counter() - t0
        best = max(best, sum(o.shape[1] for o in out) / elapsed)
    return best


def _measure(dtype_name: str, threads: int, repeats: int) -> dict:
    torch.set_num_threads(threads)
    dtype, decoding = MODES[dtype_name] if dtype_name in MODES else (getattr(torch, dtype_name), "float")
    model = _model(dtype, decoding)
    row = {"dtype": dtype_name, "threads": threads, "params_M": model.num_params() / 1e6,
           "load_before": os.getloadavg()[0]}
    row["ms_per_token@200"] = _step_ms(model, 200, 32, repeats)
    row["ms_per_token@1700"] = _step_ms(model, 1700, 32, repeats)
    row["tokens_per_s_single"] = _tokens_per_s(model, 1, 150, repeats)
    row["tokens_per_s_batch4"] = _tokens_per_s(model, 4, 150, repeats)
    row["peak_rss_MB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row["load_after"] = os.getloadavg()[0]
    return row


def bench_gpt(dtypes: tuple[str, ...] = DEFAULT_ROWS, threads: int = 2,
              repeats: int = 3) -> list[dict]:
    """One row per dtype, each measured in a fresh process."""
    return [in_child(_measure, name, threads, repeats) for name in dtypes]


def format_table(rows: list[dict]) -> str:
    cols = ["dtype", "ms_per_token@200", "ms_per_token@1700", "tokens_per_s_single", "tokens_per_s_batch4",
            "peak_rss_MB", "load_before", "load_after"]
    widths = [max([len(c), 8] + [len(str(r[c])) for r in rows if isinstance(r[c], str)]) for c in cols]
    lines = [" | ".join(f"{c:>{w}}" for c, w in zip(cols, widths))]
    for r in rows:
        lines.append(" | ".join(f"{r[c]:>{w}.1f}" if isinstance(r[c], float) else f"{r[c]:>{w}}"
                                for c, w in zip(cols, widths)))
    lines.append("targets: " + ", ".join(f"{k} {'<=' if k.startswith('ms') else '>='} {v}" for k, v in TARGETS.items()))
    lines.append("load_*: 1-minute load average; above ~2 other processes share the 2 cores and timings suffer")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtypes", default=",".join(DEFAULT_ROWS),
                        help=f"comma-separated torch dtypes or modes ({', '.join(MODES)})")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs per timing")
    args = parser.parse_args()
    print(f"GPT-SoVITS v2 stage-1 decode, full size, random weights, CPU, {args.threads} threads")
    print(format_table(bench_gpt(tuple(args.dtypes.split(",")), args.threads, args.repeats)), flush=True)


if __name__ == "__main__":
    main()
