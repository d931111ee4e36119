"""Compile, run and schedule the pipelines: here with kfp's local runner, or on a Kubeflow cluster.

`narrator pipeline compile|run|schedule` and `narrator onboard` are thin fronts over these functions.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from narrator.config import Params
from narrator.errors import NarratorError
from pipelines.runtime import ERROR_FILE_ENV

PIPELINES = ("onboard", "batch", "retrain", "narrate")


class PipelineError(NarratorError):
    """A pipeline cannot be compiled or submitted, or a local run stopped at a failed step."""


def pipeline_function(name: str, params: Params) -> Callable:
    """The pipeline `name` built for `params`."""
    if name not in PIPELINES:
        raise PipelineError(f"unknown pipeline {name!r}; choose one of {', '.join(PIPELINES)}")
    from importlib import import_module

    return import_module(f"pipelines.{name}").build(params)


def step_arguments(name: str, params: Params) -> dict[str, str]:
    """The `params_<step>` arguments of pipeline `name`: each step's settings from `params`."""
    from pipelines.onboard import settings_arguments
    from pipelines.retrain import STEPS as RETRAIN_STEPS

    if name == "narrate":
        from pipelines.narrate import settings_arguments as narrate_arguments

        return narrate_arguments(params)
    return settings_arguments(params, RETRAIN_STEPS) if name == "retrain" else settings_arguments(params)


def compile_pipeline(name: str, params: Params, out: str | Path) -> Path:
    """Write the pipeline's YAML (the IR Kubeflow runs, then its Kubernetes settings: secrets, pull secret) to
    `out`. The YAML is for a cluster, so pipeline.image must name a registry."""
    from kfp import compiler

    from pipelines.cluster import check_image

    check_image(params.pipeline)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline_function(name, params), str(out))
    return out


@dataclass
class LocalRun:
    """The outcome of a local run: the package results (one per registered voice), gate failures, refused
    datasets and (batch) the summary."""

    pipeline: str
    seconds: float
    root: str
    packages: list[dict] = field(default_factory=list)
    gate_failures: list[dict] = field(default_factory=list)
    refusals: list[dict] = field(default_factory=list)  # datasets validation refused: {"voice", "reasons"}
    summary: list[dict] | None = None  # the batch pipeline's: one row per narrator
    log: str | None = None  # the run's full log (kfp and every step) when it was not streamed


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_TASK_START = re.compile(r"Executing task '([^']+)'")
_TASK_END = re.compile(r"Task '([^']+)' finished with status (\w+)")
_TASK_CACHED = re.compile(r"Task (\S+) cache hit")
_TASK_SKIPPED = re.compile(r"Skipping (?:conditional )?task (\S+)")
_INTERNAL_TASKS = ("condition-", "exit-handler-", "for-loop-")  # kfp's names for the DAG's own groups


class _StepProgress:
    """Turns kfp's local-runner log lines into one line per step: `  validate   SUCCESS   3.2 s`, `cached` for a
    step the cache answered, `skipped` for one its condition left out. On a terminal the running step shows too."""

    def __init__(self) -> None:
        self.write: Callable[[str], None] = lambda text: None  # set to the terminal by _output_to_log
        self.interactive = False
        self.started: dict[str, float] = {}

    def feed(self, line: str) -> None:
        line = _ANSI.sub("", line)
        if start := _TASK_START.search(line):
            self.started[start.group(1)] = time.monotonic()
            if self.interactive:
                self.write(f"  {start.group(1)} ...\r")
        elif end := _TASK_END.search(line):
            task, status = end.groups()
            took = time.monotonic() - self.started.pop(task, time.monotonic())
            self.write(f"  {task:<24} {status:<8} {took:7.1f} s\n")
        elif cached := _TASK_CACHED.search(line):
            self.write(f"  {cached.group(1):<24} cached\n")
        elif (skipped := _TASK_SKIPPED.search(line)) and not skipped.group(1).startswith(_INTERNAL_TASKS):
            self.write(f"  {skipped.group(1):<24} skipped\n")


