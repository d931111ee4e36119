"""The pipeline steps: one module per step, each a core function with typed inputs and a typed result.

`STEPS` below is the one table of them: for each step its core function and the params.yaml sections it reads.
Every front derives what it needs from it, so the three can never disagree:

- the `narrator` command line (`cli/`) calls the core functions;
- the Kubeflow components (`pipelines/steps.py`) call the same functions, each with only its own sections of
  params.yaml as an argument (`step_settings`), so KFP's step cache re-runs a step only when one of *its*
  settings changed; a step given a slice without a section it reads fails at once, naming the section;
- `dvc.yaml`'s `params:` are these sections and its `deps:` the code each function can import (written by
  `python -m scripts.dvc_stages`, checked by tests/test_dvc.py), so a change in `models/sovits.py` re-runs the
  features and every stage after them, and a change in `components/register.py` re-runs registration only.

This package imports no front (`cli`, `pipelines`, `serving`); `.importlinter` holds the rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import Any, Callable

# The sections that shape a voice: registration records their sha256 (params_sha256) and keeps them as the
# register run's params.yaml, so two versions trained the same way show the same hash.
LINEAGE_SECTIONS = ("validate", "prepare", "pretrained", "features", "training", "finetune_gpt", "finetune_sovits",
                    "evaluate", "inference")


@dataclass(frozen=True)
class Step:
    """One pipeline step: its name (the DVC stage; KFP tasks use it with dashes), its core function
    ("module:function"), the params.yaml sections the function reads, and what it does."""

    name: str
    function: str
    sections: tuple[str, ...]
    summary: str

    @property
    def module(self) -> str:
        return self.function.partition(":")[0]

    def load(self) -> Callable[..., Any]:
        """The core function (its module is imported now, not when the table is read)."""
        module, _, name = self.function.partition(":")
        return getattr(import_module(module), name)


def _step(name: str, function: str, sections: tuple[str, ...], summary: str) -> tuple[str, Step]:
    return name, Step(name, function, sections, summary)


STEPS: dict[str, Step] = dict([
    _step("snapshot", "narrator.storage:source_fingerprint", ("storage",),
          "fingerprint the source recordings (names, sizes, dates or ETags)"),
    _step("new_recordings", "components.register:recordings_changed", ("storage", "registry"),
          "have the recordings changed since the voice's newest version? (scheduled retraining)"),
    _step("validate", "components.validate:validate", ("storage", "validate", "prepare"),
          "check recordings, transcripts and consent; quarantine rejected clips"),
    _step("prepare", "components.prepare:prepare", ("prepare",),
          "trim, cut and normalise accepted clips into 32 kHz and 16 kHz training audio"),
    _step("features", "components.features:extract_features", ("storage", "features", "pretrained"),
          "phones, BERT, HuBERT, semantic tokens and spectrograms per segment; the voice fingerprint"),
    _step("finetune_sovits", "components.finetune_sovits:finetune_sovits",
          ("storage", "pretrained", "training", "finetune_sovits"), "fine-tune the SoVITS synthesizer"),
    _step("finetune_gpt", "components.finetune_gpt:finetune_gpt",
          ("storage", "pretrained", "training", "finetune_gpt"), "fine-tune the text-to-semantic GPT"),
    _step("evaluate", "components.evaluate:evaluate",
          ("storage", "pretrained", "inference", "evaluate", "training", "prepare"),
          "speak held-out and fixed sentences; measure; apply the quality gates"),
    _step("watermark_check", "components.watermark:check_voice", ("storage", "pretrained", "inference", "evaluate"),
          "the voice's marked output gives the mark and the payload back"),
    _step("register", "components.register:register",
          tuple(dict.fromkeys(("storage", "registry", *LINEAGE_SECTIONS))),
          "a new version in the registry with its lineage; promotion by the registry's rules"),
    _step("package", "components.package:package", ("storage", "pretrained", "inference", "registry", "package"),
          "bundle the version, speak a watermarked sample, store the bundle"),
    _step("record", "components.record:record_run", ("training", "registry"),
          "record a pipeline run or a failed gate in MLflow and the audit log"),
    _step("narrate", "components.narrate:narrate", ("storage", "pretrained", "inference", "registry", "package",
                                                     "narrate", "mastering"),
          "narrate a manuscript with a registered voice: guarded, watermarked, mastered chapters and the book"),
])


def step(name: str) -> Step:
    """The step called `name` (underscores or dashes)."""
    key = name.replace("-", "_")
    if key not in STEPS:
        raise KeyError(f"no step {name!r}; the steps are {', '.join(STEPS)}")
    return STEPS[key]


def step_settings(params, name: str) -> dict[str, Any]:
    """The settings step `name` reads: its sections of `params`, as plain data."""
    from narrator.config import params_slice

    return params_slice(params, step(name).sections)


def step_params(settings: dict[str, Any], name: str):
    """Params for step `name` from its settings (as `step_settings` gave them): the other sections refuse to be
    read, so a section missing from the table fails loudly."""
    from narrator.config import params_from_slice

    return params_from_slice(settings, f"step {name}")
