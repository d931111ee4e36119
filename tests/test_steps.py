"""The step table (components.STEPS): one core function per step, the settings it reads, and every front derived
from it. A step that reads a section its table entry does not give it fails at once, naming the section."""

from __future__ import annotations

import ast
import inspect
import json
import re
from pathlib import Path

import pytest

from components import LINEAGE_SECTIONS, STEPS, step, step_params, step_settings
from narrator.config import ConfigError, load_params, section_names
from tests.conftest import REPO_ROOT


def test_every_step_names_an_importable_core_function_and_real_sections():
    for name, entry in STEPS.items():
        assert callable(entry.load()), name
        assert entry.sections and set(entry.sections) <= set(section_names()), name
        assert len(set(entry.sections)) == len(entry.sections), name


def test_steps_are_found_by_either_spelling():
    assert step("finetune-gpt") is step("finetune_gpt") is STEPS["finetune_gpt"]
    with pytest.raises(KeyError, match="no step 'train'"):
        step("train")


def test_a_step_reading_a_section_outside_its_slice_fails_naming_it():
    params = step_params(step_settings(load_params(None, {}), "prepare"), "prepare")
    assert params.prepare.target_lufs == -20.0
    with pytest.raises(ConfigError, match=r"step prepare read params\.evaluate\.gates.*add 'evaluate'"):
        params.evaluate.gates


def test_a_slice_carries_the_settings_given_not_the_defaults():
    params = load_params(None, {"prepare": {"target_lufs": -23.0}, "validate": {"min_clip_s": 2.0}})
    sliced = step_params(json.loads(json.dumps(step_settings(params, "validate"))), "validate")
    assert sliced.prepare.target_lufs == -23.0 and sliced.validate_.min_clip_s == 2.0


def _params_reads(path: Path) -> set[str]:
    """The sections a module reads as `params.SECTION` (the CLI-independent way every step takes its settings)."""
    names = re.findall(r"\bparams\.(\w+)", path.read_text(encoding="utf-8"))
    aliases = {"validate_": "validate"}
    return {aliases.get(n, n) for n in names} & set(section_names())


@pytest.mark.parametrize("name", [n for n in STEPS if STEPS[n].module.startswith("components.")])
def test_each_steps_module_reads_only_sections_in_its_table_entry(name):
    module = REPO_ROOT.joinpath(*STEPS[name].module.split(".")).with_suffix(".py")
    reads = _params_reads(module)
    shared = {"register": set(LINEAGE_SECTIONS), "new_recordings": set(STEPS["register"].sections)}
    allowed = set(STEPS[name].sections) | {s for step_name, entry in STEPS.items() if entry.module ==
                                           STEPS[name].module for s in entry.sections}
    assert reads <= allowed | shared.get(name, set()), f"{module.name} reads {sorted(reads - allowed)}"


def test_every_kubeflow_component_runs_a_step_of_the_table_with_its_core_function():
    import pipelines.steps as kfp_steps

    for component in kfp_steps.COMPONENTS:
        if component.__name__ == "summarize":  # collects the others' results; reads no settings
            continue
        source = inspect.getsource(component)
        ran = re.findall(r'running\(f?"([\w{}]+)"', source)
        assert ran, component.__name__
        if ran[0] == "finetune_{kind}":  # the multi-GPU launcher runs either fine-tuning step's command
            assert "run_pytorchjob" in source
            continue
        assert f"from {STEPS[ran[0]].module} import" in source, component.__name__  # the step's core module
        assert "run_cli" not in source and "narrator.cli" not in source


def test_no_front_goes_through_the_command_line_in_process():
    for folder in ("pipelines", "serving", "components", "models", "narrator"):
        for path in (REPO_ROOT / folder).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            assert "run_cli" not in text, path
            tree = ast.parse(text)
            imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
            imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
            assert not any(m == "cli" or m.startswith("cli.") for m in imported), path
