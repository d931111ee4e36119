"""The pipelines as shipped run on a Kubernetes cluster: the compiled YAML names an image in a registry, gives each
step the Kubernetes Secrets it needs as environment variables and retries the steps that talk to the network; the
multi-GPU PyTorchJob spans nodes with a service account and the same secrets, and the RBAC that lets the pipeline
create it ships in deploy/kubeflow/; the client reaches the cluster with a namespace and a token, and an address
that does not answer is the user's to fix (exit 2), not a bug."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml

from narrator.config import load_params
from pipelines.cluster import SECRET_KEYS, has_registry
from pipelines.run import ClusterUnreachable, compile_pipeline

REPO_ROOT = Path(__file__).resolve().parent.parent
IMAGE = "ghcr.io/example/narrator:1.4.0"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """`compiled(name, **pipeline_settings)`: (pipeline spec, Kubernetes platform spec) of the compiled YAML."""
    specs: dict[tuple, tuple[dict, dict]] = {}

    def compile_once(name: str, **pipeline) -> tuple[dict, dict]:
        key = (name, tuple(sorted((k, str(v)) for k, v in pipeline.items())))
        if key not in specs:
            params = load_params(None, {"pipeline": {"image": IMAGE, **pipeline}})
            out = compile_pipeline(name, params, tmp_path_factory.mktemp("compiled") / f"{name}.yaml")
            spec, platform = yaml.safe_load_all(out.read_text())
            specs[key] = spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        return specs[key]

    return compile_once


def _env_from_secrets(executor: dict) -> dict[str, tuple[str, bool]]:
    """{ENV_VAR: (secret name, optional)} of one executor's Kubernetes settings."""
    return {pair["envVar"]: (entry["secretName"], entry.get("optional", False))
            for entry in executor.get("secretAsEnv", []) for pair in entry["keyToEnv"]}


def _tasks(spec: dict) -> dict:
    tasks = dict(spec["root"]["dag"]["tasks"])
    for component in spec["components"].values():
        tasks.update(component.get("dag", {}).get("tasks", {}))
    return tasks


# -- the image ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("image", "pullable"), [
    ("ghcr.io/owner/narrator:1.0", True), ("registry.example:5000/narrator", True), ("localhost/narrator:dev", True),
    ("narrator:latest", False), ("owner/narrator:1.0", False), ("narrator", False)])
def test_an_image_names_a_registry_when_its_first_part_is_a_host(image, pullable):
    assert has_registry(image) is pullable


def test_compiling_for_a_cluster_refuses_an_image_without_a_registry(tmp_path):
    from pipelines.cluster import ImageError

    with pytest.raises(ImageError, match="names no registry.*pipeline.image") as refused:
        compile_pipeline("onboard", load_params(None, {}), tmp_path / "onboard.yaml")
    assert refused.value.exit_code == 2 and not (tmp_path / "onboard.yaml").exists()


def test_every_step_runs_in_the_registry_image(compiled):
    spec, _ = compiled("onboard")
    assert {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()} == {IMAGE}


# -- secrets -----------------------------------------------------------------------------------------------------


def test_steps_that_read_or_write_s3_get_the_s3_credentials(compiled):
    _, executors = compiled("onboard")
    for step in ("snapshot", "validate", "features", "finetune-sovits", "evaluate", "register", "package"):
        env = _env_from_secrets(executors[f"exec-{step}"])
        assert env["AWS_ACCESS_KEY_ID"] == env["AWS_SECRET_ACCESS_KEY"] == ("narrator-secrets", False), step
        assert env["AWS_ENDPOINT_URL"] == ("narrator-secrets", True), step  # optional: AWS itself needs none


def test_only_the_steps_that_mark_or_check_audio_get_the_watermark_key(compiled):
    _, executors = compiled("onboard")
    keyed = {name.removeprefix("exec-") for name, e in executors.items()
             if "NARRATOR_WATERMARK_KEY" in _env_from_secrets(e)}
    assert keyed == {"evaluate", "watermark-check", "package"}
    assert _env_from_secrets(executors["exec-package"])["NARRATOR_WATERMARK_KEY"] == ("narrator-secrets", False)


def test_the_steps_that_write_the_audit_log_get_the_audit_key_and_the_registry_credentials(compiled):
    _, executors = compiled("onboard")
    for step in ("register", "package", "record-run", "gate-failed", "dataset-refused"):
        env = _env_from_secrets(executors[f"exec-{step}"])
        assert env["NARRATOR_AUDIT_KEY"] == ("narrator-secrets", False), step
        assert env["MLFLOW_TRACKING_PASSWORD"] == env["PGPASSWORD"] == ("narrator-secrets", True), step
    assert "NARRATOR_AUDIT_KEY" not in _env_from_secrets(executors["exec-features"])
    assert "prepare" not in {n.removeprefix("exec-") for n, e in executors.items() if e.get("secretAsEnv")}


