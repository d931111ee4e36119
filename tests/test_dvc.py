"""The DVC front: `dvc repro` runs the same steps and re-runs only what a change touches."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.intake import make_narrator


def _run(cmd: list[str], cwd: Path) -> str:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dvc")
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO_ROOT / name, root / name)
    shutil.copytree(REPO_ROOT / "components", root / "components")
    make_narrator(root / "data" / "narrator")
    _run(["git", "init", "-q"], root)
    _run([sys.executable, "-m", "dvc", "init", "-q"], root)
    _run([sys.executable, "-m", "dvc", "config", "core.analytics", "false"], root)
    _run([sys.executable, "-m", "dvc", "repro", "prepare"], root)  # features onwards need the pretrained models
    return root


def test_repro_runs_validate_then_prepare(project):
    assert (project / "runs" / "validated" / "report.json").exists()
    assert len((project / "runs" / "prepared" / "prepared.list").read_text().splitlines()) == 18
    assert len((project / "runs" / "prepared" / "holdout.list").read_text().splitlines()) == 2


def test_repro_without_changes_runs_nothing(project):
    out = _run([sys.executable, "-m", "dvc", "repro", "prepare"], project)
    assert "didn't change, skipping" in out and "Running stage" not in out


def test_changing_a_prepare_param_reruns_only_prepare(project):
    params = project / "params.yaml"
    params.write_text(params.read_text().replace("target_lufs: -20.0", "target_lufs: -22.0"))
    out = _run([sys.executable, "-m", "dvc", "repro", "prepare"], project)
    assert "Running stage 'prepare'" in out
    assert "Running stage 'validate'" not in out


def test_every_step_is_a_stage_that_runs_its_narrator_command(project):
    import yaml

    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    assert list(stages) == ["validate", "prepare", "features", "finetune_sovits", "finetune_gpt", "evaluate",
                            "watermark_check", "register"]
    for name, stage in stages.items():
        assert stage["cmd"].startswith(f"narrator {name.replace('_', ' ' if name == 'watermark_check' else '-')} ")
    out = _run([sys.executable, "-m", "dvc", "status", "finetune_gpt"], project)
    assert "finetune_gpt" in out or "changed" in out
