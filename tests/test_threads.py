"""narrator/threads.py: how torch's idle OpenMP workers wait is bounded before torch loads, unless the user said."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from narrator.threads import (
    DEFAULT_SPIN_COUNT,
    SPIN_COUNT_ENV,
    WAIT_POLICY_ENV,
    configure_waiting,
)

REPO = Path(__file__).resolve().parents[1]


def test_the_spin_count_is_bounded_when_the_environment_says_nothing(monkeypatch):
    monkeypatch.delenv(SPIN_COUNT_ENV, raising=False)
    monkeypatch.delenv(WAIT_POLICY_ENV, raising=False)
    configure_waiting()
    assert os.environ[SPIN_COUNT_ENV] == DEFAULT_SPIN_COUNT


def test_the_users_own_wait_policy_or_spin_count_wins(monkeypatch):
    monkeypatch.delenv(SPIN_COUNT_ENV, raising=False)
    monkeypatch.setenv(WAIT_POLICY_ENV, "ACTIVE")
    configure_waiting()
    assert SPIN_COUNT_ENV not in os.environ
    monkeypatch.delenv(WAIT_POLICY_ENV)
    monkeypatch.setenv(SPIN_COUNT_ENV, "50")
    configure_waiting()
    assert os.environ[SPIN_COUNT_ENV] == "50"


def test_it_reports_when_torch_was_loaded_too_early_for_the_setting_to_count():
    import torch  # noqa: F401  (loaded: libgomp has read its environment)

    assert configure_waiting() is False


def test_the_narrator_command_sets_it_before_torch_loads():
    env = {k: v for k, v in os.environ.items() if k not in (SPIN_COUNT_ENV, WAIT_POLICY_ENV)}
    code = "import sys, os, cli.main; print('torch' in sys.modules, os.environ.get('GOMP_SPINCOUNT'))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.stdout.split() == ["False", DEFAULT_SPIN_COUNT]


def _run(governor, step_seconds, steps: int) -> list[int]:
    """Drive a governor for `steps` steps whose time is `step_seconds(threads, step)`; returns the counts used."""
    used = []
    for i in range(steps):
        n = governor.threads()
        used.append(n)
        governor.record(n, step_seconds(n, i))
    return used


def test_the_governor_keeps_every_thread_while_they_are_faster():
    from narrator.threads import ThreadGovernor

    used = _run(ThreadGovernor(2, first_probe=8, period=48, probe=3), lambda n, i: 0.0045 if n == 2 else 0.007, 200)
    assert used[:8] == [2] * 8 and used[8:11] == [1, 1, 1]  # the first probe
    assert used.count(1) == 3 * 4  # only the probes ran on one thread (steps 8, 59, 110, 161)
    assert used[-1] == 2


def test_the_governor_drops_to_one_thread_when_the_machine_is_shared_and_returns_when_it_is_quiet():
    from narrator.threads import ThreadGovernor

    def seconds(n: int, i: int) -> float:
        busy = i < 120  # another process holds a core for the first 120 steps
        return (0.010 if n == 2 else 0.007) if busy else (0.0045 if n == 2 else 0.007)

    governor = ThreadGovernor(2, first_probe=8, period=48, probe=3)
    used = _run(governor, seconds, 240)
    assert used[11:59] == [1] * 48  # after the first probe: one thread
    assert used[59:62] == [2, 2, 2]  # probes of both threads while it is busy...
    assert used[62:110] == [1] * 48  # ...keep one
    assert used[-1] == 2 and governor.current == 2  # quiet again: every thread


def test_a_governor_of_one_thread_never_probes():
    from narrator.threads import ThreadGovernor

    assert set(_run(ThreadGovernor(1), lambda n, i: 0.01, 100)) == {1}


def test_one_slow_step_before_a_probe_does_not_send_the_governor_to_one_thread():
    from narrator.threads import ThreadGovernor

    used = _run(ThreadGovernor(2, first_probe=8, period=48, probe=3),
                lambda n, i: 0.030 if i == 7 else (0.0045 if n == 2 else 0.007), 60)
    assert used[11:59] == [2] * 48  # until the next probe
