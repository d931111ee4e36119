"""Watermark robustness and speed (models/watermark.py, issue 6).

A narration of espeak-ng speech (the 32 demo sentences, 4 voices, 0.3 s pauses, about 2 min) is marked once at
each master rate; every attack is applied to the whole marked file; excerpts are then cut at random sample
offsets. Rows: attack x excerpt length (3 s: is the mark there; 10 s: read the payload). Columns:

- detected: share of excerpts whose score reaches the threshold (false-alarm target 1e-6 per file);
- payload read: share of excerpts that return exactly the embedded payload (CRC-checked);
- BER: bit error rate of the 32 payload bits as decoded (soft Viterbi, before the CRC) at the best alignment;
- z p1 / median: 1st percentile and median of the score (the threshold is about 6.2 for 3 s, 6.9 for 10 s).
The last attack splices each excerpt (a quarter as many) into 20 s of unmarked speech at a random sample and
searches the whole result.

The narration, the attacks and the unmarked clips are tests/watermark_attacks.py's, the ones the tests use.
Then: unmarked clips (speech excerpts at 16-44.1 kHz, white/brown noise, noisy speech, speech marked with other
keys, silence), the WSR, and speed in x real time for embed and detect on one CPU core (torch.set_num_threads(1)).
Goals: >= 99% detection and 0 bit errors after each attack; WSR < -30 dB; >= 100x real time; 0 detections on
>= 2000 unmarked clips. Each master rate runs in a fresh child process (one torch thread).

    python -m bench.watermark [--rates 22050 32000 48000] [--excerpts 200] [--unmarked 2000]
"""

from __future__ import annotations

import argparse
import shutil
import time

import numpy as np

from bench._child import in_child
from tests.watermark_attacks import ATTACKS as FILE_ATTACKS
from tests.watermark_attacks import attack, narration, needs_ffmpeg, splice, unmarked_clips

PAYLOAD = 0x4E415252
KEY = "bench watermark key"
EXCERPTS_S = (3.0, 10.0)
SPLICED = "spliced into 20 s of unmarked speech"
SPLICE_HOST_S = 20.0
ATTACKS = (*FILE_ATTACKS, SPLICED)
NARRATION_SENTENCES = 32


def _excerpt_row(pieces: list[np.ndarray], rate_hz: int, layout, cfg) -> dict:
    from models.watermark import PAYLOAD_BITS, decode_payload, payload_soft, search, viterbi

    detected = read = errors = 0
    scores = []
    for piece in pieces:
        ranked, threshold = search(piece, rate_hz, layout, cfg)
        best = ranked[0]
        scores.append(best.z)
        detected += best.z >= threshold
        soft = payload_soft(best, layout, cfg)
        bits = viterbi(soft)[:PAYLOAD_BITS]
        truth = np.array([(PAYLOAD >> (PAYLOAD_BITS - 1 - i)) & 1 for i in range(PAYLOAD_BITS)])
        errors += int(np.sum(bits != truth))
        payload = None
        for candidate in ranked[:cfg.decode_attempts]:  # as detect() does
            if candidate.z < threshold:
                break
            payload = decode_payload(payload_soft(candidate, layout, cfg))
            if payload is not None:
                break
        read += payload == PAYLOAD
    n = len(pieces)
    return {"n": n, "detected": detected / n, "read": read / n, "ber": errors / (PAYLOAD_BITS * n),
            "z_p1": float(np.percentile(scores, 1)), "z_median": float(np.median(scores))}


