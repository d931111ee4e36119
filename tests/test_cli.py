"""The `narrator` command line: help, exit codes, readable errors."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from cli.main import main
from tests.intake import make_narrator


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=300)


def test_help_lists_every_subcommand():
    result = run("--help")
    assert result.returncode == 0
    for command in ("validate", "prepare", "demo", "config"):
        assert command in result.stdout


def test_validate_help_explains_exit_codes():
    result = run("validate", "--help")
    assert "Exit 0: accepted; 2: dataset refused" in " ".join(result.stdout.split())


@pytest.fixture(scope="module")
def narrator(tmp_path_factory):
    return make_narrator(tmp_path_factory.mktemp("cli") / "narrator")


def test_accepted_dataset_exits_0(narrator, tmp_path):
    result = run("validate", str(narrator), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ACCEPTED")
    assert (tmp_path / "out" / "report.html").exists()


def test_refused_dataset_exits_2_and_says_why(narrator, tmp_path):
    source = tmp_path / "src"
    shutil.copytree(narrator, source)
    (source / "consent.yaml").unlink()
    result = run("validate", str(source), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stdout.startswith("REFUSED")
    assert "consent.yaml" in result.stderr


def test_missing_source_is_a_clear_error_without_traceback(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "no such folder" in err and "Traceback" not in err


def test_bad_param_override_is_a_clear_error(tmp_path, capsys):
    code = main(["validate", str(tmp_path), "--out", str(tmp_path / "o"), "--set", "validate.nope=1"])
    assert code == 1
    assert "unknown key 'validate.nope'" in capsys.readouterr().err


def test_json_logs_are_one_object_per_line(narrator, tmp_path):
    import json

    result = run("validate", str(narrator), "--out", str(tmp_path / "out"), "--log-format", "json")
    records = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert any(r["message"].startswith("verdict accepted") for r in records)
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)


def test_unexpected_failure_exits_1_with_a_bug_report_hint(tmp_path, capsys, monkeypatch):
    import components.validate

    def broken(*args, **kwargs):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(components.validate, "validate", broken)
    assert main(["validate", str(tmp_path), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "internal error: ZeroDivisionError: boom" in err and "--log-level debug" in err


def test_serve_resolves_relative_file_settings_against_the_callers_folder(tmp_path, monkeypatch):
    from cli.main import _absolute_paths

    monkeypatch.chdir(tmp_path)
    data = _absolute_paths({"serving": {"keys_file": "keys.json", "audit_log": "/var/log/a.jsonl"},
                            "registry": {"tracking_uri": "sqlite:///mlflow.db", "audit_log": "audit.jsonl"},
                            "training": {"mlflow_tracking_uri": "http://mlflow:5000"}})
    assert data["serving"]["keys_file"] == str(tmp_path / "keys.json")
    assert data["serving"]["audit_log"] == "/var/log/a.jsonl"
    assert data["registry"]["tracking_uri"] == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert data["training"]["mlflow_tracking_uri"] == "http://mlflow:5000"
