"""What an evaluation run (`narrator evaluate`, components/evaluate.py) costs, and where the time goes.

The baseline is what the evaluation cannot avoid: speaking each utterance with the voice (full v2 size, random
weights, float32: GPT decodes as many tokens as the utterance lasts at 25 Hz, then SoVITS decodes them). Each
measurement the step adds is timed on the same utterance (espeak-ng speech standing in for the held-out recording
and for the synthesis) and given as a ratio to that baseline:

- speaker similarity: GE2E embedding of the synthesis (the intake model);
- MCD-DTW and F0 RMSE/correlation against the held-out recording;
- duration check (edge-trimmed length against the narrator's phone rate);
- watermark: mark the output as the service does, then detect it and read the payload back;
- ASR is not included: no Whisper weights are available offline here (it costs one Whisper decode per utterance).

The last rows project a default run (evaluate.max_holdout_segments held-out segments + sentences_per_language
sentences) from the per-utterance figures, plus the one-off costs (loading models, writing the HTML report) timed
once. Runs in a fresh child process with 2 torch threads.

    python -m bench.evaluate [--threads 2] [--utterance-s 4]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from bench._child import in_child

SENTENCE = "The lighthouse keeper climbed the spiral stairs before the storm arrived."
TOKENS_PER_S = 25


def _timed(fn, repeats: int = 3) -> float:
    """Best wall time of `fn()` over `repeats` runs, seconds."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _measure(threads: int, utterance_s: float) -> dict:
    import numpy as np
    import torch

    from bench.infer_gpt import _model, _prompt, _sentence
    from bench.infer_sovits import _inputs
    from cli.demo import espeak
    from components import evaluate as E
    from models.inference import prepare_sovits
    from models.sovits import SoVITS, SoVITSConfig
    from models.watermark import detect, embed
    from narrator import metrics as M
    from narrator.audiofile import read_audio, resample
    from narrator.config import load_params
    from narrator.registry import EVALUATION_PAYLOAD

    torch.set_num_threads(threads)
    rows: list[tuple[str, float]] = []

    # baseline: speak one utterance at full size
    start = time.perf_counter()
    gpt = _model(torch.float32)
    sovits = prepare_sovits(SoVITS(SoVITSConfig()).eval(), channels_last=True)
    load_s = time.perf_counter() - start
    tokens = int(utterance_s * TOKENS_PER_S)
    phones, bert = _sentence(int(utterance_s * 12), 0)
    prompt = _prompt(150)
    _, text, refer, _ = _inputs(utterance_s)

    def speak():
        with torch.inference_mode():
            codes = gpt.generate(phones, bert, prompt, top_k=15, early_stop_num=tokens - 1, seed=0)
            return sovits.decode(codes[None], text, [refer], noise_scale=0.5)

    speak()  # warm-up
    synthesis_s = _timed(speak, repeats=2)
    rows.append(("synthesis (GPT + SoVITS, full size)", synthesis_s))

    with tempfile.TemporaryDirectory() as tmp:
        real = read_audio(espeak(SENTENCE, Path(tmp) / "real.wav", "en-us+m3", seed=0))
        fake = read_audio(espeak(SENTENCE, Path(tmp) / "fake.wav", "en-us+m3", speed_wpm=165, seed=1))
    rate = E.EVAL_RATE_HZ
    real_16k = resample(real.mono(), real.sample_rate_hz, rate)
    fake_16k = resample(fake.mono(), fake.sample_rate_hz, rate)
    fake_32k = resample(fake.mono(), fake.sample_rate_hz, 32000)
    spoken_s = len(fake_16k) / rate

    start = time.perf_counter()
    speaker = E.SpeakerModel(None)
    speaker.embed([real_16k])
    load_s += time.perf_counter() - start
    rows.append(("speaker similarity (GE2E)", _timed(lambda: speaker.embed([fake_16k]))))
    rows.append(("MCD-DTW", _timed(lambda: M.mel_cepstral_distortion(real_16k, fake_16k, rate))))
    rows.append(("F0 RMSE + correlation", _timed(lambda: M.f0_metrics(real_16k, fake_16k, rate), repeats=2)))
    rows.append(("duration check", _timed(lambda: M.duration_check(spoken_s, 60, spoken_s / 60, 0.5))))
    key = bytes(range(32))

    def watermark():
        marked = embed(fake_32k, 32000, EVALUATION_PAYLOAD, key)
        return detect(marked, 32000, key)

    rows.append(("watermark mark + detect", _timed(watermark)))

    params = load_params(None, {})
    per_utterance_s = sum(s for _, s in rows)
    measured_s = per_utterance_s - synthesis_s
    utterances = params.evaluate.max_holdout_segments + params.evaluate.sentences_per_language
    report_s = _timed(lambda: _report_html(E, real_16k, fake_16k, utterances), repeats=1)
    return {"rows": rows, "synthesis_s": synthesis_s, "measured_s": measured_s, "utterances": utterances,
            "load_s": load_s, "report_s": report_s, "spoken_s": spoken_s, "utterance_s": utterance_s,
            "threads": threads, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "joined_s": _timed(lambda: detect(np.tile(fake_32k, utterances), 32000, key), repeats=1)}


def _report_html(E, real_16k, fake_16k, utterances: int) -> str:
    """The HTML report of a run with `utterances` utterances, half of them held-out pairs."""
    names = [f"u{i:02d}" for i in range(utterances)]
    report = E.EvaluationReport(voice={}, reference="u00", metrics={"mcd_db": 6.0}, verdict={"passed": True,
                                "reasons": [], "checked": []}, utterances=[
        E.Utterance("holdout", n, SENTENCE, "en", 4.0, 60, 1.0, 0.3) for n in names], warnings=[], seconds=0.0)
    pairs = names[:utterances // 2]
    return E._html(report, {n: real_16k for n in pairs}, {n: fake_16k for n in pairs})


def table(result: dict) -> str:
    base = result["synthesis_s"]
    lines = [f"Per utterance ({result['utterance_s']:.0f} s of speech synthesized; the measurements on "
             f"{result['spoken_s']:.1f} s espeak-ng speech), {result['threads']} threads:", "",
             "| step | seconds | x synthesis |", "|---|---:|---:|"]
    lines += [f"| {name} | {seconds:.3f} | {seconds / base:.3f} |" for name, seconds in result["rows"]]
    n = result["utterances"]
    total = result["load_s"] + n * (base + result["measured_s"]) + result["joined_s"] + result["report_s"]
    lines += ["", f"A default run ({n} utterances), projected:", "",
              "| part | seconds | share |", "|---|---:|---:|",
              f"| load models (GPT, SoVITS, GE2E) | {result['load_s']:.1f} | {result['load_s'] / total:.1%} |",
              f"| synthesis x {n} | {n * base:.1f} | {n * base / total:.1%} |",
              f"| measurements x {n} | {n * result['measured_s']:.1f} | {n * result['measured_s'] / total:.1%} |",
              f"| joined watermark check | {result['joined_s']:.1f} | {result['joined_s'] / total:.1%} |",
              f"| HTML report | {result['report_s']:.1f} | {result['report_s'] / total:.1%} |",
              f"| total | {total:.1f} | measurement overhead {(total / (n * base) - 1):.0%} over synthesis |",
              "", f"peak RSS {result['peak_mb']:.0f} MB"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--utterance-s", type=float, default=4.0, help="seconds of speech per utterance")
    args = parser.parse_args(argv)
    print(table(in_child(_measure, args.threads, args.utterance_s)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
