"""What a step needs on a Kubernetes cluster besides its code: an image the cluster can pull, its secrets as
environment variables, and retries when it talks to the network.

Secrets. `pipeline.secrets` names the Kubernetes Secret of each of four roles in the runs' namespace (by default
one Secret, narrator-secrets, holds them all: deploy/kubeflow/secrets.example.yaml); `SECRET_KEYS` says which keys
a role gives a step (each key becomes the environment variable of the same name, through kfp-kubernetes
`use_secret_as_env`, so a step sees only its own keys), and the step table (`components.STEPS`) says which steps
need which role:

    s3         AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (+ optional AWS_ENDPOINT_URL, AWS_DEFAULT_REGION)
               steps that read `storage` (s3:// sources, models, outputs), `registry` or `training` (MLflow's
               artifacts live in S3)
    registry   optional MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD, MLFLOW_TRACKING_TOKEN, PGPASSWORD
               steps that read `registry` or `training` (they talk to MLflow; the registry lock's PostgreSQL)
    watermark  NARRATOR_WATERMARK_KEY: the steps that speak marked audio or look for the mark
    audit      NARRATOR_AUDIT_KEY: steps that read `registry` (they append to the audit log)

A required key that is missing keeps the pod from starting, and Kubernetes says which (`kubectl describe pod`);
optional keys may be left out of the Secret. A secret set to None in params.yaml is not injected at all.

Retries: a step that talks to the network (`NETWORK_STEPS`) is retried `pipeline.retries` times, the first after
`pipeline.retry_backoff_s`, each wait twice the one before. Those steps are safe to repeat: registering the same
files again registers nothing new and returns the version, the PyTorchJob launcher finds its job by name.
"""

from __future__ import annotations

from kfp import kubernetes

from narrator.config import PipelineConfig
from narrator.errors import NarratorError

SECRET_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {  # secret -> (required keys, optional keys)
    "s3": (("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"), ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION")),
    "registry": ((), ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "PGPASSWORD")),
    "watermark": (("NARRATOR_WATERMARK_KEY",), ()),
    "audit": (("NARRATOR_AUDIT_KEY",), ()),
}
# The params.yaml sections that make a step need a secret (the step table gives each step its sections).
SECRET_SECTIONS = {"s3": {"storage", "registry", "training"}, "registry": {"registry", "training"},
                   "audit": {"registry"}}
WATERMARK_STEPS = ("evaluate", "watermark_check", "package", "narrate")  # they load the key (models.watermark.load_key)
# Steps that talk to the network (object storage, MLflow, the Kubernetes API), all safe to repeat.
NETWORK_STEPS = ("snapshot", "new_recordings", "validate", "register", "package", "record", "finetune_on_cluster",
                 "manuscript_chapters", "narrate_chapter", "assemble_book")  # narration: resumable, rewrites its files
BACKOFF_FACTOR = 2.0  # each retry waits this many times longer than the one before


class ImageError(NarratorError):
    """pipeline.image cannot be pulled by a cluster (it names no registry)."""

    exit_code = 2


def has_registry(image: str) -> bool:
    """Whether `image` names the registry it lives in (`ghcr.io/owner/narrator:1`, `localhost:5000/narrator`),
    the way Docker reads a reference: the part before the first `/` is a registry when it has a `.` or a `:` or
    is `localhost`. `narrator:latest` and `owner/narrator` have none (Docker Hub would be guessed)."""
    first, slash, _ = image.partition("/")
    return bool(slash) and ("." in first or ":" in first or first == "localhost")


def check_image(cfg: PipelineConfig) -> None:
    """Refuse an image a cluster cannot pull: one without a registry."""
    if not has_registry(cfg.image):
        raise ImageError(f"pipeline.image is {cfg.image!r}, which names no registry, so a cluster cannot pull it. "
                         "Build and push the image (`docker build -t REGISTRY/narrator:TAG . && docker push "
                         "REGISTRY/narrator:TAG`), then set pipeline.image to it (params.yaml or --set "
                         "pipeline.image=REGISTRY/narrator:TAG)")


def secrets_of(step: str, cfg: PipelineConfig) -> dict[str, str]:
    """The secrets step `step` (a name in components.STEPS) receives: {"s3": "narrator-secrets", ...}."""
    from components import STEPS

    sections = set(STEPS[step].sections)
    wanted = {name for name, needs in SECRET_SECTIONS.items() if sections & needs}
    if step in WATERMARK_STEPS:
        wanted.add("watermark")
    configured = cfg.secrets.model_dump()
    return {name: configured[name] for name in SECRET_KEYS if name in wanted and configured[name]}


def secret_env(secret: str, name: str, task) -> None:
    """Every key of `secret` (one of SECRET_KEYS) in Kubernetes Secret `name` as the task's environment."""
    required, optional = SECRET_KEYS[secret]
    if required:
        kubernetes.use_secret_as_env(task, secret_name=name, secret_key_to_env={k: k for k in required})
    if optional:
        kubernetes.use_secret_as_env(task, secret_name=name, secret_key_to_env={k: k for k in optional},
                                     optional=True)


def on_cluster(task, step: str | None, cfg: PipelineConfig, component: str | None = None):
    """Give `task` (running step `step` of the step table, None for a task that runs none; `component` its
    component when that is not the step's name) its secrets, the image pull secret and, when it talks to the
    network, its retries."""
    for secret, name in (secrets_of(step, cfg) if step else {}).items():
        secret_env(secret, name, task)
    if cfg.image_pull_secret:
        kubernetes.set_image_pull_secrets(task, [cfg.image_pull_secret])
    if cfg.retries and (component or step) in NETWORK_STEPS:
        task.set_retry(num_retries=cfg.retries, backoff_duration=f"{cfg.retry_backoff_s}s",
                       backoff_factor=BACKOFF_FACTOR)
    return task
