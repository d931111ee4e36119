"""Multi-GPU fine-tuning of one voice on the cluster: a PyTorchJob (Kubeflow Training Operator, kubeflow.org/v1).

When `pipeline.training_gpus` is more than one, the pipeline's fine-tuning step does not train in its own pod: it
uploads the features to `pipeline.work_uri` (s3://), creates a PyTorchJob whose pods run the same command under
torchrun on that many GPUs each (`torchrun --standalone --nproc-per-node N --no-python narrator finetune-KIND
s3://.../features --out s3://.../KIND`; the CLI reads and writes s3:// itself, rank 0 uploads), waits for it, and
copies the result into the step's output artifact. With `pipeline.training_nodes` > 1 the job has a Master and
N-1 Workers whose torchrun meet at the Master (c10d rendezvous). The step's settings (its params.yaml sections as
JSON, which is YAML too) travel in an environment variable and become the CLI's --params file; the S3 and
registry credentials come from the Kubernetes Secrets of `pipeline.secrets`, and the pods run as
`pipeline.service_account`. The pipeline's own service account must be allowed to create PyTorchJobs:
deploy/kubeflow/rbac.yaml.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path
from typing import Any

from narrator.errors import NarratorError

GROUP, VERSION, PLURAL = "kubeflow.org", "v1", "pytorchjobs"
POLL_S = 20.0
TIMEOUT_S = 48 * 3600.0


class TrainingJobError(NarratorError):
    """The PyTorchJob could not be created, or it failed."""


def job_name(kind: str, features_uri: str, settings: str) -> str:
    """A stable name per (step, data, settings): re-running the pipeline step finds the same job and its outputs
    (the training inside resumes from its checkpoints)."""
    digest = hashlib.sha256(f"{kind}\0{features_uri}\0{settings}".encode()).hexdigest()[:10]
    return f"narrator-{kind}-{digest}"


def torchrun_command(name: str, kind: str, features_uri: str, out_uri: str, gpus: int, nodes: int) -> str:
    """The shell command of every replica: the step's settings into a params file, then torchrun over the CLI. One
    node trains standalone; several meet at the Master (the Training Operator sets MASTER_ADDR and MASTER_PORT in
    every replica) through torchrun's c10d rendezvous, which also numbers the nodes."""
    if nodes == 1:
        launch = f"torchrun --standalone --nproc-per-node {gpus}"
    else:
        launch = (f'torchrun --nnodes {nodes} --nproc-per-node {gpus} --rdzv-backend c10d '
                  f'--rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv-id {name}')
    return (f'printf "%s" "$NARRATOR_STEP_SETTINGS" > /tmp/params.yaml && exec {launch} --no-python narrator '
            f"finetune-{kind} {features_uri} --out {out_uri} --params /tmp/params.yaml")


def secret_env_vars(secrets: dict[str, str]) -> list[dict[str, Any]]:
    """The environment entries of the keys of `secrets` ({"s3": NAME, "registry": NAME}), each from its Kubernetes
    Secret; the optional ones may be missing from it (pipelines.cluster.SECRET_KEYS)."""
    from pipelines.cluster import SECRET_KEYS

    entries = []
    for role, secret in sorted(secrets.items()):
        required, optional = SECRET_KEYS[role]
        entries += [{"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key,
                                                                 "optional": key in optional}}}
                    for key in (*required, *optional)]
    return entries


