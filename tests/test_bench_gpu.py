"""bench/gpu.sh: the one-call GPU benchmark runs end to end in its CPU fallback (tiny models, a few steps) and prints
the machine and every row of its table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROWS = ("GPT tokens/s", "SoVITS RTF", "sentence RTF", "time to first audio", "fine-tuning steps/s")


def test_bench_gpu_sh_prints_the_machine_and_every_row_in_its_small_fallback():
    env = {**os.environ, "NARRATOR_BENCH_SMALL": "1", "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": "",
           "BENCH_GPU_TIMEOUT_S": "240"}
    done = subprocess.run(["bash", "bench/gpu.sh", "--threads", "2"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    for key in ("device: CPU", "torch: ", "date: ", "load average: "):
        assert any(line.startswith(key) for line in lines), key
    table = [line.split(" | ") for line in lines if line.startswith("| ") and not line.startswith("| figure")]
    figures = {cells[0].removeprefix("| ") for cells in table}
    assert figures == set(ROWS)
    for streams in (1, 8, 32):
        assert any(f"{streams} streams" in cells[1] for cells in table)
    assert all(float(cells[2]) > 0 for cells in table)  # every figure was measured


def test_a_row_that_raises_is_printed_as_failed_and_the_other_rows_are_still_measured(monkeypatch):
    import torch

    import bench.gpu as gpu

    def broken(*args, **kwargs):
        raise RuntimeError("no kernel image for this device")

    monkeypatch.setattr(gpu, "sovits_rtf", broken)
    printed: list[str] = []
    failed: list = []
    rows = gpu.run(True, torch.device("cpu"), print_row=lambda line, **kw: printed.append(line), failed=failed)
    assert [(figure, setting) for figure, setting, _ in failed] == [
        ("SoVITS RTF", "fp32, 1 s audio"), ("SoVITS RTF", "bf16, 1 s audio")]
    assert sum("failed: RuntimeError: no kernel image for this device" in line for line in printed) == 2
    assert {figure for figure, *_ in rows} == set(ROWS) - {"SoVITS RTF"}