@contextmanager
def _output_to_log(log_path: Path, progress: _StepProgress) -> Iterator[None]:
    """Send this process's stdout and stderr (file descriptors 1 and 2 and `sys.stdout`/`sys.stderr`, so also
    every step subprocess and kfp's own logging) to `log_path`; a thread follows the file and feeds each line to
    `progress`, which writes to the terminal."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(saved[0]), "w", encoding="utf-8", errors="replace")

    def write(text: str) -> None:
        terminal.write(text)
        terminal.flush()

    progress.write = write
    progress.interactive = terminal.isatty()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    # also Python's own streams, wherever they pointed (kfp logs to and relays step output through sys.stdout)
    streams = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = open(log_path, "a", buffering=1, encoding="utf-8", errors="replace")
    # kfp logs cache hits and skipped steps at INFO on the root logger outside its own logging context
    root = logging.getLogger()
    root_state = root.level, root.handlers[:]
    root.handlers = [logging.StreamHandler(sys.stdout)]
    root.setLevel(logging.INFO)
    done = threading.Event()

    def follow() -> None:
        with open(log_path, encoding="utf-8", errors="replace") as log:
            pending = ""
            while True:
                finished = done.is_set()
                chunk = log.read()
                pending += chunk
                *lines, pending = pending.split("\n")
                for line in lines:
                    progress.feed(line)
                if finished:
                    return
                if not chunk:
                    time.sleep(0.2)

    follower = threading.Thread(target=follow, name="pipeline-log", daemon=True)
    follower.start()
    try:
        yield
    finally:
        root.setLevel(root_state[0])
        root.handlers = root_state[1]
        sys.stdout.close()
        sys.stdout, sys.stderr = streams
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        done.set()
        follower.join(timeout=5)
        terminal.close()


def _outputs_since(root: Path, name: str, started: float) -> list[Path]:
    return sorted((p for p in root.rglob(name) if p.stat().st_mtime >= started), key=lambda p: p.stat().st_mtime)


def run_local(name: str, params: Params, arguments: dict, verbose: bool = False) -> LocalRun:
    """Run the pipeline on this machine with kfp's local runner (every step a subprocess of this Python, outputs
    and the step cache under `pipeline.pipeline_root`). A failed step raises PipelineError with its error; the
    next run reuses every step that finished (pipeline.caching).

    By default kfp's and the steps' logs go to `<pipeline_root>/logs/<name>-<time>.log` and the terminal shows one
    line per finished step; `verbose` streams everything instead.
    """
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
    log_path = None if verbose else root / "logs" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    if log_path is not None:
        print(f"running the {name} pipeline (full log: {log_path})", flush=True)
    try:
        with nullcontext() if log_path is None else _output_to_log(log_path, _StepProgress()):
            pipeline(**arguments)
    except RuntimeError as error:
        detail = error_file.read_text(encoding="utf-8").strip() if error_file.exists() else str(error)
        where = f" (full log: {log_path})" if log_path else ""
        raise PipelineError(f"the {name} pipeline stopped: {detail}{where}. Fix it and run the same command again: "
                            "the steps that finished are reused") from None
    finally:
        os.environ.pop(ERROR_FILE_ENV, None)
    result = LocalRun(pipeline=name, seconds=round(time.time() - started, 1), root=str(root),
                      log=str(log_path) if log_path else None)
    result.packages = [json.loads(p.read_text()) for p in _outputs_since(root, "package.json", started)]
    for verdict in _outputs_since(root, "verdict.json", started):
        data = json.loads(verdict.read_text())
        if not data.get("passed"):
            result.gate_failures.append({"evaluation": str(verdict.parent), "reasons": data.get("reasons", [])})
    result.refusals = [json.loads(p.read_text()) for p in _outputs_since(root, "refusal.json", started)]
    summaries = _outputs_since(root, "summary.json", started)
    result.summary = json.loads(summaries[-1].read_text()) if summaries else None
    return result


# How `narrator pipeline run --host|schedule` reach a cluster, besides --host/--namespace/--token:
NAMESPACE_ENV = "KF_PIPELINES_NAMESPACE"  # the Kubeflow profile namespace (multi-user Kubeflow)
TOKEN_ENV = "KF_PIPELINES_TOKEN"  # a bearer token for the Kubeflow Pipelines API
TOKEN_FILE_ENV = "KF_PIPELINES_SA_TOKEN_PATH"  # a projected service-account token file (kfp's own variable)
TOKEN_FILE = "/var/run/secrets/kubeflow/pipelines/token"  # where Kubeflow projects that token in a pod


class ClusterUnreachable(PipelineError):
    """The Kubeflow Pipelines API does not answer, or refuses us: the address, the network or the credentials are
    the user's to fix."""

    exit_code = 2


@dataclass(frozen=True)
class ClusterAccess:
    """Where and as whom runs are submitted: the API URL, the namespace (Kubeflow profile), and a bearer token or a
    token file (a service account's, refreshed by the kubelet) or neither (an open or port-forwarded API)."""

    host: str
    namespace: str
    token: str | None = None
    token_file: str | None = None


