"""Narration on this CPU (`inference.mode: fast`): speed in times real time, the quality guard's overhead and the
regeneration rate.

The voice is the demo voice when `make demo` has made it (demo/params.yaml, voice "demo"), else the tiny random
voice of tests/deployment.py (built in a temporary folder). The book is BENCH_CHAPTERS chapters of plain
sentences. Each chapter is narrated from scratch (no kept sentences) with the voice loaded once:

    times real time   seconds of chapter audio per second of wall time (speaking, marking, mastering, MP3)
    guard overhead    wall time with the guard / without it, on limits loose enough that no sentence is retried
                      (alternating off/on pairs; the median of the ratios): the cost of checking; and the checks
                      alone on a 400-token sentence, in ms (without an ASR model they are all the guard adds)
    regeneration      share of sentences spoken more than once, and still failing, under the default limits

    python -m bench.narrate [--pairs 3] [--threads 1]

One thread by default: what each chapter gets from narrate's defaults on 2 cores (torch_threads 0 = the CPUs over
parallel_chapters 2). On a shared machine two threads also contend with the other jobs, and the timings swing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH_CHAPTERS = 2
SENTENCES = ["The keeper climbed the stairs before the storm arrived.", "The lamp was lit at dusk.",
             "Ships passed far out at sea, their lights small and yellow.", "She wrote every name in the log.",
             "By morning the wind had dropped.", "The harbour was quiet again."]
LOOSE = {"max_s_per_phone": 10.0, "min_s_per_phone": 0.0001, "loop_max_repeats": 10_000,
         "loop_max_run_tokens": 10_000}  # no sentence fails: only the checking is timed


def _voice(work: Path) -> tuple[str, dict, str]:
    """(voice, params overrides, what it is), setting the watermark key in the environment."""
    demo = REPO_ROOT / "demo"
    if (demo / "params.yaml").exists():
        from cli.demo import DEMO_KEY_FILE
        from narrator.config import load_params
        from narrator.registry import RegistryError, champion

        overrides = yaml.safe_load((demo / "params.yaml").read_text(encoding="utf-8"))
        try:
            if champion("demo", load_params(None, overrides)) is not None:
                os.environ["NARRATOR_WATERMARK_KEY_FILE"] = str(demo / DEMO_KEY_FILE)
                return "demo", overrides, "demo voice (make demo)"
        except RegistryError:
            pass
    from tests.deployment import build_small_deployment

    deployment = build_small_deployment(work / "voice", {"storage": {"cache_dir": str(work / "cache")}})
    os.environ["NARRATOR_WATERMARK_KEY"] = deployment.watermark_key
    return "alice", yaml.safe_load(deployment.params_file.read_text(encoding="utf-8")), "tiny random voice"


def _narrate_book(narrator, params, out: Path) -> tuple[float, float, list]:
    """(wall s, audio s, chapter results) of narrating the bench book from scratch into `out`."""
    from components.narrate import narrate_chapter
    from narrator.manuscript import Chapter

    chapters = [Chapter(f"Chapter {i + 1}", " ".join(SENTENCES)) for i in range(BENCH_CHAPTERS)]
    started = time.perf_counter()
    results = [narrate_chapter(narrator, i, chapter, out, params) for i, chapter in enumerate(chapters)]
    return time.perf_counter() - started, sum(r.duration_s for r in results), results


def _check_ms(tokens: int = 400, repeats: int = 200) -> float:
    """Milliseconds the guard's checks take on one sentence of `tokens` semantic tokens (16 s of speech)."""
    import numpy as np

    from models.guard import GuardLimits, check_sentence

    codes = np.random.default_rng(0).integers(0, 1024, tokens)
    check_sentence(codes, tokens // 8, GuardLimits())
    started = time.perf_counter()
    for _ in range(repeats):
        check_sentence(codes, tokens // 8, GuardLimits())
    return (time.perf_counter() - started) / repeats * 1000


def run(pairs: int = 3, threads: int = 1) -> dict:
    from components.narrate import load_narrator, resolve_voice
    from narrator.config import load_params

    with tempfile.TemporaryDirectory(prefix="bench-narrate-") as tmp:
        work = Path(tmp)
        voice, overrides, what = _voice(work)
        base = {**overrides, "inference": {"mode": "fast"},
                "registry": {**overrides.get("registry", {}), "audit_log": str(work / "audit.jsonl")},
                "narrate": {"torch_threads": threads, "parallel_chapters": 1}}
        off = load_params(None, {**base, "narrate": {**base["narrate"], "guard": False}})
        on = load_params(None, {**base, "narrate": {**base["narrate"], "guard": True, "guard_limits": LOOSE}})
        default = load_params(None, {**base, "narrate": {**base["narrate"], "guard": True}})
        narrator = load_narrator(resolve_voice(voice, None, off), off)
        _narrate_book(narrator, off, work / "warm-up-off")
        _narrate_book(narrator, on, work / "warm-up-on")  # the guard's first use imports narrator.metrics
        ratios, speeds = [], []
        for pair in range(pairs):  # alternate the order: off, on; on, off; ...
            first, second = (off, on) if pair % 2 == 0 else (on, off)
            timed = {id(p): _narrate_book(narrator, p, work / f"{pair}-{p.narrate.guard}") for p in (first, second)}
            (off_s, audio_s, _), (on_s, _, checked) = timed[id(off)], timed[id(on)]
            assert not any(r.regenerated for r in checked), "the loose limits retried a sentence"
            ratios.append(on_s / off_s)
            speeds.append(audio_s / off_s)
        _, _, results = _narrate_book(narrator, default, work / "default")
        sentences = sum(r.sentences for r in results)
        return {"voice": what, "threads": threads, "sentences": sentences, "check_ms": _check_ms(),
                "times_real_time": statistics.median(speeds), "guard_overhead": statistics.median(ratios),
                "ratios": ratios, "regenerated": sum(r.regenerated for r in results) / sentences,
                "failing": sum(len(r.failed) for r in results) / sentences}


def table(row: dict) -> str:
    header = ("| voice | threads | sentences | times real time (guard off) | guard overhead (on / off) | checks ms per "
              "sentence | regenerated | still failing |")
    ratios = ", ".join(f"{r:.3f}" for r in row["ratios"])
    line = (f"| {row['voice']} | {row['threads']} | {row['sentences']} | {row['times_real_time']:.2f}x | "
            f"{row['guard_overhead']:.3f} ({ratios}) | {row['check_ms']:.1f} | {row['regenerated']:.0%} | "
            f"{row['failing']:.0%} |")
    return "\n".join([header, "|---|---:|---:|---:|---:|---:|---:|---:|", line])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=3, help="alternating guard off/on runs")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (narrate's default on 2 cores: 1)")
    args = parser.parse_args()
    print(f"narration, inference.mode fast, {args.threads} threads, {BENCH_CHAPTERS} chapters of "
          f"{len(SENTENCES)} sentences; guard overhead goal: at most 1.15")
    print(table(run(args.pairs, args.threads)))


if __name__ == "__main__":
    main()
