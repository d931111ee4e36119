"""Stopping and failing processes (issue 15): `narrator serve` leaves nothing running when a supervisor stops it,
listens on this machine only unless told otherwise, and an internal error shows its traceback under
--log-level debug."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli.main import build_parser, main
from tests.conftest import REPO_ROOT

# A stand-in for `bentoml serve`: a main process that starts a worker and waits, as the service does.
_SERVER = """
import subprocess, sys, time
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
open(sys.argv[1], "w").write(str(worker.pid))
time.sleep(600)
"""
_FRONT = """
import os, sys
from cli.main import _run_forwarding_signals
sys.exit(_run_forwarding_signals([sys.executable, "-c", sys.argv[1], sys.argv[2]], dict(os.environ)))
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "State:\tZ" in status.read_text())  # a zombie is gone in all but name


def _wait_for(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_serve_front_leaves_no_service_process_running(tmp_path, signum):
    pid_file = tmp_path / "worker.pid"
    front = subprocess.Popen([sys.executable, "-c", _FRONT, _SERVER, str(pid_file)], cwd=REPO_ROOT)
    try:
        assert _wait_for(lambda: pid_file.exists() and pid_file.read_text(), 30), "the service did not start"
        worker = int(pid_file.read_text())
        front.send_signal(signum)  # only the front, as a supervisor does: not its process group
        assert front.wait(timeout=30) == 128 + signum
        assert _wait_for(lambda: not _alive(worker), 10), "the service's worker outlived `narrator serve`"
    finally:
        if front.poll() is None:
            front.kill()


def test_serve_listens_on_this_machine_only_by_default():
    assert build_parser().parse_args(["serve"]).host == "127.0.0.1"
    assert build_parser().parse_args(["serve", "--host", "0.0.0.0"]).host == "0.0.0.0"


def test_an_internal_error_shows_its_traceback_under_debug_logging(monkeypatch, capsys):
    import cli.main

    def broken(args):
        raise RuntimeError("something we did not expect")

    monkeypatch.setattr(cli.main, "_cmd_config", broken)
    assert main(["config", "--log-level", "debug"]) == 1
    err = capsys.readouterr().err
    assert "internal error: RuntimeError: something we did not expect" in err
    assert "Traceback (most recent call last)" in err and "in broken" in err


def test_an_internal_error_keeps_its_traceback_out_of_sight_by_default(monkeypatch, capsys):
    import cli.main

    monkeypatch.setattr(cli.main, "_cmd_config", lambda args: 1 / 0)
    assert main(["config"]) == 1
    err = capsys.readouterr().err
    assert "internal error: ZeroDivisionError" in err and "--log-level debug" in err and "Traceback" not in err
