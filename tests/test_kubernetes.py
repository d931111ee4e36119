"""The Kubernetes manifests (deploy/kubernetes/): valid resources of the Kubernetes API, settings the service
accepts, secrets only as placeholders, and probes and an autoscaling metric that the service really serves (checked
against a real service started with the Deployment's own container arguments).
"""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import REPO_ROOT

MANIFESTS = REPO_ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSIONS = ("1.32.0", "1.37.0")  # the oldest still commonly run, the newest kubernetes-validate knows
PLACEHOLDER = "CHANGE-ME"


def _files() -> list[Path]:
    return sorted(p for p in MANIFESTS.glob("*.yaml") if p.name != "kustomization.yaml")


def _resources() -> list[dict]:
    return [doc for path in _files() for doc in yaml.safe_load_all(path.read_text()) if doc]


def _one(kind: str, name: str | None = None) -> dict:
    found = [r for r in _resources() if r["kind"] == kind and (name is None or r["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _container() -> dict:
    (container,) = _one("Deployment", "narrator")["spec"]["template"]["spec"]["containers"]
    return container


def _argument(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", _files(), ids=lambda p: p.name)
def test_every_manifest_is_a_valid_kubernetes_resource(path, version):
    import kubernetes_validate

    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)  # raises ValidationError naming the field


def test_kustomization_applies_every_manifest():
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in _files())
    assert {image["name"] for image in kustomization["images"]} == {_container()["image"].rsplit(":", 1)[0]}


def test_the_configmap_holds_settings_the_service_accepts_for_replicas(tmp_path):
    from narrator.config import load_params

    path = tmp_path / "params.yaml"
    path.write_text(_one("ConfigMap", "narrator-params")["data"]["params.yaml"])
    serving = load_params(path).serving
    assert serving.state_url.startswith("redis://narrator-redis:"), "replicas share keys and buckets through Redis"
    assert serving.workers == 1 and serving.gpus == 1
    mount = next(m for m in _container()["volumeMounts"] if m["name"] == "params")
    assert _argument(_container()["args"], "--params") == f"{mount['mountPath']}/params.yaml"


def test_each_replica_fetches_voices_into_a_writable_cache_of_its_own(tmp_path):
    from narrator.config import load_params

    path = tmp_path / "params.yaml"
    path.write_text(_one("ConfigMap", "narrator-params")["data"]["params.yaml"])
    cache = load_params(path).serving.bundle_cache
    mount = next(m for m in _container()["volumeMounts"] if m["mountPath"] == cache)
    assert not mount.get("readOnly"), "bundles are downloaded into the cache"
    volume = next(v for v in _one("Deployment", "narrator")["spec"]["template"]["spec"]["volumes"]
                  if v["name"] == mount["name"])
    assert "emptyDir" in volume, "no shared volume: bundles come from the registry's artifact store"


def test_the_secret_is_a_template_with_every_secret_the_service_reads():
    from models.watermark import KEY_ENV
    from narrator.state import PASSWORD_ENV

    secret = _one("Secret", "narrator-secrets")["stringData"]
    assert set(secret.values()) == {PLACEHOLDER}, "no real secret in the repository"
    assert {KEY_ENV, PASSWORD_ENV, "NARRATOR_AUDIT_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(secret)
    assert {"secretRef": {"name": "narrator-secrets"}} in _container()["envFrom"]


def test_the_autoscaler_scales_the_deployment_on_a_per_pod_metric():
    hpa = _one("HorizontalPodAutoscaler", "narrator")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "narrator"}
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["target"]["type"] == "AverageValue"
    assert hpa["spec"]["minReplicas"] >= 2, "one replica may be drained while another serves"
    pdb = _one("PodDisruptionBudget", "narrator")
    assert pdb["spec"]["selector"]["matchLabels"] == _one("Deployment", "narrator")["spec"]["selector"]["matchLabels"]


def test_probes_and_the_autoscaling_metric_are_what_the_container_serves(tmp_path):
    """The Deployment's own arguments (`narrator serve ...`) with local settings and a free port: its probe paths
    answer 200 once ready, and /metrics exports the autoscaler's metric."""
    from tests.deployment import bare_service, running_service
    from tests.services import free_port

    container = _container()
    (port_spec,) = container["ports"]
    args = list(container["args"])
    assert _argument(args, "--port") == str(port_spec["containerPort"])
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == port_spec["name"]
    env, _ = bare_service(tmp_path, {})
    port = free_port()
    args[args.index("--params") + 1] = env["NARRATOR_PARAMS"]
    args[args.index("--port") + 1] = str(port)
    args[args.index("--host") + 1] = "127.0.0.1"
    metric = _one("HorizontalPodAutoscaler", "narrator")["spec"]["metrics"][0]["pods"]["metric"]["name"]
    with running_service(env, port, tmp_path / "serve.log", [sys.executable, "-m", "cli", *args]) as base:
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            response = httpx.get(base + container[probe]["httpGet"]["path"], timeout=10)
            assert response.status_code == 200, (probe, response.text)
        exported = httpx.get(f"{base}/metrics", timeout=10).text
    assert f"# TYPE {metric} gauge" in exported
    assert container["readinessProbe"]["httpGet"]["path"] != container["livenessProbe"]["httpGet"]["path"], \
        "readiness (can serve) and liveness (is alive) must differ, or a registry outage restarts every pod"
