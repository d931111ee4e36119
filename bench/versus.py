"""Our inference against the official GPT-SoVITS code and peer engines, side by side in one invocation.

    python -m bench.versus --official DIR [--official-python PY] [--peer NAME=PY ...] [--rounds 2] [--threads 2]

`--official` is a checkout of https://github.com/RVC-Boss/GPT-SoVITS (docs/benchmarks.md names the commit) whose
dependencies the interpreter `--official-python` has (default: this one). It is a measuring stick: the product
never imports it. One workload is written once: full-size v2 GPT and SoVITS with random weights in the official
file formats (the output head's EOS row zeroed so every run decodes the same number of tokens), a 60-phone
sentence after a 150-token prompt, 250 new tokens, then the SoVITS decode of those tokens against a 5 s reference
spectrogram. Every implementation loads those same files in its own child process (`bench/adapters/`), so each
peak RSS is its own, and the children alternate (A B C A B C ...) for `--rounds` rounds so that load on a shared
machine falls on all of them alike; each figure is the median over rounds of the best of `--repeats` runs.

Printed: per implementation, GPT ms per decoding step near 200 and 1700 positions, tokens/s, CPU ms per token,
SoVITS RTF, whole-sentence RTF, peak RSS and the load average of each run; then every figure as a ratio to the
official code's (speed ratios > 1 mean faster than official), the goals of issue 19 checked, and the divergence of
`fast` from `exact` (teacher-forced logits, MCD of the decoded audio).

`--contention` also runs our two modes beside `--competitors` CPU-bound processes (default 1: "another CPU-bound
process on the machine", issue 19) and prints CPU-seconds per token under contention against the quiet figure
(goal: at most 1.3x).

Peers: `--peer NAME=PYTHON` runs `bench/adapters/<NAME, - as _>.py` with PYTHON, the interpreter of a virtual
environment holding that engine. Adapters exist for genie-tts 2.0.2, gpt-sovits-cpufast 0.1.0 and gsv-tts-lite
0.4.7; `bash bench/peers.sh [DIR [NAME ...]]` makes their environments (default DIR /work/venvs), then

    python -m bench.versus --official DIR --official-python PY --peer genie-tts=/work/venvs/genie-tts/bin/python \
        --peer gpt-sovits-cpufast=/work/venvs/gpt-sovits-cpufast/bin/python \
        --peer gsv-tts-lite=/work/venvs/gsv-tts-lite/bin/python

Each adapter's docstring says which code path of the engine it measures and how it differs from the shared
workload. An engine with no torch module per decoding step (genie-tts runs ONNX Runtime) has no step timings:
its cells show '-'.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench._probe import STEP_POSITIONS, STEP_TOKENS

REPO = Path(__file__).resolve().parents[1]
ADAPTERS = REPO / "bench" / "adapters"
TOKENS = 250
PROMPT_TOKENS = 150
SENTENCE_PHONES = 60
GOALS = {  # issue 19, as ratios in one run on a quiet 2-core machine, 2 threads
    "fast_vs_official": 3.5, "fast_vs_best_peer": 3.0, "exact_vs_official": 1.5, "step_1700_vs_200": 1.2,
    "contention_cpu_ratio": 1.3,
}


# -- the workload -------------------------------------------------------------------------------------------------


def write_workload(folder: Path, seed: int = 0, small: bool = False) -> Path:
    """Random full-size v2 weights in the official formats and the inputs of every run (see bench/_probe.py);
    `small`: the tiny models of bench/gpu.py's CPU fallback instead (checks the harness, measures nothing)."""
    from bench.infer_gpt import _prompt, _sentence
    from bench.infer_sovits import _inputs
    from models.checkpoints import save_gpt, save_sovits
    from models.gpt import GPT, GPTConfig
    from models.sovits import SoVITS, SoVITSConfig

    folder.mkdir(parents=True, exist_ok=True)
    if all((folder / name).exists() for name in ("gpt.ckpt", "sovits.pth", "inputs.pt")):
        return folder  # a workload folder given again is reused (its converted copies too: genie-tts)
    torch.manual_seed(seed)
    from bench.gpu import SMALL_GPT, SMALL_SOVITS

    gpt = GPT(GPTConfig(**(SMALL_GPT if small else {}))).eval()
    with torch.no_grad():  # random weights: keep EOS out of reach so every run decodes the same tokens
        gpt.ar_predict_layer.weight[gpt.cfg.eos] = 0.0
    save_gpt(gpt, folder / "gpt.ckpt", digest=False)
    del gpt
    save_sovits(SoVITS(SoVITSConfig(**(SMALL_SOVITS if small else {}))).eval(), folder / "sovits.pth", digest=False)
    phones, bert = _sentence(SENTENCE_PHONES, 0)
    _, text, refer, _ = _inputs(TOKENS / 25, seed)
    inputs = {"phones": phones, "bert": bert, "prompt": _prompt(PROMPT_TOKENS), "text": text, "refer": refer}
    for positions in STEP_POSITIONS:
        step_phones, step_bert = _sentence(40, 0)
        inputs[f"step{positions}_phones"], inputs[f"step{positions}_bert"] = step_phones, step_bert
        inputs[f"step{positions}_prompt"] = _prompt(positions - 40 - STEP_TOKENS // 2)
    torch.save(inputs, folder / "inputs.pt")
    return folder


# -- running the children -----------------------------------------------------------------------------------------


def _burn(stop_at: float) -> None:
    """A CPU-bound competitor: spins until the wall clock passes `stop_at`."""
    x = 0
    while time.time() < stop_at:
        for _ in range(100_000):
            x += 1


class Competitors:
    """`n` CPU-bound processes while in the `with` block (bounded: each stops by itself after `limit_s`)."""

    def __init__(self, n: int, limit_s: float = 900.0) -> None:
        self.n, self.limit_s, self.procs = n, limit_s, []

    def __enter__(self) -> "Competitors":
        ctx = mp.get_context("spawn")
        self.procs = [ctx.Process(target=_burn, args=(time.time() + self.limit_s,), daemon=True) for _ in range(self.n)]
        for p in self.procs:
            p.start()
        time.sleep(1.0)
        return self

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.join()


def run_child(command: list[str], env: dict | None = None, timeout_s: float = 1800) -> dict:
    """Run one adapter; its last stdout line is the JSON row."""
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout_s)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command[:3])} failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def commands(args: argparse.Namespace, workload: Path) -> dict[str, list[str]]:
    """name -> adapter command line, in the order of a round."""
    common = ["--workload", str(workload), "--threads", str(args.threads), "--tokens", str(args.tokens),
              "--repeats", str(args.repeats)]
    out: dict[str, list[str]] = {}
    if args.official:
        out["official"] = [args.official_python, str(ADAPTERS / "official.py"), "--official", args.official, *common]
    for peer in args.peer:
        name, python = peer.split("=", 1)
        out[name] = [python, str(ADAPTERS / f"{name.replace('-', '_')}.py"), *common]
    for mode in ("exact", "fast"):
        out[mode] = [sys.executable, str(ADAPTERS / "narrator.py"), "--mode", mode, *common]
    return out