def pytorchjob_manifest(name: str, kind: str, features_uri: str, out_uri: str, settings: str, gpus: int,
                        image: str, namespace: str, gpu_resource: str = "nvidia.com/gpu", nodes: int = 1,
                        service_account: str | None = None,
                        secrets: dict[str, str] | None = None) -> dict[str, Any]:
    """The PyTorchJob custom resource: a Master pod and `nodes - 1` Worker pods, each with `gpus` GPUs, running
    torchrun over the narrator CLI as `service_account`, with the keys of the Kubernetes Secrets `secrets`
    ({"s3": NAME, "registry": NAME}, pipeline.secrets) that training reads in its environment."""
    container = {
        "name": "pytorch", "image": image,
        "command": ["sh", "-c", torchrun_command(name, kind, features_uri, out_uri, gpus, nodes)],
        "env": [{"name": "NARRATOR_STEP_SETTINGS", "value": settings}, {"name": "NARRATOR_IMAGE", "value": image},
                *secret_env_vars(secrets or {})],
        "resources": {"limits": {gpu_resource: gpus}, "requests": {gpu_resource: gpus}},
    }
    pod = {"containers": [container]}
    if service_account:
        pod["serviceAccountName"] = service_account
    labels = {"app.kubernetes.io/part-of": "narrator", "narrator/step": f"finetune-{kind}"}
    replica = {"restartPolicy": "OnFailure", "template": {"metadata": {"labels": labels}, "spec": pod}}
    replicas = {"Master": {"replicas": 1, **replica}}
    if nodes > 1:
        replicas["Worker"] = {"replicas": nodes - 1, **replica}
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "PyTorchJob",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"pytorchReplicaSpecs": replicas},
    }


def job_state(job: dict[str, Any]) -> str | None:
    """"Succeeded", "Failed" or None (still running) from a PyTorchJob's status conditions."""
    for condition in reversed(job.get("status", {}).get("conditions", []) or []):
        if condition.get("status") == "True" and condition.get("type") in ("Succeeded", "Failed"):
            return condition["type"]
    return None


def run_pytorchjob(kind: str, features_dir: str, model_dir: str, settings: str, params, gpus: int, image: str,
                   namespace: str, work_uri: str, nodes: int = 1, service_account: str | None = None,
                   secrets: dict[str, str] | None = None) -> None:
    """Upload features, run the PyTorchJob to completion, download the fine-tuned model into `model_dir`."""
    from kubernetes import client, config

    from narrator import storage

    if not storage.is_s3(work_uri):
        raise TrainingJobError("multi-GPU fine-tuning exchanges data through S3: set pipeline.work_uri to an "
                               "s3:// prefix the cluster can read and write (or set pipeline.training_gpus to 1)")
    name = job_name(kind, features_dir, settings)
    base = f"{work_uri.rstrip('/')}/{name}"
    with storage.output_dir(f"{base}/features", params.storage) as staged:
        shutil.copytree(features_dir, staged, dirs_exist_ok=True)
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    api = client.CustomObjectsApi()
    manifest = pytorchjob_manifest(name, kind, f"{base}/features", f"{base}/{kind}", settings, gpus, image,
                                   namespace, nodes=nodes, service_account=service_account, secrets=secrets)
    try:
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)
    except client.ApiException as error:
        if error.status != 409:  # 409: the job exists (a re-run): wait for it
            raise TrainingJobError(f"could not create PyTorchJob {name} in {namespace}: {error.reason}. Is the "
                                   "Kubeflow Training Operator installed, and may this pipeline create PyTorchJobs? "
                                   "(`kubectl apply -n NAMESPACE -f deploy/kubeflow/rbac.yaml` allows it to the "
                                   "service account pipeline.service_account)")
    deadline = time.monotonic() + TIMEOUT_S
    while (state := job_state(api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name))) is None:
        if time.monotonic() > deadline:
            raise TrainingJobError(f"PyTorchJob {name} did not finish in {TIMEOUT_S / 3600:.0f} h")
        time.sleep(POLL_S)
    if state == "Failed":
        raise TrainingJobError(f"PyTorchJob {name} failed: `kubectl logs -n {namespace} {name}-master-0` says why")
    Path(model_dir).mkdir(parents=True, exist_ok=True)
    shutil.copytree(storage.local_dir(f"{base}/{kind}", params.storage), model_dir, dirs_exist_ok=True)