def test_secret_names_come_from_the_settings_and_none_leaves_a_secret_out(compiled):
    _, executors = compiled("onboard", secrets={"s3": "voices-minio", "audit": None})
    env = _env_from_secrets(executors["exec-register"])
    assert env["AWS_ACCESS_KEY_ID"] == ("voices-minio", False)
    assert "NARRATOR_AUDIT_KEY" not in env


@pytest.mark.parametrize("name", ["onboard", "batch", "retrain"])
def test_every_step_pulls_a_private_image_with_the_pull_secret(compiled, name):
    spec, executors = compiled(name, image_pull_secret="regcred")
    assert set(executors) == set(spec["deploymentSpec"]["executors"])
    assert all(e["imagePullSecret"] == [{"secretName": "regcred", "secretNameParameter": {
        "runtimeValue": {"constant": "regcred"}}}] for e in executors.values())


def test_every_injected_variable_is_a_key_of_its_secret(compiled):
    _, executors = compiled("onboard")
    known = {key for required, optional in SECRET_KEYS.values() for key in (*required, *optional)}
    for executor in executors.values():
        for entry in executor.get("secretAsEnv", []):
            assert all(pair["secretKey"] == pair["envVar"] in known for pair in entry["keyToEnv"])


# -- retries -----------------------------------------------------------------------------------------------------


def test_steps_that_talk_to_the_network_retry_with_backoff(compiled):
    spec, _ = compiled("onboard", retries=4, retry_backoff_s=30)
    tasks = _tasks(spec)
    for step in ("snapshot", "validate", "register", "package", "gate-failed", "dataset-refused"):
        policy = tasks[step]["retryPolicy"]
        assert policy["maxRetryCount"] == 4 and policy["backoffDuration"] == "30s", step
        assert policy["backoffFactor"] == 2.0
    assert spec["root"]["dag"]["tasks"]["record-run"]["retryPolicy"]["maxRetryCount"] == 4
    for step in ("prepare", "features", "finetune-sovits", "evaluate", "watermark-check"):
        assert "retryPolicy" not in tasks[step], step  # a deterministic step would only fail again


def test_retries_zero_means_no_retry_policy(compiled):
    spec, _ = compiled("onboard", retries=0)
    assert not [name for name, task in _tasks(spec).items() if "retryPolicy" in task]


# -- batch -------------------------------------------------------------------------------------------------------


def test_the_batch_summary_runs_even_when_a_narrator_failed(compiled):
    spec, _ = compiled("batch")
    summary = _tasks(spec)["summarize"]
    assert summary["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert summary["inputs"]["parameters"]["narrators"]["componentInputParameter"].endswith("narrators")


def test_the_summary_names_a_narrator_without_a_result_as_failed(tmp_path):
    import json

    from kfp.dsl import Artifact

    from pipelines.steps import summarize

    narrators = [{"source": "s3://v/ann", "voice": "ann"}, {"source": "s3://v/bob", "voice": "bob"}]
    refused = json.dumps({"voice": "ann", "verdict": "refused", "reasons": ["no consent"]})
    out = Artifact(uri=f"file://{tmp_path}/summary")
    out.path = str(tmp_path / "summary")
    rows = json.loads(summarize(narrators=narrators, settings="{}", summary=out, results=[refused]))
    assert rows[0] == {"voice": "ann", "verdict": "refused", "reasons": ["no consent"]}
    assert rows[1]["voice"] == "bob" and rows[1]["verdict"] == "failed" and rows[1]["source"] == "s3://v/bob"
    assert json.loads((tmp_path / "summary" / "summary.json").read_text()) == rows


def test_a_refused_dataset_is_a_branch_of_the_onboarding_not_a_failed_step(compiled):
    spec, _ = compiled("onboard")
    dags = [spec["root"]["dag"], *(c["dag"] for c in spec["components"].values() if "dag" in c)]
    conditions = [t["triggerPolicy"]["condition"] for dag in dags for t in dag["tasks"].values()
                  if "condition" in t.get("triggerPolicy", {})]
    assert any("'accepted'" in c and "validate" in c and "!" not in c for c in conditions)
    assert any("'accepted'" in c and "!" in c for c in conditions)
    assert "dataset-refused" in _tasks(spec)


# -- the PyTorchJob ----------------------------------------------------------------------------------------------


def _job(**kwargs):
    from pipelines.training_job import pytorchjob_manifest

    settings = dict(name="narrator-gpt-abc", kind="gpt", features_uri="s3://w/f", out_uri="s3://w/gpt",
                    settings="training: {}\n", gpus=4, image=IMAGE, namespace="voices")
    return pytorchjob_manifest(**{**settings, **kwargs})


def test_a_multi_node_pytorchjob_has_a_master_and_workers_meeting_at_the_master():
    job = _job(nodes=3)
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 2
    for role in ("Master", "Worker"):
        container = replicas[role]["template"]["spec"]["containers"][0]
        command = container["command"][-1]
        assert "--nnodes 3 --nproc-per-node 4 --rdzv-backend c10d" in command and "--standalone" not in command
        assert '--rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT"' in command and "--rdzv-id narrator-gpt-abc" in command
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 4


def test_a_single_node_pytorchjob_trains_standalone_without_workers():
    job = _job(nodes=1)
    assert "Worker" not in job["spec"]["pytorchReplicaSpecs"]
    assert "torchrun --standalone --nproc-per-node 4" in \
        job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["command"][-1]


def test_pytorchjob_pods_run_as_the_service_account_with_only_the_keys_training_reads():
    job = _job(nodes=2, service_account="narrator-pipeline", secrets={"s3": "minio-keys", "registry": "mlflow-keys"})
    for replica in job["spec"]["pytorchReplicaSpecs"].values():
        pod = replica["template"]["spec"]
        assert pod["serviceAccountName"] == "narrator-pipeline"
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in pod["containers"][0]["env"] if "valueFrom" in e}
        assert refs["AWS_ACCESS_KEY_ID"] == {"name": "minio-keys", "key": "AWS_ACCESS_KEY_ID", "optional": False}
        assert refs["AWS_ENDPOINT_URL"]["optional"] is True
        assert refs["MLFLOW_TRACKING_PASSWORD"] == {"name": "mlflow-keys", "key": "MLFLOW_TRACKING_PASSWORD",
                                                    "optional": True}
        assert "NARRATOR_WATERMARK_KEY" not in refs and "NARRATOR_AUDIT_KEY" not in refs


