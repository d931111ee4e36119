"""Validation throughput: audio-seconds validated per wall-second and peak memory, on 30 minutes of speech.

Rows (each run in a fresh child process so its peak memory is its own):
- decode only: read and resample every clip (the floor any validator pays);
- per-clip models (baseline): the libraries used the obvious way, one clip at a time
  (silero's get_speech_timestamps and resemblyzer's embed_utterance);
- narrator validate: the real step (components/validate.py), batched VAD and speaker embeddings.
Goal on a 2-core machine: at least 100x real time for `narrator validate`, speaker embeddings included.

    python -m bench.validate [--minutes 30]
"""

from __future__ import annotations

import argparse
import random
import resource
import time
from pathlib import Path

from bench._child import in_child

CACHE = Path(".bench-cache")
WORDS = ("river mountain quiet yellow window morning garden letter silver journey market evening lantern "
         "harbour forest winter orange bridge candle meadow thunder pocket village secret paper engine "
         "feather castle island marble rocket saddle shadow spring summer tiger valley wonder").split()


def build_dataset(minutes: float) -> Path:
    """Unique espeak-ng sentences (random word sequences) until `minutes` of audio; cached between runs."""
    from narrator.audiofile import read_audio
    from cli.demo import espeak, write_consent

    folder = CACHE / f"validate-{minutes:g}min"
    if (folder / "consent.yaml").exists():
        return folder
    rng = random.Random(0)
    total, index, lines = 0.0, 0, []
    while total < minutes * 60:
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 22))).capitalize() + "."
        path = espeak(text, folder / "clips" / f"{index:04d}.wav", "en-us+m3", seed=index)
        total += read_audio(path).duration_s
        lines.append(f"clips/{index:04d}.wav|bench|en|{text}")
        index += 1
    (folder / "transcripts.list").write_text("\n".join(lines) + "\n")
    write_consent(folder, "Bench Narrator", "Bench Org", "en-us+m3")
    return folder


def _decode_only(folder: Path) -> float:
    from narrator.audiofile import read_audio, resample

    total = 0.0
    for path in sorted((folder / "clips").glob("*.wav")):
        audio = read_audio(path)
        resample(audio.mono(), audio.sample_rate_hz, 16000)
        total += audio.duration_s
    return total


def _per_clip_models(folder: Path) -> float:
    import warnings

    import torch
    from resemblyzer import VoiceEncoder
    from silero_vad import get_speech_timestamps, load_silero_vad

    from narrator.audiofile import read_audio, resample

    warnings.filterwarnings("ignore")
    vad, encoder = load_silero_vad(onnx=True), VoiceEncoder("cpu", verbose=False)
    total = 0.0
    for path in sorted((folder / "clips").glob("*.wav")):
        audio = read_audio(path)
        wav = resample(audio.mono(), audio.sample_rate_hz, 16000)
        get_speech_timestamps(torch.from_numpy(wav), vad, sampling_rate=16000)
        encoder.embed_utterance(wav)
        total += audio.duration_s
    return total


def _narrator_validate(folder: Path) -> float:
    import tempfile

    from components.validate import validate
    from narrator.config import load_params

    with tempfile.TemporaryDirectory() as out:
        report = validate(str(folder), out, load_params(None))
    return report.totals["total_duration_s"]


VARIANTS = {"decode only": _decode_only, "per-clip models (baseline)": _per_clip_models,
            "narrator validate": _narrator_validate}


def _measure(name: str, folder: str) -> tuple[float, float, float]:
    import torch

    torch.set_num_threads(2)
    started = time.perf_counter()
    audio_s = VARIANTS[name](Path(folder))
    wall = time.perf_counter() - started
    return audio_s, wall, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(minutes: float = 30.0) -> list[dict]:
    folder = build_dataset(minutes)
    rows = []
    for name in VARIANTS:
        audio_s, wall, peak_mb = in_child(_measure, name, str(folder))
        rows.append({"variant": name, "audio_s": audio_s, "wall_s": wall, "x_realtime": audio_s / wall,
                     "peak_mb": peak_mb})
    baseline = next(r for r in rows if r["variant"].endswith("(baseline)"))
    for row in rows:
        row["vs_baseline"] = row["x_realtime"] / baseline["x_realtime"]
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| variant | audio s | wall s | x real time | vs baseline | peak RSS MB |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['audio_s']:.0f} | {r['wall_s']:.1f} | {r['x_realtime']:.0f}x | "
                     f"{r['vs_baseline']:.2f} | {r['peak_mb']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0, help="minutes of generated speech (default 30)")
    args = parser.parse_args()
    print(f"validate benchmark: {args.minutes:g} min of espeak-ng speech, 2 torch threads")
    print(table(run(args.minutes)))


if __name__ == "__main__":
    main()