def cluster_access(params: Params, host: str | None = None, namespace: str | None = None, token: str | None = None,
                   environ: dict[str, str] | None = None) -> ClusterAccess:
    """The cluster to talk to: each of host, namespace and token from the argument (the command line), else the
    environment ($KF_PIPELINES_NAMESPACE, $KF_PIPELINES_TOKEN, then the token file $KF_PIPELINES_SA_TOKEN_PATH or
    Kubeflow's projected token when it exists), else params.yaml (pipeline.kfp_host, pipeline.namespace)."""
    env = os.environ if environ is None else environ
    host = host or params.pipeline.kfp_host
    if not host:
        raise PipelineError("no Kubeflow Pipelines host: give --host URL or set pipeline.kfp_host in params.yaml")
    token = token or env.get(TOKEN_ENV) or None
    token_file = None
    if not token:
        candidate = env.get(TOKEN_FILE_ENV) or TOKEN_FILE
        token_file = candidate if Path(candidate).is_file() else None
    return ClusterAccess(host, namespace or env.get(NAMESPACE_ENV) or params.pipeline.namespace, token, token_file)


def for_cluster(params: Params, access: ClusterAccess) -> Params:
    """`params` for a run on the cluster: the image must name a registry, and the PyTorchJobs go to the runs'
    namespace."""
    from pipelines.cluster import check_image

    check_image(params.pipeline)
    if access.namespace == params.pipeline.namespace:
        return params
    return params.model_copy(update={"pipeline": params.pipeline.model_copy(update={"namespace": access.namespace})})


def _client(access: ClusterAccess):
    import kfp

    if access.token:
        return kfp.Client(host=access.host, namespace=access.namespace, existing_token=access.token)
    if access.token_file:
        from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

        return kfp.Client(host=access.host, namespace=access.namespace,
                          credentials=ServiceAccountTokenVolumeCredentials(access.token_file))
    return kfp.Client(host=access.host, namespace=access.namespace)


@contextmanager
def _talking_to(access: ClusterAccess) -> Iterator[None]:
    """Turn the API's connection and authorisation failures into ClusterUnreachable naming the URL and what to
    check."""
    import urllib3
    from kfp_server_api.exceptions import ApiException

    try:
        yield
    except (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError) as error:
        reason = getattr(error, "reason", None) or error
        raise ClusterUnreachable(
            f"cannot reach Kubeflow Pipelines at {access.host} ({type(reason).__name__}). Check the URL (--host or "
            "pipeline.kfp_host: the API, e.g. http://ml-pipeline-ui.kubeflow or a port-forward such as `kubectl "
            "port-forward -n kubeflow svc/ml-pipeline-ui 8080:80` and --host http://127.0.0.1:8080), that Kubeflow "
            "Pipelines is running there, and any proxy between") from None
    except ApiException as error:
        if error.status in (401, 403):
            raise ClusterUnreachable(
                f"Kubeflow Pipelines at {access.host} refused the request ({error.status} {error.reason}) in "
                f"namespace {access.namespace}: give a token (--token or ${TOKEN_ENV}; inside the cluster a "
                f"service-account token file, ${TOKEN_FILE_ENV}) allowed to run pipelines in that namespace, and "
                f"the namespace of your Kubeflow profile (--namespace or ${NAMESPACE_ENV})") from None
        raise ClusterUnreachable(f"Kubeflow Pipelines at {access.host} answered {error.status} {error.reason}: "
                                 f"{(error.body or '').strip()[:500]}") from None


def submit(name: str, params: Params, arguments: dict, host: str | None = None, experiment: str = "narrator",
           namespace: str | None = None, token: str | None = None) -> str:
    """Submit one run to a Kubeflow cluster (as pipeline.service_account); returns the run id."""
    access = cluster_access(params, host, namespace, token)
    params = for_cluster(params, access)
    with _talking_to(access):
        client = _client(access)
        run = client.create_run_from_pipeline_func(pipeline_function(name, params), arguments=arguments,
                                                   experiment_name=experiment, enable_caching=params.pipeline.caching,
                                                   service_account=params.pipeline.service_account)
    return run.run_id


def schedule(name: str, params: Params, arguments: dict, host: str | None = None, cron: str | None = None,
             experiment: str = "narrator", job_name: str | None = None, package_dir: str | Path = ".",
             namespace: str | None = None, token: str | None = None) -> str:
    """A recurring run on the cluster (`cron`: KFP's six-field cron, default pipeline.retrain_cron); returns its id."""
    access = cluster_access(params, host, namespace, token)
    params = for_cluster(params, access)
    package = compile_pipeline(name, params, Path(package_dir) / f"{name}.yaml")
    with _talking_to(access):
        client = _client(access)
        experiment_id = client.create_experiment(experiment).experiment_id
        job = client.create_recurring_run(experiment_id=experiment_id,
                                          job_name=job_name or f"narrator-{name}-{arguments.get('voice', 'all')}",
                                          cron_expression=cron or params.pipeline.retrain_cron,
                                          pipeline_package_path=str(package), params=arguments, max_concurrency=1,
                                          no_catchup=True, enable_caching=params.pipeline.caching,
                                          service_account=params.pipeline.service_account)
    return job.recurring_run_id
