"""params.yaml is read once into typed config; mistakes are named."""

from __future__ import annotations

import pytest
import yaml

from narrator.config import Params, defaults_yaml, load_params, parse_set_option
from narrator.errors import ConfigError
from tests.conftest import REPO_ROOT


def test_repository_params_file_is_valid_and_complete():
    params = load_params(REPO_ROOT / "params.yaml")
    assert params == Params()  # the file spells out every default, so DVC tracks each value


def test_unknown_key_is_named_with_a_suggestion(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("validate:\n  min_clip_secs: 2\n")
    with pytest.raises(ConfigError, match=r"unknown key 'validate.min_clip_secs' \(did you mean 'min_clip_s'\?\)"):
        load_params(path)


def test_unknown_section_is_named(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("validation:\n  min_clip_s: 2\n")
    with pytest.raises(ConfigError, match="unknown key 'validation'.*'validate'"):
        load_params(path)


def test_wrong_type_names_the_key_and_value(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("prepare:\n  sample_rate_hz: fast\n")
    with pytest.raises(ConfigError, match=r"'prepare.sample_rate_hz'.*'fast'"):
        load_params(path)


def test_inconsistent_segment_limits_are_refused():
    with pytest.raises(ConfigError, match="min_segment_s must be smaller than max_segment_s"):
        load_params(None, {"prepare": {"min_segment_s": 12.0}})


def test_set_option_overrides_one_key():
    params = load_params(None, parse_set_option(["validate.min_clip_s=2.5", "prepare.asr_model_dir=/models/w"]))
    assert params.validate_.min_clip_s == 2.5
    assert params.prepare.asr_model_dir == "/models/w"


def test_missing_params_file_says_how_to_fix(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_params(tmp_path / "nope.yaml")


def test_defaults_yaml_round_trips():
    assert Params.model_validate(yaml.safe_load(defaults_yaml())) == Params()


def test_a_bare_gate_threshold_is_a_required_gate():
    gate = load_params(None, {"evaluate": {"gates": {"wer": 0.2}}}).evaluate.gates["wer"]
    assert (gate.threshold, gate.required) == (0.2, True)


def test_a_gate_can_be_made_not_required_from_the_command_line():
    params = load_params(None, parse_set_option(["evaluate.gates.wer.required=false"]))
    assert params.evaluate.gates["wer"].required is False and params.evaluate.gates["wer"].threshold == 0.1


def test_a_gate_whose_required_flag_is_not_a_boolean_is_named(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("evaluate:\n  gates:\n    wer: {threshold: 0.1, required: maybe}\n")
    with pytest.raises(ConfigError, match=r"'evaluate.gates.wer.required': Input should be a valid boolean"):
        load_params(path)


def test_a_misspelt_gate_setting_is_named_with_a_suggestion(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("evaluate:\n  gates:\n    wer: {treshold: 0.1}\n")
    with pytest.raises(ConfigError, match=r"unknown key 'evaluate.gates.wer.treshold' \(did you mean 'threshold'\?\)"):
        load_params(path)
