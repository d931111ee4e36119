"""bench/versus.py: the side-by-side harness runs end to end on tiny models (our two modes in alternating child
processes, the fast-vs-exact divergence and the contention run), and its goal checks read the ratios right."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.versus import GOALS, goals

REPO = Path(__file__).resolve().parents[1]


def _row(sentence_rtf: float, rss_mb: float = 1000.0, step200: float = 10.0, step1700: float = 11.0) -> dict:
    return {"sentence_rtf": sentence_rtf, "peak_rss_mb": rss_mb, "ms_per_token@200": step200,
            "ms_per_token@1700": step1700}


def test_versus_small_prints_both_modes_the_divergence_and_the_contention_ratio(tmp_path):
    done = subprocess.run([sys.executable, "-m", "bench.versus", "--small", "--tokens", "8", "--rounds", "1",
                           "--repeats", "1", "--contention", "--competitors", "2", "--workload", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "| metric | exact | fast |" in out
    for label in ("GPT ms/token @200", "GPT CPU ms/token", "SoVITS RTF", "sentence RTF", "peak RSS MB"):
        assert f"| {label} |" in out and f"| {label}, vs exact |" in out
    assert "fast vs exact: teacher-forced logits" in out and "MCD" in out
    assert out.count("CPU ms/token") >= 3 and "under contention" in out
    assert (tmp_path / "gpt.ckpt").exists() and (tmp_path / "inputs.pt").exists()  # reusable workload


def test_goals_compare_per_sentence_speed_with_the_official_code_and_the_fastest_peer():
    summary = {"official": _row(1.0, rss_mb=1500), "peer-a": _row(0.9), "peer-b": _row(1.2),
               "exact": _row(0.6, rss_mb=1400), "fast": _row(0.25, rss_mb=1200, step1700=13.0)}
    lines = goals(summary, ["peer-a", "peer-b"])
    assert f"met  fast per sentence vs official: 4.00x (goal >= {GOALS['fast_vs_official']}x)" in lines
    assert f"met  exact per sentence vs official: 1.67x (goal >= {GOALS['exact_vs_official']}x)" in lines
    assert f"met  fast vs fastest peer (peer-a): 3.60x (goal >= {GOALS['fast_vs_best_peer']}x)" in lines
    assert "MISS fast GPT step cost at 1700 / at 200: 1.30x (goal <= 1.2x)" in lines
    assert any(line.startswith("met  peak RSS exact vs official") for line in lines)
