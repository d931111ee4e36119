"""Load on the speech service over loopback: requests per second, latency and time to first audio under
concurrent clients, against one client asking sequentially (the baseline).

Each client streams `POST /v1/speech/stream` (wav) for one short sentence with its own API key's voice, over
and over until the phase's time is up; time to first audio is when the first body chunk arrives. Phases: 1
client (baseline), then `--clients` clients, each for `--seconds`, at most `--max-requests` requests per phase.
Without `--url` it builds two tiny voices in two tenants (tests/deployment.py) and starts `bentoml serve` on a free
port for the run; with `--url URL --key KEY --voice VOICE` it loads a running service instead.

    python -m bench.serve_load [--clients 4] [--seconds 10] [--max-requests 200]

`--soak SECONDS` instead keeps `--clients` clients (16 by default there) streaming for SECONDS without a request
cap and prints the service's resident memory (its worker processes: the service's process tree but the BentoML
supervisor) every `--every` seconds, then the verdict: the peak within `serving.memory_budget_mb` plus
`--overhead-mb` (the runtime around the voices' weights: Python, torch, the shared front models, threads), and
level (the last half of the soak grows less than `--level-share` of the RSS at its middle). With `--url`, give the
worker's pid as `--pid` (and `--budget-mb`).

    python -m bench.serve_load --soak 60 [--clients 16] [--every 5]
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
SOAK_CLIENTS = 16
PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def _children(pid: int) -> list[int]:
    """The process's descendants (Linux /proc)."""
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            found += kids
            frontier += kids
    return found


def rss_mb(pids: list[int]) -> float:
    """Resident memory of these processes together (MB)."""
    total = 0.0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_MB
        except (OSError, IndexError, ValueError):
            continue
    return total


def worker_pids(service_pid: int) -> list[int]:
    """The service's processes that hold voices: its descendants running BentoML's worker (else all of them)."""
    workers = []
    for pid in _children(service_pid):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "_bentoml_impl.worker" in command:
            workers.append(pid)
    return workers or _children(service_pid)


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


def run_phase(url: str, targets: list[tuple[str, str]], clients: int, seconds: float, max_requests: int,
              phase: Phase | None = None) -> Phase:
    """`clients` threads, client i using targets[i % len(targets)] = (key, voice), for `seconds` (into `phase`,
    which others may read as it fills)."""
    phase, lock = phase or Phase(clients), threading.Lock()
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


def _start_local(work: Path, serving: dict | None = None) -> tuple[subprocess.Popen, str, list[tuple[str, str]]]:
    from tests.deployment import build_small_deployment

    deployment = build_small_deployment(work, {"serving": {"rate_limit_per_minute": 100000,
                                                           "rate_limit_burst": 1000, **(serving or {})}})
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


