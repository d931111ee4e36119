"""What runs inside a pipeline step: the `narrator` CLI with the step's own slice of params.yaml.

Each Kubeflow step (pipelines/steps.py) passes its params sections as a YAML string (so the step cache notices a
changed setting of that step, and only of that step, the way DVC's `params:` do), calls the same CLI the DVC
stages call, and turns a non-zero exit into a `StepFailed` whose message is the CLI's own error line.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sys
import tempfile
from pathlib import Path

import yaml

from narrator.config import Params
from narrator.errors import NarratorError

# The params sections each step reads (the same lists as the `params:` of its stage in dvc.yaml, plus storage).
STEP_SECTIONS: dict[str, tuple[str, ...]] = {
    "snapshot": ("storage", "validate"),
    "validate": ("storage", "validate"),
    "prepare": ("storage", "prepare"),
    "features": ("storage", "features", "pretrained"),
    "finetune_sovits": ("storage", "pretrained", "training", "finetune_sovits"),
    "finetune_gpt": ("storage", "pretrained", "training", "finetune_gpt"),
    "evaluate": ("storage", "pretrained", "training", "prepare", "evaluate", "inference"),
    "watermark_check": ("storage", "pretrained", "evaluate", "inference"),
    "register": ("storage", "pretrained", "training", "registry"),
    "package": ("storage", "pretrained", "registry", "package", "inference"),
    "record": ("training", "registry"),
}


class StepFailed(NarratorError):
    """A pipeline step's command failed; the message is the command's own error."""


def step_params_yaml(params: Params, step: str) -> str:
    """The params sections `step` reads, as one line of YAML (JSON, its flow style: the compiled pipeline's header
    comment lists every argument's default, and a multi-line default would break out of it)."""
    data = params.model_dump(by_alias=True, mode="json")
    return json.dumps({name: data[name] for name in STEP_SECTIONS[step]}, sort_keys=True, ensure_ascii=False)


def params_from_yaml(params_yaml: str) -> Params:
    """Params from a step's slice (the other sections keep their defaults; the step does not read them)."""
    from narrator.config import parse_params

    return parse_params(yaml.safe_load(params_yaml) or {}, "step params")


class _Tee(io.TextIOBase):
    """Writes to the real stream and keeps a copy (the step's error line goes into the failure message)."""

    def __init__(self, stream) -> None:
        self.stream, self.copy = stream, io.StringIO()

    def write(self, text: str) -> int:
        self.copy.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()


def run_cli(argv: list[str], params_yaml: str, ok_exit_codes: tuple[int, ...] = (0,)) -> int:
    """`narrator ARGV --params <the step's params>`; returns the exit code, raises StepFailed on any other."""
    from narrator.cli import main

    with tempfile.TemporaryDirectory(prefix="narrator-step-") as tmp:
        params_file = Path(tmp) / "params.yaml"
        params_file.write_text(params_yaml, encoding="utf-8")
        tee = _Tee(sys.stderr)
        with contextlib.redirect_stderr(tee):
            code = main([*argv, "--params", str(params_file)])
    if code not in ok_exit_codes:
        errors = [line for line in tee.copy.getvalue().splitlines() if "error" in line.lower()]
        detail = errors[-1] if errors else f"exit status {code}"
        message = f"`narrator {' '.join(argv[:2] if argv[0] == 'watermark' else argv[:1])}` failed: {detail}"
        error_file = os.environ.get("NARRATOR_STEP_ERROR_FILE")  # set by pipelines.run.run_local
        if error_file:
            Path(error_file).write_text(message + "\n", encoding="utf-8")
        raise StepFailed(message)
    return code


def source_fingerprint(source: str, params: Params) -> str:
    """sha256 over the source's file names, sizes and modification times (local) or ETags (s3://): changes when a
    recording is added, removed or replaced, so the step cache and the retraining schedule notice new data."""
    from narrator import storage

    digest = hashlib.sha256()
    if storage.is_s3(source):
        client = storage.s3_client(params.storage)
        bucket, prefix = storage.split_s3(source)
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                digest.update(f"{obj['Key'][len(prefix):]}\0{obj['Size']}\0{obj['ETag']}\n".encode())
    else:
        root = Path(source).expanduser()
        if not root.is_dir():
            raise StepFailed(f"{source}: no such folder; give the narrator's recordings folder or an s3:// prefix")
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            stat = path.stat()
            digest.update(f"{path.relative_to(root).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def read_json(folder: str, name: str) -> dict:
    return json.loads((Path(folder) / name).read_text(encoding="utf-8"))


def write_json(path: str, data: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=1, default=str), encoding="utf-8")


def environment_summary() -> dict[str, str]:
    """Where a step ran (for the run record): host, image, python."""
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
        mlflow.set_tags({k: str(v)[:5000] for k, v in tags.items()})


def record_gate_failure(voice: str, verdict: dict, params: Params) -> None:
    """A voice failed its quality gates: an MLflow run and an audit record say which gates and why."""
    from components.register import append_audit

    reasons = "; ".join(verdict.get("reasons", [])) or "failed"
    _mlflow_record(params, f"gate-failed-{voice}", {"voice": voice, "verdict": "fail", "reasons": reasons})
    append_audit(params.registry.audit_log, {"event": "gate_failed", "voice": voice, "reasons": reasons,
                                             **environment_summary()})
    print(f"{voice}: the evaluation failed its gates, nothing was registered: {reasons}", file=sys.stderr)


def record_run_status(voice: str, pipeline: str, state: str, error: str | None, job: str, params: Params) -> None:
    """The exit handler's record of a pipeline run: state, error, job name (MLflow run + audit line)."""
    from components.register import append_audit

    details = {"voice": voice, "pipeline": pipeline, "state": state, "error": error or "", "job": job}
    _mlflow_record(params, f"{pipeline}-{state.lower()}", details)
    append_audit(params.registry.audit_log, {"event": "pipeline_run", **details, **environment_summary()})
    print(f"{pipeline} for {voice}: {state}{': ' + error if error else ''}", file=sys.stderr)


def recordings_changed(source: str, voice: str, params: Params) -> bool:
    """True when `source`'s fingerprint differs from the `source_fingerprint` tag of the voice's newest registered
    version (or the voice has none): the retraining schedule's trigger."""
    import mlflow

    from components.register import model_name, registry_client

    client = registry_client(params)
    current = source_fingerprint(source, params)
    try:
        versions = client.search_model_versions(f"name='{model_name(voice, params)}'")
    except mlflow.exceptions.MlflowException:
        return True
    if not versions:
        return True
    newest = max(versions, key=lambda v: int(v.version))
    changed = newest.tags.get("source_fingerprint") != current
    print(f"{voice}: recordings {'changed' if changed else 'unchanged'} since version {newest.version}",
          file=sys.stderr)
    return changed
