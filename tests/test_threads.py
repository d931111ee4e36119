"""narrator/threads.py: how torch's idle OpenMP workers wait is bounded before torch loads, unless the user said."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from narrator.threads import DEFAULT_SPIN_COUNT, SPIN_COUNT_ENV, WAIT_POLICY_ENV, configure_waiting

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