@dataclass
class Soak:
    samples: list[tuple[float, float, int]]  # (seconds since start, worker RSS MB, requests done)
    budget_mb: float
    overhead_mb: float
    level_share: float
    phase: Phase

    @property
    def peak_mb(self) -> float:
        return max(mb for _, mb, _ in self.samples)

    @property
    def growth_share(self) -> float:
        """RSS growth over the last half of the soak, as a share of the RSS at its middle."""
        middle = self.samples[len(self.samples) // 2][1]
        return (self.samples[-1][1] - middle) / max(middle, 1e-9)

    @property
    def within_budget(self) -> bool:
        return self.peak_mb <= self.budget_mb + self.overhead_mb

    @property
    def level(self) -> bool:
        return self.growth_share <= self.level_share

    def report(self) -> str:
        lines = ["| t s | worker RSS MB | requests |", "|---:|---:|---:|"]
        lines += [f"| {t:.0f} | {mb:.0f} | {n} |" for t, mb, n in self.samples]
        lines.append("")
        lines.append(f"peak {self.peak_mb:.0f} MB vs limit {self.budget_mb + self.overhead_mb:.0f} MB "
                     f"(serving.memory_budget_mb {self.budget_mb:g} + overhead {self.overhead_mb:g}): "
                     f"{'WITHIN' if self.within_budget else 'OVER'}; last half grew {self.growth_share * 100:+.1f}% "
                     f"(level: at most {self.level_share * 100:g}%): {'LEVEL' if self.level else 'GROWING'}; "
                     f"{self.phase.requests} requests, {self.phase.errors} errors, {self.phase.rps:.2f} req/s")
        return "\n".join(lines)


def soak(url: str, targets: list[tuple[str, str]], clients: int, seconds: float, every: float, pids: list[int],
         budget_mb: float, overhead_mb: float, level_share: float) -> Soak:
    """`clients` streaming clients for `seconds`, the workers' RSS sampled every `every` seconds."""
    phase = Phase(clients)
    runner = threading.Thread(target=run_phase, args=(url, targets, clients, seconds, 10 ** 9, phase))
    started = time.perf_counter()
    samples = [(0.0, rss_mb(pids), 0)]
    runner.start()
    while runner.is_alive():
        runner.join(timeout=every)
        samples.append((time.perf_counter() - started, rss_mb(pids), phase.requests))
    return Soak(samples, budget_mb, overhead_mb, level_share, phase)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--max-requests", type=int, default=200, help="per phase")
    parser.add_argument("--url", help="a running service (else one is started here)")
    parser.add_argument("--key", help="API key for --url")
    parser.add_argument("--voice", help="voice for --url")
    parser.add_argument("--soak", type=float, metavar="SECONDS", help="sustained load this long, printing RSS")
    parser.add_argument("--every", type=float, default=5.0, help="--soak: seconds between RSS samples")
    parser.add_argument("--pid", type=int, help="--soak with --url: the worker's process id")
    parser.add_argument("--budget-mb", type=float, help="--soak: serving.memory_budget_mb (default: the local "
                                                        "service's)")
    parser.add_argument("--overhead-mb", type=float, default=2048.0,
                        help="--soak: what the worker may hold beyond the voices' budget")
    parser.add_argument("--level-share", type=float, default=0.05,
                        help="--soak: largest RSS growth over the last half that still counts as level")
    parser.add_argument("--arenas", type=int, help="--soak, local service: serving.malloc_arena_max")
    parser.add_argument("--mmap-threshold-kb", type=int,
                        help="--soak, local service: serving.malloc_mmap_threshold_kb")
    args = parser.parse_args(argv)
    if args.soak:
        return _main_soak(args, parser)
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


def _main_soak(args, parser) -> int:
    clients = args.clients if args.clients != 4 else SOAK_CLIENTS
    process = None
    with tempfile.TemporaryDirectory() as tmp:
        if args.url:
            if not (args.key and args.voice and args.pid and args.budget_mb):
                parser.error("--soak with --url needs --key, --voice, --pid and --budget-mb")
            url, targets, pids, budget = args.url.rstrip("/"), [(args.key, args.voice)], [args.pid], args.budget_mb
        else:
            serving = {key: value for key, value in (("malloc_arena_max", args.arenas),
                                                     ("malloc_mmap_threshold_kb", args.mmap_threshold_kb))
                       if value is not None}
            process, url, targets = _start_local(Path(tmp), serving)
            pids = worker_pids(process.pid)
            from narrator.config import load_params

            budget = args.budget_mb or load_params(Path(tmp) / "params.yaml").serving.memory_budget_mb
        try:
            result = soak(url, targets, clients, args.soak, args.every, pids, budget, args.overhead_mb,
                          args.level_share)
        finally:
            if process is not None:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=15)
    print(f"soak: {clients} clients streaming one sentence as wav for {args.soak:g} s, {len(targets)} voice(s), "
          f"RSS of {len(pids)} worker process(es) every {args.every:g} s")
    print(result.report())
    return 0 if result.within_budget and result.level else 1


if __name__ == "__main__":
    raise SystemExit(main())
