"""What the compatible APIs cost over the service's own route: the same text, voice and seed through POST /v1/speech,
the OpenAI-compatible POST /v1/audio/speech and the ElevenLabs-compatible POST /elevenlabs/v1/text-to-speech/VOICE,
requests alternating A B C A B C, median latency of each and its ratio to /v1/speech.

Two rows per route: `whole` (24 kHz WAV of a seeded text: after the first request the synthesis comes from the
service's result cache, so the latency is the route's own work: parse, authorise, encode, audit, answer) and
`streamed` (the streaming variants: /v1/speech/stream, stream_format "audio", .../stream, which synthesize every
time, so the latency is a whole synthesis). Over loopback with raw HTTP (no client library's own time). Without
`--url` it builds two tiny voices (tests/deployment.py) and starts `bentoml serve` for the run.

    python -m bench.compat_overhead [--rounds 30] [--stream-rounds 5]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path

import httpx

TEXT = "The old clock in the hallway chimed seven times."
SEED = 11
RATE_HZ = 24000


def routes(voice: str, streamed: bool) -> list[tuple[str, str, dict, dict]]:
    """(label, path, query, body) for the three routes, the same words and audio."""
    own = {"voice": voice, "text": TEXT, "seed": SEED, "format": "wav", "sample_rate_hz": RATE_HZ}
    openai = {"model": "tts-1", "voice": voice, "input": TEXT, "response_format": "wav", "seed": SEED}
    elevenlabs = {"text": TEXT, "seed": SEED}
    if streamed:
        openai["stream_format"] = "audio"
    suffix = "/stream" if streamed else ""
    return [(f"/v1/speech{suffix}", f"/v1/speech{suffix}", {}, own),
            ("/v1/audio/speech" + (" (stream_format audio)" if streamed else ""), "/v1/audio/speech", {}, openai),
            (f"/elevenlabs/v1/text-to-speech/{{voice}}{suffix}", f"/elevenlabs/v1/text-to-speech/{voice}{suffix}",
             {"output_format": f"wav_{RATE_HZ}"}, elevenlabs)]


def measure(url: str, key: str, voice: str, streamed: bool, rounds: int) -> list[tuple[str, list[float], int]]:
    """Latency of each route over `rounds` rounds of A B C (after one unmeasured round), and bytes answered."""
    table = routes(voice, streamed)
    latencies: dict[str, list[float]] = {label: [] for label, *_ in table}
    sizes: dict[str, int] = {}
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(timeout=600) as client:
        for round_ in range(rounds + 1):
            for label, path, query, body in table:
                started = time.perf_counter()
                with client.stream("POST", url + path, params=query, json=body, headers=headers) as response:
                    data = b"".join(response.iter_raw())
                    if response.status_code != 200:
                        raise SystemExit(f"{path}: {response.status_code} {data[:300]!r}")
                if round_:  # the first round loads the voice and fills the cache
                    latencies[label].append(time.perf_counter() - started)
                sizes[label] = len(data)
    return [(label, latencies[label], sizes[label]) for label, *_ in table]


def format_table(rows: dict[str, list[tuple[str, list[float], int]]]) -> str:
    lines = ["| mode | route | requests | median ms | p90 ms | vs /v1/speech | bytes |",
             "|---|---|---|---|---|---|---|"]
    for mode, measured in rows.items():
        base = statistics.median(measured[0][1])
        for label, values, size in measured:
            median = statistics.median(values)
            p90 = sorted(values)[min(len(values) - 1, int(0.9 * len(values)))]
            lines.append(f"| {mode} | `{label}` | {len(values)} | {median * 1000:.1f} | {p90 * 1000:.1f} | "
                         f"{median / base:.3f}x | {size} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="rounds of A B C for whole files")
    parser.add_argument("--stream-rounds", type=int, default=5, help="rounds of A B C for streams (each synthesizes)")
    parser.add_argument("--url", help="a running service (else one is started here)")
    parser.add_argument("--key", help="API key for --url")
    parser.add_argument("--voice", help="voice for --url")
    args = parser.parse_args(argv)
    process = None
    with tempfile.TemporaryDirectory() as tmp:
        if args.url:
            if not (args.key and args.voice):
                parser.error("--url needs --key and --voice")
            url, key, voice = args.url.rstrip("/"), args.key, args.voice
        else:
            from bench.serve_load import _start_local

            process, url, targets = _start_local(Path(tmp))
            key, voice = targets[0]
        try:
            rows = {"whole": measure(url, key, voice, False, args.rounds),
                    "streamed": measure(url, key, voice, True, args.stream_rounds)}
        finally:
            if process is not None:  # the service and its workers
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=15)
    print(f"loopback, voice {voice}, {TEXT!r} seed {SEED}, {RATE_HZ} Hz WAV; requests alternate A B C; "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
