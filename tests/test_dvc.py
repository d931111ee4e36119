"""The DVC front: dvc.yaml is the step table's (params and code deps), `dvc repro` runs the same steps, and a
change re-runs exactly the stages whose settings or code it touches."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components import STEPS
from tests.conftest import REPO_ROOT
from tests.intake import make_narrator

DOWNSTREAM_OF_FEATURES = {"features", "finetune_sovits", "finetune_gpt", "evaluate", "watermark_check", "register"}


def _run(cmd: list[str], cwd: Path) -> str:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def _dvc(*args: str, cwd: Path) -> str:
    return _run([sys.executable, "-m", "dvc", *args], cwd)


def _stages() -> dict:
    return yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A copy of the project's DVC front (dvc.yaml, params.yaml, .dvc/ and the code its stages depend on) with
    the test narrator in data/narrator, reproduced up to `prepare` (features onwards need pretrained models)."""
    root = tmp_path_factory.mktemp("dvc")
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(REPO_ROOT / name, root / name)
    for folder in (".dvc", "narrator", "models", "components"):
        shutil.copytree(REPO_ROOT / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__", "tmp"))
    make_narrator(root / "data" / "narrator")
    _run(["git", "init", "-q"], root)
    _dvc("repro", "prepare", cwd=root)
    return root


@pytest.fixture(scope="module")
def recorded(project) -> Path:
    """Every stage recorded in dvc.lock as if it had run (validate and prepare did; the later ones get stand-in
    outputs), so `dvc status` reports exactly what a change makes stale."""
    for out in ("runs/features/manifest.json", "runs/sovits/sovits.pth", "runs/sovits/sovits_discriminator.pth",
                "runs/sovits/result.json", "runs/gpt/gpt.ckpt", "runs/gpt/result.json",
                "runs/evaluation/verdict.json", "runs/watermark/watermark.json", "runs/registration.json"):
        (project / out).parent.mkdir(parents=True, exist_ok=True)
        (project / out).write_text("{}\n")
    _dvc("commit", "--force", cwd=project)
    assert "up to date" in _dvc("status", cwd=project)
    return project


def _stale(project: Path) -> set[str]:
    """The stages `dvc status` reports as changed."""
    out = _dvc("status", "--json", cwd=project)
    import json

    return set(json.loads(out[out.index("{"):]))


def test_dvc_yaml_is_what_the_step_table_gives():
    done = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "dvc_stages.py"), "--check"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_stage_reads_its_steps_sections_and_runs_its_narrator_command():
    stages = _stages()
    assert list(stages) == ["validate", "prepare", "features", "finetune_sovits", "finetune_gpt", "evaluate",
                            "watermark_check", "register"]
    for name, stage in stages.items():
        assert stage["params"] == list(STEPS[name].sections), name
        assert stage["cmd"].startswith(f"narrator {name.replace('_', ' ' if name == 'watermark_check' else '-')} ")
        assert f"{STEPS[name].module.replace('.', '/')}.py" in stage["deps"], name


def test_the_watermark_check_flows_into_registration_as_data():
    register = _stages()["register"]
    assert "--watermark runs/watermark" in register["cmd"] and "--tag" not in register["cmd"]
    assert "runs/watermark" in register["deps"]


def test_a_fresh_clone_is_a_dvc_project_without_analytics():
    config = (REPO_ROOT / ".dvc" / "config").read_text()
    assert "analytics = false" in config
    assert "validate" in _dvc("dag", cwd=REPO_ROOT)


def test_repro_runs_validate_then_prepare(project):
    assert (project / "runs" / "validated" / "report.json").exists()
    assert len((project / "runs" / "prepared" / "prepared.list").read_text().splitlines()) == 18
    assert len((project / "runs" / "prepared" / "holdout.list").read_text().splitlines()) == 2


def test_repro_without_changes_runs_nothing(project):
    out = _dvc("repro", "prepare", cwd=project)
    assert "didn't change, skipping" in out and "Running stage" not in out


def test_a_change_in_the_sovits_model_makes_features_and_every_later_stage_stale(recorded):
    sovits = recorded / "models" / "sovits.py"
    original = sovits.read_text()
    sovits.write_text(original + "\n# changed\n")
    try:
        assert _stale(recorded) == DOWNSTREAM_OF_FEATURES
    finally:
        sovits.write_text(original)
    assert _stale(recorded) == set()


def test_a_change_in_registration_code_makes_only_registration_stale(recorded):
    register = recorded / "components" / "register.py"
    original = register.read_text()
    register.write_text(original + "\n# changed\n")
    try:
        assert _stale(recorded) == {"register"}
    finally:
        register.write_text(original)


def test_a_setting_makes_stale_exactly_the_stages_that_read_it(recorded):
    params = recorded / "params.yaml"
    original = params.read_text()
    data = yaml.safe_load(original)
    data["finetune_gpt"]["epochs"] += 1
    params.write_text(yaml.safe_dump(data, sort_keys=False))
    try:
        assert _stale(recorded) == {name for name, step in STEPS.items() if "finetune_gpt" in step.sections
                                    and name in _stages()} == {"finetune_gpt", "register"}
    finally:
        params.write_text(original)