def run_rounds(cmds: dict[str, list[str]], rounds: int, log=print) -> dict[str, list[dict]]:
    """A B C A B C ...: every implementation once per round."""
    rows: dict[str, list[dict]] = {name: [] for name in cmds}
    for r in range(rounds):
        for name, cmd in cmds.items():
            row = run_child(cmd)
            rows[name].append(row)
            log(f"  round {r + 1}/{rounds} {name:>10}: sentence RTF {row['sentence_rtf']:.3f}, "
                f"GPT {row['tokens_per_s']:.1f} tok/s, SoVITS RTF {row['sovits_rtf']:.3f}, "
                f"peak {row['peak_rss_mb']:.0f} MB, load {row['load_avg']:.2f}")
    return rows


# -- summarising --------------------------------------------------------------------------------------------------

METRICS = [  # key, label, higher is better, format
    ("ms_per_token@200", "GPT ms/token @200", False, "{:.1f}"),
    ("ms_per_token@1700", "GPT ms/token @1700", False, "{:.1f}"),
    ("tokens_per_s", "GPT tokens/s, whole sentence", True, "{:.1f}"),
    ("cpu_ms_per_token", "GPT CPU ms/token", False, "{:.1f}"),
    ("sovits_rtf", "SoVITS RTF", False, "{:.3f}"),
    ("sentence_rtf", "sentence RTF", False, "{:.3f}"),
    ("peak_rss_mb", "peak RSS MB", False, "{:.0f}"),
]


def summarise(rows: dict[str, list[dict]]) -> dict[str, dict]:
    """Median over rounds of each metric, and the load averages seen."""
    out = {}
    for name, runs in rows.items():
        med = {key: statistics.median(r[key] for r in runs) for key, *_ in METRICS if runs[0].get(key) is not None}
        med["loads"] = [round(r["load_avg"], 2) for r in runs]
        med["tokens"] = runs[0]["tokens"]
        out[name] = med
    return out


def speed_ratio(key: str, higher_better: bool, ours: float, base: float) -> float:
    """How many times better `ours` is than `base` (> 1: better), for speed and memory alike."""
    return ours / base if higher_better else base / ours


