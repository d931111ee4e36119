"""The pipelines' records: every run, finished or failed, every voice that failed its quality gates and every
refused dataset leave an MLflow run (tags only, when `training.mlflow_tracking_uri` is set) and a line in the
registry's audit log.

Called by the Kubeflow pipelines' exit handler (`record_run`), their failed-gate branch (`record_gate_failure`)
and their refused-dataset branch (`record_refusal`).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from narrator.config import Params
from narrator.log import get_logger
from narrator.registry import audit_event

log = get_logger("record")

MAX_TAG_CHARS = 5000  # MLflow's tag value limit


@dataclass(frozen=True)
class GateFailure:
    """A voice that failed its quality gates: nothing was registered."""

    voice: str
    reasons: list[str]


def environment_summary() -> dict[str, str]:
    """Where a step ran (for the records): host, image, python."""
    return {"host": os.uname().nodename, "image": os.environ.get("NARRATOR_IMAGE", "local"),
            "python": sys.version.split()[0]}


def _mlflow_record(params: Params, run_name: str, tags: dict[str, str]) -> None:
    """A small MLflow run holding only `tags` (when MLflow tracking is configured)."""
    uri = params.training.mlflow_tracking_uri
    if not uri:
        return
    import mlflow

    from narrator.tracking import use_experiment

    use_experiment(uri, params.training.mlflow_experiment)
    with mlflow.start_run(run_name=run_name):
        mlflow.set_tags({k: str(v)[:MAX_TAG_CHARS] for k, v in tags.items()})


def record_gate_failure(voice: str, reasons: list[str], params: Params) -> GateFailure:
    """A voice failed its quality gates: an MLflow run and an audit record say which gates and why."""
    joined = "; ".join(reasons) or "failed"
    _mlflow_record(params, f"gate-failed-{voice}", {"voice": voice, "verdict": "fail", "reasons": joined})
    audit_event(params, "gate_failed", voice=voice, reasons=joined, **environment_summary())
    log.warning("%s: the evaluation failed its gates, nothing was registered: %s", voice, joined)
    return GateFailure(voice, list(reasons))


def record_refusal(voice: str, reason: str, params: Params) -> None:
    """Validation refused a voice's recordings: an MLflow run and an audit record say why; nothing was trained."""
    _mlflow_record(params, f"refused-{voice}", {"voice": voice, "verdict": "refused", "reasons": reason})
    audit_event(params, "dataset_refused", voice=voice, reasons=reason, **environment_summary())
    log.warning("%s: the recordings were refused, nothing was trained: %s", voice, reason)


def record_run(voice: str, pipeline: str, state: str, error: str | None, job: str, params: Params) -> None:
    """The exit handler's record of a pipeline run: state, error, job name (MLflow run + audit line)."""
    details = {"voice": voice, "pipeline": pipeline, "state": state, "error": error or "", "job": job}
    _mlflow_record(params, f"{pipeline}-{state.lower()}", details)
    audit_event(params, "pipeline_run", **details, **environment_summary())
    log.info("%s for %s: %s%s", pipeline, voice, state, f": {error}" if error else "")
