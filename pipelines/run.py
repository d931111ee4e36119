"""Compile, run and schedule the pipelines: here with kfp's local runner, or on a Kubeflow cluster.

`narrator pipeline compile|run|schedule` and `narrator onboard` are thin fronts over these functions.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from narrator.config import Params
from narrator.errors import NarratorError

PIPELINES = ("onboard", "batch", "retrain")
ERROR_FILE_ENV = "NARRATOR_STEP_ERROR_FILE"  # where a failing step leaves its error for the local runner


class PipelineError(NarratorError):
    """A pipeline cannot be compiled or submitted, or a local run stopped at a failed step."""


def pipeline_function(name: str, params: Params) -> Callable:
    """The pipeline `name` built for `params`."""
    if name not in PIPELINES:
        raise PipelineError(f"unknown pipeline {name!r}; choose one of {', '.join(PIPELINES)}")
    from importlib import import_module

    return import_module(f"pipelines.{name}").build(params)


def compile_pipeline(name: str, params: Params, out: str | Path) -> Path:
    """Write the pipeline's YAML (the IR Kubeflow runs) to `out`."""
    from kfp import compiler

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline_function(name, params), str(out))
    return out


@dataclass
class LocalRun:
    """The outcome of a local run: the package results (one per registered voice) and gate failures."""

    pipeline: str
    seconds: float
    root: str
    packages: list[dict] = field(default_factory=list)
    gate_failures: list[dict] = field(default_factory=list)


def _outputs_since(root: Path, name: str, started: float) -> list[Path]:
    return sorted((p for p in root.rglob(name) if p.stat().st_mtime >= started), key=lambda p: p.stat().st_mtime)


def run_local(name: str, params: Params, arguments: dict) -> LocalRun:
    """Run the pipeline on this machine with kfp's local runner (every step a subprocess of this Python, outputs
    and the step cache under `pipeline.pipeline_root`). A failed step raises PipelineError with its error; the
    next run reuses every step that finished (pipeline.caching)."""
    from kfp import local

    root = Path(params.pipeline.pipeline_root).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    error_file = root / "last-step-error.txt"
    error_file.unlink(missing_ok=True)
    os.environ[ERROR_FILE_ENV] = str(error_file)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root),
               enable_caching=params.pipeline.caching, raise_on_error=True)
    started = time.time()
    pipeline = pipeline_function(name, params)
    try:
        pipeline(**arguments)
    except RuntimeError as error:
        detail = error_file.read_text(encoding="utf-8").strip() if error_file.exists() else str(error)
        raise PipelineError(f"the {name} pipeline stopped: {detail}. Fix it and run the same command again: "
                            "the steps that finished are reused") from None
    finally:
        os.environ.pop(ERROR_FILE_ENV, None)
    result = LocalRun(pipeline=name, seconds=round(time.time() - started, 1), root=str(root))
    result.packages = [json.loads(p.read_text()) for p in _outputs_since(root, "package.json", started)]
    for verdict in _outputs_since(root, "verdict.json", started):
        data = json.loads(verdict.read_text())
        if not data.get("passed"):
            result.gate_failures.append({"evaluation": str(verdict.parent), "reasons": data.get("reasons", [])})
    return result


def _client(host: str | None, params: Params):
    import kfp

    host = host or params.pipeline.kfp_host
    if not host:
        raise PipelineError("no Kubeflow Pipelines host: give --host URL or set pipeline.kfp_host in params.yaml")
    return kfp.Client(host=host)


def submit(name: str, params: Params, arguments: dict, host: str | None = None, experiment: str = "narrator") -> str:
    """Submit one run to a Kubeflow cluster; returns the run id."""
    client = _client(host, params)
    run = client.create_run_from_pipeline_func(pipeline_function(name, params), arguments=arguments,
                                               experiment_name=experiment, enable_caching=params.pipeline.caching)
    return run.run_id


def schedule(name: str, params: Params, arguments: dict, host: str | None = None, cron: str | None = None,
             experiment: str = "narrator", job_name: str | None = None, package_dir: str | Path = ".") -> str:
    """A recurring run on the cluster (`cron`: KFP's six-field cron, default pipeline.retrain_cron); returns its id."""
    client = _client(host, params)
    package = compile_pipeline(name, params, Path(package_dir) / f"{name}.yaml")
    experiment_id = client.create_experiment(experiment).experiment_id
    job = client.create_recurring_run(experiment_id=experiment_id,
                                      job_name=job_name or f"narrator-{name}-{arguments.get('voice', 'all')}",
                                      cron_expression=cron or params.pipeline.retrain_cron,
                                      pipeline_package_path=str(package), params=arguments, max_concurrency=1,
                                      no_catchup=True, enable_caching=params.pipeline.caching)
    return job.recurring_run_id