def table(summary: dict[str, dict], baseline: str) -> str:
    names = list(summary)
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for key, label, _, fmt in METRICS:
        cells = [fmt.format(summary[n][key]) if key in summary[n] else "-" for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if baseline in summary:
        for key, label, higher, _ in METRICS:
            base = summary[baseline].get(key)
            cells = [f"{speed_ratio(key, higher, summary[n][key], base):.2f}x" if base and key in summary[n] else "-"
                     for n in names]
            lines.append(f"| {label}, vs {baseline} | " + " | ".join(cells) + " |")
    lines.append("| load average per round | " + " | ".join(" ".join(map(str, summary[n]["loads"])) for n in names)
                 + " |")
    return "\n".join(lines)


def goals(summary: dict[str, dict], peers: list[str]) -> list[str]:
    """The issue's goals, each as measured ratio vs goal."""
    out = []

    def line(what: str, value: float, goal: float, at_most: bool = False) -> None:
        ok = value <= goal if at_most else value >= goal
        out.append(f"{'met ' if ok else 'MISS'} {what}: {value:.2f}x (goal {'<=' if at_most else '>='} {goal}x)")

    sentence = {n: s["sentence_rtf"] for n, s in summary.items()}
    if "official" in summary:
        line("fast per sentence vs official", sentence["official"] / sentence["fast"], GOALS["fast_vs_official"])
        line("exact per sentence vs official", sentence["official"] / sentence["exact"], GOALS["exact_vs_official"])
        for mode in ("exact", "fast"):
            line(f"peak RSS {mode} vs official (official / ours)",
                 summary["official"]["peak_rss_mb"] / summary[mode]["peak_rss_mb"], 1.0)
    if peers:
        best = min(peers, key=lambda p: sentence[p])
        line(f"fast vs fastest peer ({best})", sentence[best] / sentence["fast"], GOALS["fast_vs_best_peer"])
        for p in peers:
            line(f"exact vs {p}", sentence[p] / sentence["exact"], 1.0)
    for mode in ("exact", "fast"):
        s = summary[mode]
        line(f"{mode} GPT step cost at 1700 / at 200", s["ms_per_token@1700"] / s["ms_per_token@200"],
             GOALS["step_1700_vs_200"], at_most=True)
    return out


# -- fast against exact -------------------------------------------------------------------------------------------


def divergence(workload: Path, threads: int, n_steps: int = 100) -> dict:
    """`fast` against `exact` on the workload: teacher-forced GPT logits over `n_steps` greedy exact tokens (largest
    |difference| relative to the largest |logit|, top-1 agreement) and the MCD of the same codes decoded with the
    same noise by both SoVITS models."""
    import numpy as np
    import torch.nn.functional as F

    from models.checkpoints import load_gpt, load_sovits
    from models.gpt import KVCache, inference_mask
    from models.inference import prepare_for_inference
    from narrator.metrics import mel_cepstral_distortion

    torch.set_num_threads(threads)
    inputs = torch.load(workload / "inputs.pt", weights_only=True)
    phones, bert, prompt = inputs["phones"], inputs["bert"], inputs["prompt"]
    models = {}
    for mode in ("exact", "fast"):
        gpt, sovits = load_gpt(workload / "gpt.ckpt"), load_sovits(workload / "sovits.pth")
        prepare_for_inference(sovits, gpt, mode)
        models[mode] = (gpt, sovits)
    exact_gpt = models["exact"][0]
    tokens = exact_gpt.generate(phones, bert, prompt, top_k=1, early_stop_num=n_steps - 1)

    @torch.inference_mode()
    def forced_logits(gpt) -> torch.Tensor:
        dtype = next(gpt.parameters()).dtype
        x = gpt.input_embeddings(phones, bert.to(dtype), prompt)
        lx, ty = phones.shape[1], prompt.shape[1]
        cache = KVCache(gpt.cfg, 1, lx + ty + n_steps + 1, torch.float32, torch.device("cpu"))
        step = gpt.h.step if gpt.decoding_step is None else gpt.decoding_step.bind(gpt)
        h = gpt.prefill(x, inference_mask(lx, ty), cache)
        out = []
        for i in range(tokens.shape[1]):
            out.append(gpt.ar_predict_layer(h).float())
            pe = gpt.ar_audio_position.encoding(torch.tensor([ty + i]))
            h = step(F.embedding(tokens[:, i], gpt.ar_audio_embedding.word_embeddings.weight) + pe, cache)
        return torch.cat(out)

    exact_logits, fast_logits = forced_logits(exact_gpt), forced_logits(models["fast"][0])
    rel = float((exact_logits - fast_logits).abs().max() / exact_logits.abs().max())
    agree = float((exact_logits.argmax(-1) == fast_logits.argmax(-1)).float().mean())
    codes = torch.randint(0, 1024, (1, TOKENS), generator=torch.Generator().manual_seed(3))
    inter = models["exact"][1].config.inter_channels
    noise = torch.randn(1, inter, 2 * TOKENS, generator=torch.Generator().manual_seed(4))
    wavs = {}
    for mode, (_, sovits) in models.items():
        dtype = next(sovits.parameters()).dtype
        with torch.inference_mode():
            wav = sovits.decode(codes[None], inputs["text"], [inputs["refer"].to(dtype)], noise=noise.to(dtype))
        wavs[mode] = wav[0, 0].float().numpy()
    mcd = mel_cepstral_distortion(wavs["exact"], wavs["fast"], 32000, trim_silence_db=None)
    err = wavs["exact"] - wavs["fast"]
    snr = 10 * np.log10(float((wavs["exact"] ** 2).sum()) / max(float((err ** 2).sum()), 1e-20))
    return {"logit_rel_max": rel, "top1_agreement": agree, "steps": int(tokens.shape[1]), "mcd_db": mcd,
            "snr_db": snr}


# -- main ---------------------------------------------------------------------------------------------------------


def header(args: argparse.Namespace) -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return (f"{time.strftime('%Y-%m-%d %H:%M %Z')}, {cpu}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{args.threads} threads; load average {os.getloadavg()[0]:.2f} at start; {args.tokens} tokens after a "
            f"{PROMPT_TOKENS}-token prompt, full v2 size, random weights, {args.rounds} rounds alternating")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official", help="GPT-SoVITS checkout (folder holding GPT_SoVITS/); none: ours only")
    parser.add_argument("--official-python", default=sys.executable,
                        help="interpreter with the checkout's dependencies (default: this one)")
    parser.add_argument("--peer", action="append", default=[], metavar="NAME=PYTHON",
                        help="a peer engine and its virtual environment's interpreter (adapters: bench/adapters/)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs per figure, per child")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=TOKENS)
    parser.add_argument("--workload", help="folder for the workload files, reused when they are already there "
                                           "(default: a temporary folder)")
    parser.add_argument("--contention", action="store_true",
                        help="also run exact and fast beside CPU-bound processes and compare CPU time per token")
    parser.add_argument("--competitors", type=int, default=1, help="CPU-bound processes for --contention")
    parser.add_argument("--no-divergence", action="store_true", help="skip the fast-vs-exact divergence")
    parser.add_argument("--small", action="store_true",
                        help="tiny models: checks the harness in seconds (what the tests run), measures nothing")
    args = parser.parse_args(argv)

    print(header(args), flush=True)
    with tempfile.TemporaryDirectory(prefix="versus-") as tmp:
        workload = write_workload(Path(args.workload or tmp), small=args.small)
        cmds = commands(args, workload)
        rows = run_rounds(cmds, args.rounds)
        summary = summarise(rows)
        baseline = "official" if "official" in summary else "exact"
        print(f"\nmedians over {args.rounds} rounds; ratios: > 1 is better than {baseline}")
        print(table(summary, baseline))
        peers = [p.split("=", 1)[0] for p in args.peer]
        print("\ngoals (issue 19):")
        for line in goals(summary, peers):
            print("  " + line)
        if not args.no_divergence:
            from bench._child import in_child

            d = in_child(divergence, workload, args.threads)
            print(f"\nfast vs exact: teacher-forced logits over {d['steps']} steps differ by at most "
                  f"{100 * d['logit_rel_max']:.2f}% of the largest, top-1 agreement {100 * d['top1_agreement']:.1f}%; "
                  f"decoded audio (same codes and noise): MCD {d['mcd_db']:.3f} dB, SNR {d['snr_db']:.1f} dB")
        if args.contention:
            contended = {}
            with Competitors(args.competitors):
                for mode in ("exact", "fast"):
                    contended[mode] = run_child(cmds[mode])
            print(f"\nunder contention ({args.competitors} CPU-bound competing process(es) on {os.cpu_count()} "
                  "cores):")
            for mode, row in contended.items():
                quiet = summary[mode]["cpu_ms_per_token"]
                ratio = row["cpu_ms_per_token"] / quiet
                verdict = "met " if ratio <= GOALS["contention_cpu_ratio"] else "MISS"
                print(f"  {verdict} {mode}: CPU ms/token {row['cpu_ms_per_token']:.1f} against {quiet:.1f} quiet "
                      f"= {ratio:.2f}x (goal <= {GOALS['contention_cpu_ratio']}x); wall {row['tokens_per_s']:.1f} "
                      f"tokens/s, load {row['load_avg']:.2f}")


if __name__ == "__main__":
    main()