def _robustness(rate_hz: int, excerpts: int, seed: int) -> tuple[list[dict], float]:
    """Rows for every attack and excerpt length at one master rate; and the WSR of the marked master."""
    import torch

    from models.watermark import WatermarkConfig, embed, key_layout

    torch.set_num_threads(1)
    cfg = WatermarkConfig()
    layout = key_layout(KEY, cfg)
    host = narration(0, NARRATION_SENTENCES, rate_hz)
    marked = embed(host, rate_hz, PAYLOAD, KEY, cfg).astype(np.float64)
    wsr = float(10 * np.log10(np.sum((marked - host) ** 2) / np.sum(host ** 2)))
    rng = np.random.default_rng(seed)
    rows = []
    for name in ATTACKS:
        if needs_ffmpeg(name) and shutil.which("ffmpeg") is None:
            continue
        attacked, rate = (marked, rate_hz) if name == SPLICED else attack(name, marked, rate_hz)
        for length_s in EXCERPTS_S:
            size = int(length_s * rate)
            count = excerpts if length_s < 5 else max(1, excerpts // 2)
            pieces = [attacked[s:s + size] for s in rng.integers(0, attacked.size - size, count)]
            if name == SPLICED:
                pieces = _spliced(pieces[:max(1, count // 4)], narration(1, NARRATION_SENTENCES, rate_hz), rate_hz, rng)
            rows.append({"rate": rate_hz, "attack": name, "excerpt_s": length_s,
                         **_excerpt_row(pieces, rate, layout, cfg)})
    return rows, wsr


def _spliced(pieces: list[np.ndarray], unmarked: np.ndarray, rate_hz: int, rng) -> list[np.ndarray]:
    """Each piece inserted at a random sample into a random SPLICE_HOST_S stretch of unmarked speech."""
    size = int(SPLICE_HOST_S * rate_hz)
    out = []
    for piece in pieces:
        start = int(rng.integers(0, unmarked.size - size))
        host = unmarked[start:start + size]
        out.append(splice(piece, host, int(rng.integers(0, size))))
    return out


def _unmarked(count: int, seed: int) -> dict:
    """Detections among `count` unmarked clips of 3-12 s (tests.watermark_attacks.unmarked_clips)."""
    import torch

    from models.watermark import detect

    torch.set_num_threads(1)
    detections, scores, started = 0, [], time.perf_counter()
    for clip, rate in unmarked_clips(count, seed, first_sentence=8, sentences=16):
        found = detect(clip, rate, KEY)
        detections += found.detected
        scores.append(found.score)
    return {"clips": count, "detections": detections, "max_score": float(np.max(scores)),
            "median_score": float(np.median(scores)), "seconds": time.perf_counter() - started}


def _speed(rate_hz: int) -> dict:
    """x real time of embed and detect on one core: 10 s clips and the whole narration (about 2 min)."""
    import torch

    from models.watermark import detect, embed

    torch.set_num_threads(1)
    host = narration(0, NARRATION_SENTENCES, rate_hz)
    clip = host[:10 * rate_hz]
    result = {"rate": rate_hz}
    for name, audio in (("10 s", clip), ("whole", host)):
        duration_s = audio.size / rate_hz
        embed(audio, rate_hz, PAYLOAD, KEY)  # warm up
        timings = {"embed": [], "detect": []}
        marked = None
        for _ in range(3):
            started = time.perf_counter()
            marked = embed(audio, rate_hz, PAYLOAD, KEY)
            timings["embed"].append(time.perf_counter() - started)
            started = time.perf_counter()
            detect(marked, rate_hz, KEY)
            timings["detect"].append(time.perf_counter() - started)
        result[name] = {"duration_s": duration_s, **{k: duration_s / min(v) for k, v in timings.items()}}
    return result


def table(rows: list[dict]) -> str:
    lines = ["| master | attack | excerpt | n | detected | payload read | BER | z p1 | z median |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['rate'] / 1000:g} kHz | {r['attack']} | {r['excerpt_s']:g} s | {r['n']} | "
                     f"{100 * r['detected']:.1f}% | {100 * r['read']:.1f}% | {r['ber']:.4f} | {r['z_p1']:.1f} | "
                     f"{r['z_median']:.1f} |")
    return "\n".join(lines)


def speed_table(speeds: list[dict]) -> str:
    lines = ["| master | audio | embed x real time | detect x real time |", "|---|---|---:|---:|"]
    for s in speeds:
        for name in ("10 s", "whole"):
            m = s[name]
            lines.append(f"| {s['rate'] / 1000:g} kHz | {name} ({m['duration_s']:.0f} s) | {m['embed']:.0f}x | "
                         f"{m['detect']:.0f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", type=int, nargs="+", default=[22050, 32000, 48000],
                        help="master sample rates (default 22050 32000 48000)")
    parser.add_argument("--excerpts", type=int, default=200, help="3 s excerpts per attack (10 s: half as many)")
    parser.add_argument("--unmarked", type=int, default=2000, help="unmarked clips for the false-alarm count")
    args = parser.parse_args()
    print(f"watermark benchmark: espeak-ng narration, {args.excerpts} excerpts of 3 s and {args.excerpts // 2} of "
          "10 s per attack, one torch thread")
    rows, wsrs = [], {}
    for i, rate in enumerate(args.rates):
        part, wsrs[rate] = in_child(_robustness, rate, args.excerpts, i)
        rows += part
    print(table(rows))
    print("\nWSR of the marked narration: " + ", ".join(f"{wsr:.1f} dB at {r / 1000:g} kHz" for r, wsr in wsrs.items()))
    fp = in_child(_unmarked, args.unmarked, 11)
    print(f"unmarked clips: {fp['detections']} detections in {fp['clips']} (3-12 s; speech at 16/22.05/44.1 kHz, "
          f"white and brown noise, noisy speech, speech marked with other keys, silence); max score {fp['max_score']:.2f}, "
          f"median {fp['median_score']:.2f}")
    print()
    print(speed_table([in_child(_speed, rate) for rate in (16000, 48000)]))


if __name__ == "__main__":
    main()
