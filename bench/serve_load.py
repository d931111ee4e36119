"""Load on the speech service over loopback: requests per second, latency and time to first audio under
concurrent clients, against one client asking sequentially (the baseline).

Each client streams `POST /v1/speech/stream` (wav) for one short sentence with its own API key's voice, over
and over until the phase's time is up; time to first audio is when the first body chunk arrives. Phases: 1
client (baseline), then `--clients` clients, each for `--seconds`, at most `--max-requests` requests per phase.
Without `--url` it builds two tiny voices in two tenants (tests/deployment.py) and starts `bentoml serve` on a free
port for the run; with `--url URL --key KEY --voice VOICE` it loads a running service instead.

    python -m bench.serve_load [--clients 4] [--seconds 10] [--max-requests 200]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

TEXT = "The old clock in the hallway chimed seven times."
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Phase:
    clients: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    first_audio: list[float] = field(default_factory=list)
    errors: int = 0

    @property
    def requests(self) -> int:
        return len(self.latencies) + self.errors

    @property
    def rps(self) -> float:
        return len(self.latencies) / max(self.seconds, 1e-9)


def _one(client: httpx.Client, url: str, key: str, voice: str, phase: Phase, lock: threading.Lock) -> None:
    started = time.perf_counter()
    first = None
    try:
        with client.stream("POST", f"{url}/v1/speech/stream", headers={"Authorization": f"Bearer {key}"},
                           json={"voice": voice, "text": TEXT, "format": "wav"}) as response:
            if response.status_code != 200:
                raise httpx.HTTPStatusError("status", request=response.request, response=response)
            for _ in response.iter_raw():
                if first is None:
                    first = time.perf_counter() - started
    except httpx.HTTPError:
        with lock:
            phase.errors += 1
        return
    with lock:
        phase.latencies.append(time.perf_counter() - started)
        phase.first_audio.append(first if first is not None else float("nan"))


def run_phase(url: str, targets: list[tuple[str, str]], clients: int, seconds: float, max_requests: int) -> Phase:
    """`clients` threads, client i using targets[i % len(targets)] = (key, voice), for `seconds`."""
    phase, lock = Phase(clients), threading.Lock()
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()

    def client_loop(index: int) -> None:
        key, voice = targets[index % len(targets)]
        with httpx.Client(timeout=120) as client:
            while time.perf_counter() < deadline:
                with lock:
                    if phase.requests >= max_requests:
                        return
                _one(client, url, key, voice, phase, lock)

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    phase.seconds = time.perf_counter() - started
    return phase


def table(phases: list[Phase]) -> str:
    def pct(values: list[float], q: float) -> str:
        return f"{np.percentile(values, q) * 1000:.0f}" if values else "-"

    base = phases[0].rps or 1e-9
    lines = ["| clients | requests | req/s | vs 1 client | p50 latency ms | p99 latency ms | p50 first audio ms | "
             "p99 first audio ms | errors |", "|---|---|---|---|---|---|---|---|---|"]
    for p in phases:
        lines.append(f"| {p.clients} | {p.requests} | {p.rps:.2f} | {p.rps / base:.2f}x | {pct(p.latencies, 50)} | "
                     f"{pct(p.latencies, 99)} | {pct(p.first_audio, 50)} | {pct(p.first_audio, 99)} | {p.errors} |")
    return "\n".join(lines)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_local(work: Path) -> tuple[subprocess.Popen, str, list[tuple[str, str]]]:
    from tests.deployment import build_small_deployment

    deployment = build_small_deployment(work, {"serving": {"rate_limit_per_minute": 100000,
                                                           "rate_limit_burst": 1000}})
    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", "serving.service:NarratorService",
                                "--host", "127.0.0.1", "--port", str(port), "--working-dir", str(REPO_ROOT)],
                               cwd=REPO_ROOT, env=deployment.env(port), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
    else:
        os.killpg(process.pid, signal.SIGTERM)
        raise SystemExit("the service did not become ready in 90 s")
    targets = [(deployment.keys[deployment.tenants[v]], v) for v in sorted(deployment.tenants)]
    return process, url, targets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--max-requests", type=int, default=200, help="per phase")
    parser.add_argument("--url", help="a running service (else one is started here)")
    parser.add_argument("--key", help="API key for --url")
    parser.add_argument("--voice", help="voice for --url")
    args = parser.parse_args(argv)
    process = None
    with tempfile.TemporaryDirectory() as tmp:
        if args.url:
            if not (args.key and args.voice):
                parser.error("--url needs --key and --voice")
            url, targets = args.url.rstrip("/"), [(args.key, args.voice)]
        else:
            process, url, targets = _start_local(Path(tmp))
        try:
            for key, voice in targets:  # load every voice before timing
                with httpx.Client(timeout=120) as client:
                    _one(client, url, key, voice, Phase(1), threading.Lock())
            phases = [run_phase(url, targets, 1, args.seconds, args.max_requests),
                      run_phase(url, targets, args.clients, args.seconds, args.max_requests)]
        finally:
            if process is not None:  # the service and its workers
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=15)
    print(f"loopback, {len(targets)} voice(s), one sentence streamed as wav per request, {args.seconds:g} s per "
          "phase")
    print(table(phases))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