def test_the_pytorchjob_launcher_gets_nodes_service_account_and_secrets_from_the_settings(compiled):
    import json

    spec, _ = compiled("onboard", training_gpus=8, training_nodes=2, work_uri="s3://work/narrator")
    launcher = next(t for n, t in _tasks(spec).items() if n.startswith("finetune-on-cluster"))
    given = {k: v["runtimeValue"]["constant"] for k, v in launcher["inputs"]["parameters"].items()
             if "runtimeValue" in v}
    assert given["nodes"] == 2 and given["gpus"] == 8 and given["service_account"] == "narrator-pipeline"
    assert json.loads(given["secrets"]) == {"s3": "narrator-secrets", "registry": "narrator-secrets"}
    assert launcher["retryPolicy"]["maxRetryCount"] == 3  # it talks to the Kubernetes API and S3


def test_the_rbac_lets_the_pipelines_service_account_run_pytorchjobs():
    import kubernetes_validate

    documents = [d for d in yaml.safe_load_all((REPO_ROOT / "deploy/kubeflow/rbac.yaml").read_text()) if d]
    for document in documents:
        kubernetes_validate.validate(document, "1.30", strict=True)
    by_kind = {d["kind"]: d for d in documents}
    account = load_params(None, {}).pipeline.service_account
    assert by_kind["ServiceAccount"]["metadata"]["name"] == account
    rules = by_kind["Role"]["rules"]
    jobs = next(r for r in rules if "pytorchjobs" in r["resources"])
    assert jobs["apiGroups"] == ["kubeflow.org"] and {"create", "get"} <= set(jobs["verbs"])
    binding = by_kind["RoleBinding"]
    assert binding["roleRef"]["name"] == by_kind["Role"]["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account}]


def test_the_example_secret_carries_every_key_the_steps_need():
    import kubernetes_validate

    documents = [d for d in yaml.safe_load_all((REPO_ROOT / "deploy/kubeflow/secrets.example.yaml").read_text())
                 if d]
    by_name = {d["metadata"]["name"]: d for d in documents}
    for role, name in load_params(None, {}).pipeline.secrets.model_dump().items():
        kubernetes_validate.validate(by_name[name], "1.30", strict=True)
        assert set(SECRET_KEYS[role][0]) <= set(by_name[name]["stringData"]), role


# -- the client --------------------------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # free once closed: nothing listens there


def test_an_unreachable_cluster_is_the_users_to_fix_and_names_the_url():
    from pipelines.run import submit

    host = f"http://127.0.0.1:{_closed_port()}"
    params = load_params(None, {"pipeline": {"image": IMAGE}})
    with pytest.raises(ClusterUnreachable) as unreachable:
        submit("onboard", params, {"source": "s3://v/ann", "voice": "ann"}, host=host, namespace="voices",
               token="t0ken")
    assert host in str(unreachable.value) and "--host" in str(unreachable.value)
    assert unreachable.value.exit_code == 2


def test_the_cli_says_an_unreachable_host_is_not_a_bug(tmp_path, capsys):
    from cli.main import main

    host = f"http://127.0.0.1:{_closed_port()}"
    code = main(["pipeline", "run", "onboard", "--host", host, "--source", "s3://v/ann", "--voice", "ann",
                 "--set", f"pipeline.image={IMAGE}"])
    err = capsys.readouterr().err
    assert code == 2 and host in err and "bug" not in err


def test_namespace_and_token_come_from_the_flags_then_the_environment_then_the_settings(tmp_path):
    from pipelines.run import cluster_access

    params = load_params(None, {"pipeline": {"kfp_host": "http://kfp.example", "namespace": "from-settings"}})
    env = {"KF_PIPELINES_NAMESPACE": "from-env", "KF_PIPELINES_TOKEN": "env-token"}
    flags = cluster_access(params, namespace="from-flag", token="flag-token", environ=env)
    assert (flags.namespace, flags.token) == ("from-flag", "flag-token")
    environment = cluster_access(params, environ=env)
    assert (environment.namespace, environment.token) == ("from-env", "env-token")
    missing = str(tmp_path / "no-token")
    access = cluster_access(params, environ={"KF_PIPELINES_SA_TOKEN_PATH": missing})
    assert (access.host, access.namespace, access.token, access.token_file) == \
        ("http://kfp.example", "from-settings", None, None)
    token_file = tmp_path / "token"
    token_file.write_text("projected")
    assert cluster_access(params, environ={"KF_PIPELINES_SA_TOKEN_PATH": str(token_file)}).token_file == \
        str(token_file)


def test_submit_gives_the_client_the_namespace_and_token_and_runs_as_the_service_account(monkeypatch, tmp_path):
    import kfp
    from kfp import compiler

    from pipelines import run as runner

    made, runs = {}, {}

    class FakeClient:
        def __init__(self, **kwargs):
            made.update(kwargs)

        def create_run_from_pipeline_func(self, pipeline, **kwargs):
            runs.update(kwargs)
            compiler.Compiler().compile(pipeline, str(tmp_path / "submitted.yaml"))
            return type("Run", (), {"run_id": "run-7"})()

    monkeypatch.setattr(kfp, "Client", FakeClient)
    params = load_params(None, {"pipeline": {"image": IMAGE, "training_gpus": 2, "work_uri": "s3://w/n"}})
    run = runner.submit("onboard", params, {"source": "s3://v/ann", "voice": "ann"}, host="http://kfp.example",
                        namespace="team-voices", token="t0ken")
    assert run == "run-7"
    assert made == {"host": "http://kfp.example", "namespace": "team-voices", "existing_token": "t0ken"}
    assert runs["service_account"] == "narrator-pipeline"
    spec = next(yaml.safe_load_all((tmp_path / "submitted.yaml").read_text()))
    launcher = next(t for n, t in _tasks(spec).items() if n.startswith("finetune-on-cluster"))
    assert launcher["inputs"]["parameters"]["namespace"]["runtimeValue"]["constant"] == "team-voices"  # the jobs too


def test_a_token_file_becomes_refreshing_credentials(monkeypatch, tmp_path):
    import kfp
    from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

    from pipelines.run import ClusterAccess, _client

    made = {}
    monkeypatch.setattr(kfp, "Client", lambda **kwargs: made.update(kwargs))
    _client(ClusterAccess("http://kfp.example", "voices", token_file=str(tmp_path / "token")))
    assert isinstance(made["credentials"], ServiceAccountTokenVolumeCredentials) and "existing_token" not in made


def test_an_unreadable_source_is_a_refusal_the_pipeline_branches_on_not_a_failed_step(tmp_path):
    from kfp.dsl import Dataset

    from pipelines.runtime import step_settings_json
    from pipelines.steps import snapshot, validate

    missing = str(tmp_path / "no-such-recordings")
    settings = step_settings_json(load_params(None, {}), "validate")
    fingerprint = snapshot(missing, step_settings_json(load_params(None, {}), "snapshot"))
    out = Dataset(uri=f"file://{tmp_path}/validated")
    out.path = str(tmp_path / "validated")
    verdict = validate(missing, fingerprint, settings, out)
    assert fingerprint.startswith("unreadable: ") and "no such folder" in fingerprint
    assert verdict.startswith("the source cannot be read: ") and missing in verdict
    assert (tmp_path / "validated").is_dir() and out.metadata["verdict"] == "refused"
