"""The registry on an MLflow server (PostgreSQL + S3) shared by machines that share nothing else.

Each "machine" is a child process in its own working folder with its own params.yaml, local caches and BentoML
store; the only things they share are the loopback services of tests/services.py: the MLflow server (tracking and
registry in PostgreSQL, artifacts in S3), a PostgreSQL database for the registry lock and the S3 bucket holding the
base models. Registrations queue on PostgreSQL's advisory lock, and a voice packaged on one machine is fetched from
the registry's artifact store and speaks on another.

The registrable step outputs are the tiny stand-ins of tests/test_register.py; the packaged voice is one of the
tiny random voices of tests/deployment.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT
from tests.services import free_port
from tests.test_register import PASSED_CHECK, _features, _prepared, _validated, evaluation

CHILD_TIMEOUT_S = 240
QUEUE_TIMEOUT_S = 90
WATERMARK_KEY = "test-registry-server-key"
AUDIT_KEY = "test-registry-server-audit-key"  # seals the shared registry audit log (NARRATOR_AUDIT_KEY)

_REGISTER = """
import json, sys
from components.register import register
from components.watermark import WatermarkCheck
from narrator.config import load_params
job = json.loads(sys.argv[1])
params = load_params()  # ./params.yaml of this working folder
done = {}
for voice, folders in job["registrations"]:
    result = register(voice, params=params, watermark=WatermarkCheck(**job["watermark"]), **folders)
    done[voice] = {"version": result.version, "payload_hex": result.payload_hex, "promoted": result.promoted,
                   "reason": result.reason}
print(json.dumps(done))
"""

_REGISTER_AND_PACKAGE = _REGISTER + """
from components.package import package
voice, folders = job["registrations"][0]
packaged = package(voice, done[voice]["version"], folders["features_dir"], folders["sovits_dir"] + "/sovits.pth",
                   folders["gpt_dir"] + "/gpt.ckpt", "package", params)
print(packaged.to_json().replace("\\n", ""))
"""

_SERVE_FROM_THE_REGISTRY = """
import json, sys
from narrator.config import load_params
from serving.voices import VoiceCache, VoiceCatalog
params = load_params()
info = VoiceCatalog(params).get(sys.argv[1])
cache = VoiceCache(params, "cpu")
voice = cache.get(info)
speech = voice.synth.speak("Hello there.", voice.reference, "en", seed=0)
print(json.dumps({"version": info.version, "bundle_dir": str(cache.bundle_dir(info)),
                  "samples": len(speech.samples), "payload_hex": info.payload_hex}))
"""


# -- the services and the working folders ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared(postgres_service, mlflow_service, s3_service) -> dict:
    """Settings every working folder shares: the registry server, a lock database of this module, the registry
    audit log in a PostgreSQL table of its own, a registered model prefix of its own (the MLflow server serves the
    whole test session)."""
    from tests import services

    run = uuid.uuid4().hex[:8]
    return {"registry": {"tracking_uri": mlflow_service.url, "model_prefix": f"narrator-{run}-",
                         "lock_url": services.create_database(postgres_service, f"registry_lock_{run}"),
                         "audit_log": f"{postgres_service.url}?table=registry_audit_{run}"},
            "training": {"mlflow_tracking_uri": mlflow_service.url, "mlflow_experiment": f"narrator-{run}"},
            "storage": {"s3_endpoint_url": s3_service.url}}


def working_folder(root: Path, shared: dict, **sections) -> Path:
    """A folder of its own with a params.yaml: the shared services (registry, lock, audit log) plus local caches."""
    root.mkdir(parents=True, exist_ok=True)
    settings = json.loads(json.dumps(shared))
    settings["serving"] = {"bundle_cache": str(root / "bundle-cache"), "gpus": 0}
    settings["package"] = {"bentoml_home": str(root / "bentoml")}
    for section, values in sections.items():
        settings.setdefault(section, {}).update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
    return root


def child_env(s3_service, folder: Path) -> dict[str, str]:
    """What a child process gets: the S3 credentials, its own BentoML store, and no MLflow or BentoML state of
    the test's."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "BENTOML_"))}
    return {**env, **s3_service.env, "PYTHONPATH": str(REPO_ROOT), "BENTOML_HOME": str(folder / "bentoml"),
            "BENTOML_DO_NOT_TRACK": "true", "NARRATOR_WATERMARK_KEY": WATERMARK_KEY, "NARRATOR_AUDIT_KEY": AUDIT_KEY}


def start(script: str, folder: Path, env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script, *args], cwd=folder, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(child: subprocess.Popen) -> list[str]:
    """The child's stdout lines; fails with its stderr when it failed."""
    out, err = child.communicate(timeout=CHILD_TIMEOUT_S)
    assert child.returncode == 0, err[-4000:]
    return out.strip().splitlines()


def _finetuned(out: Path, file_name: str, tag: str, content: bytes | Path) -> None:
    """A fine-tuning run folder as the step writes it: the exported file (these bytes, or a copy of this file)
    and result.json recording its sha256."""
    import shutil

    from components.training import LoopResult, record_export, run_summary

    out.mkdir(parents=True)
    exported = out / file_name
    if isinstance(content, Path):
        shutil.copy2(content, exported)
    else:
        exported.write_bytes(content)
    summary = run_summary(LoopResult(steps=8, epochs=1, resumed_from_step=0, seconds=3.0), examples=2, batch_size=1,
                          precision="fp32", processes=1)
    record_export(summary, exported, tag, None)
    (out / "result.json").write_text(json.dumps(summary.to_dict(), indent=1), encoding="utf-8")


def step_outputs(root: Path, speaker_similarity: float, sovits: bytes | Path, gpt: bytes | Path,
                 features: Path | None = None) -> dict[str, str]:
    """The folders `register` reads, written under `root` (the fine-tuned files given as bytes or files)."""
    _validated(root / "validated")
    _prepared(root / "prepared")
    if features is None:
        features = root / "features"
        _features(features)
    _finetuned(root / "sovits", "sovits.pth", "sovits_sha256", sovits)
    _finetuned(root / "gpt", "gpt.ckpt", "gpt_sha256", gpt)
    return {"validated_dir": str(root / "validated"), "prepared_dir": str(root / "prepared"),
            "features_dir": str(features), "sovits_dir": str(root / "sovits"), "gpt_dir": str(root / "gpt"),
            "evaluation_dir": str(evaluation(root, "evaluation", speaker_similarity))}


def register_job(*registrations: tuple[str, dict]) -> str:
    return json.dumps({"registrations": list(registrations), "watermark": json.loads(PASSED_CHECK.to_json())})


def registry_client(shared: dict):
    from mlflow import MlflowClient

    uri = shared["registry"]["tracking_uri"]
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def audit_events(shared: dict) -> list[dict]:
    """The shared registry audit log's records, its keyed chain verified first."""
    from narrator import audit

    location, key = shared["registry"]["audit_log"], AUDIT_KEY.encode()
    verification = audit.verify(location, key)
    assert verification.keyed == verification.records > 0, verification.summary()
    return audit.read(location, key)


# -- registration across machines --------------------------------------------------------------------------------


@pytest.mark.services
def test_two_machines_registering_at_once_get_distinct_versions_ids_and_one_champion_move_each(shared, s3_service,
                                                                                             tmp_path):
    """Machines A and B each register a voice of their own and, at the same time, a version of one shared voice
    trained on their own files with the same quality: the shared voice gets versions 1 and 2 and exactly one
    champion move (the second version does not beat the first), whichever machine comes first."""
    folders, children = {}, {}
    for machine in ("a", "b"):
        folder = working_folder(tmp_path / machine, shared)
        weights = f"weights from machine {machine}".encode()
        own = step_outputs(folder / "own", 0.80, weights + b" own sovits", weights + b" own gpt")
        common = step_outputs(folder / "common", 0.80, weights + b" common sovits", weights + b" common gpt")
        folders[machine] = folder
        children[machine] = (folder, register_job((f"solo-{machine}", own), ("shared", common)))
    running = {machine: start(_REGISTER, folder, child_env(s3_service, folder), job)
               for machine, (folder, job) in children.items()}
    done = {machine: json.loads(finish(child)[-1]) for machine, child in running.items()}

    shared_versions = sorted(done[m]["shared"]["version"] for m in done)
    assert shared_versions == [1, 2]
    voice_ids = {done["a"]["solo-a"]["payload_hex"][:4], done["b"]["solo-b"]["payload_hex"][:4],
                 done["a"]["shared"]["payload_hex"][:4]}
    assert len(voice_ids) == 3 and done["a"]["shared"]["payload_hex"][:4] == done["b"]["shared"]["payload_hex"][:4]
    assert done["a"]["solo-a"]["promoted"] and done["b"]["solo-b"]["promoted"]
    assert sorted(done[m]["shared"]["promoted"] for m in done) == [False, True]
    prefix = shared["registry"]["model_prefix"]
    client = registry_client(shared)
    promoted = [int(v.version) for v in client.search_model_versions(f"name = '{prefix}shared'")
                if v.tags.get("promoted_by")]
    winner = next(m for m in done if done[m]["shared"]["promoted"])
    assert promoted == [done[winner]["shared"]["version"]] == [1]
    assert int(client.get_registered_model(f"{prefix}shared").aliases["champion"]) == 1
    events = audit_events(shared)  # one chain both machines appended to, every record sealed with the key
    moves = [event for event in events if event["event"] == "promoted"]
    assert sorted(event["voice"] for event in moves) == ["shared", "solo-a", "solo-b"]
    registered = sorted((event["voice"], event["version"]) for event in events if event["event"] == "registered")
    assert registered == [("shared", 1), ("shared", 2), ("solo-a", 1), ("solo-b", 1)]


def _queued_on_the_lock(lock_url: str, pid: int) -> bool:
    """Whether process `pid` waits for a PostgreSQL advisory lock in the lock database (its connection is named
    after its pid)."""
    import psycopg

    with psycopg.connect(lock_url, autocommit=True) as connection:
        row = connection.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND NOT l.granted AND a.application_name = %s",
            (f"narrator registry lock (pid {pid})",)).fetchone()
    return row[0] > 0


@pytest.mark.services
def test_a_registration_on_another_machine_waits_while_one_holds_the_registry_lock(shared, s3_service, tmp_path):
    from narrator.config import load_params
    from narrator.registry import registry_locked

    here = load_params(working_folder(tmp_path / "here", shared) / "params.yaml")
    there = working_folder(tmp_path / "there", shared)
    job = register_job(("queued", step_outputs(there / "steps", 0.80, b"queued sovits", b"queued gpt")))
    name = shared["registry"]["model_prefix"] + "queued"
    with registry_locked(here):
        child = start(_REGISTER, there, child_env(s3_service, there), job)
        deadline = time.monotonic() + QUEUE_TIMEOUT_S
        while not _queued_on_the_lock(shared["registry"]["lock_url"], child.pid) and child.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _queued_on_the_lock(shared["registry"]["lock_url"], child.pid), "the child should queue on the lock"
        time.sleep(1.0)  # still queued a moment later: nothing was registered meanwhile
        assert name not in {m.name for m in registry_client(shared).search_registered_models()}
    done = json.loads(finish(child)[-1])
    assert done["queued"]["version"] == 1 and done["queued"]["promoted"]


@pytest.mark.services
def test_registries_behind_different_uris_do_not_wait_for_each_other(shared, tmp_path):
    from narrator.config import load_params
    from narrator.registry import registry_lock_key, registry_locked

    one = load_params(working_folder(tmp_path / "one", shared) / "params.yaml")
    other = load_params(None, {"registry": {**shared["registry"], "tracking_uri": "http://127.0.0.1:9/other"}})
    assert registry_lock_key(one.registry.tracking_uri) == registry_lock_key(one.registry.tracking_uri + "/")
    started = time.monotonic()
    with registry_locked(one), registry_locked(other):
        assert time.monotonic() - started < QUEUE_TIMEOUT_S / 10


@pytest.mark.parametrize("registry", ["http://mlflow.example:5000", "https://mlflow.example",
                                      "postgresql://mlflow@db.example/mlflow"])
def test_a_registry_server_without_a_lock_database_is_refused(registry):
    from narrator.config import load_params
    from narrator.registry import RegistryError, registry_locked

    params = load_params(None, {"registry": {"tracking_uri": registry}})
    with pytest.raises(RegistryError, match=r"set registry\.lock_url to a PostgreSQL database"):
        with registry_locked(params):
            pass


def test_a_lock_url_that_is_not_postgresql_is_refused():
    from narrator.config import load_params
    from narrator.errors import ConfigError

    with pytest.raises(ConfigError, match="lock_url must be a postgresql:// URL"):
        load_params(None, {"registry": {"lock_url": "redis://127.0.0.1:6379/0"}})


@pytest.mark.services
def test_an_unreachable_lock_database_is_named_without_its_password(shared):
    from narrator.config import load_params
    from narrator.registry import RegistryError, registry_locked

    params = load_params(None, {"registry": {**shared["registry"],
                                             "lock_url": "postgresql://narrator:s3cret@127.0.0.1:9/locks"}})
    with pytest.raises(RegistryError, match=r"cannot reach the registry lock database .*narrator:\*\*\*@") as caught:
        with registry_locked(params):
            pass
    assert "s3cret" not in str(caught.value)


# -- a voice packaged on one machine speaks on another -----------------------------------------------------------


@pytest.fixture(scope="module")
def packaged(shared, s3_service, tmp_path_factory) -> dict:
    """A tiny random voice registered and packaged by machine A, whose base models live in S3."""
    import boto3

    from cli.demo import build_demo_bases, espeak
    from narrator.audiofile import read_audio, resample, write_wav
    from tests.deployment import REFERENCE_TEXT
    from tests.deployment import _features as reference_features

    root = tmp_path_factory.mktemp("packaged")
    bases = build_demo_bases(root / "bases")
    s3 = boto3.client("s3", endpoint_url=s3_service.url, region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing")
    hubert_prefix = f"{shared['registry']['model_prefix']}bases/hubert"
    for path in Path(bases["hubert_dir"]).rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), "narrator", f"{hubert_prefix}/{path.relative_to(bases['hubert_dir'])}")
    pretrained = {"hubert_dir": f"s3://narrator/{hubert_prefix}"}
    audio = read_audio(espeak(REFERENCE_TEXT, root / "reference.wav", "en-us+f2", 150))
    reference = write_wav(root / "reference-32k.wav", resample(audio.mono(), audio.sample_rate_hz, 32000), 32000)

    folder = working_folder(root / "machine-a", shared, pretrained=pretrained)
    features = reference_features(folder / "features", Path(reference), audio.duration_s)
    (features / "voice.json").write_text(json.dumps({"model": "resemblyzer-ge2e-256", "embedding": [0.0625] * 256}),
                                         encoding="utf-8")
    outputs = step_outputs(folder / "steps", 0.80, Path(bases["sovits"]), Path(bases["gpt"]), features=features)
    lines = finish(start(_REGISTER_AND_PACKAGE, folder, child_env(s3_service, folder),
                         register_job(("spoken", outputs))))
    return {"package": json.loads(lines[-1]), "pretrained": pretrained, "machine_a": folder}


@pytest.mark.services
def test_a_voice_packaged_on_one_machine_speaks_on_another_with_an_empty_store(packaged, shared, s3_service,
                                                                              tmp_path):
    import boto3

    from narrator.bundle import bundle_sha256, cached_bundle_dir

    result = packaged["package"]
    machine_b = working_folder(tmp_path / "machine-b", shared, pretrained=packaged["pretrained"])
    lines = finish(start(_SERVE_FROM_THE_REGISTRY, machine_b, child_env(s3_service, machine_b), "spoken"))
    served = json.loads(lines[-1])

    fetched = Path(served["bundle_dir"])
    assert fetched == cached_bundle_dir(machine_b / "bundle-cache", "spoken", 1, result["bundle_sha256"])
    assert bundle_sha256(fetched) == result["bundle_sha256"] and served["samples"] > 0
    assert served["payload_hex"] == result["payload_hex"]
    assert not (machine_b / "bentoml" / "models").exists()  # nothing came through a BentoML store
    client = registry_client(shared)
    tags = client.get_model_version(shared["registry"]["model_prefix"] + "spoken", "1").tags
    assert (tags["bundle_uri"], tags["bundle_sha256"]) == (result["bundle_uri"], result["bundle_sha256"])
    s3 = boto3.client("s3", endpoint_url=s3_service.url, region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing")
    keys = {item["Key"] for item in s3.list_objects_v2(Bucket="narrator", Prefix="mlflow/")["Contents"]}
    folder = result["bundle_uri"].rsplit("/artifacts/", 1)[1]
    assert {f"{folder}/{name}" for name in ("voice.yaml", "sovits.pth", "gpt.ckpt", "reference.wav", "sample.wav")} \
        <= {key.split("/artifacts/", 1)[-1] for key in keys}  # the bundle lies in S3


@pytest.mark.services
def test_a_fetched_bundle_that_does_not_match_its_digest_is_refused_and_a_spoilt_cache_is_fetched_again(
        packaged, shared, tmp_path):
    from narrator.bundle import BundleError, bundle_sha256, fetch_bundle
    from narrator.config import load_params

    result = packaged["package"]
    params = load_params(working_folder(tmp_path / "machine-c", shared) / "params.yaml")
    cache = tmp_path / "cache"
    with pytest.raises(BundleError, match="but the registry recorded 000000000000"):
        fetch_bundle("spoken", 1, result["bundle_uri"], "0" * 64, cache, params)
    with pytest.raises(BundleError, match="is not a sha256"):
        fetch_bundle("spoken", 1, result["bundle_uri"], "../../elsewhere", cache, params)

    fetched = fetch_bundle("spoken", 1, result["bundle_uri"], result["bundle_sha256"], cache, params)
    (fetched / "reference.wav").write_bytes(b"not the reference")
    again = fetch_bundle("spoken", 1, result["bundle_uri"], result["bundle_sha256"], cache, params)
    assert again == fetched and bundle_sha256(again) == result["bundle_sha256"]


# -- the fronts on another machine (slow: a service, a bento build) ---------------------------------------------


@pytest.mark.slow
@pytest.mark.services
def test_narrator_serve_on_another_machine_speaks_the_voice_packaged_on_the_first(packaged, shared, s3_service,
                                                                                  tmp_path):
    import signal

    import httpx

    from narrator.keys import KeyStore

    folder = working_folder(tmp_path / "machine-d", shared, pretrained=packaged["pretrained"])
    params_file = folder / "params.yaml"
    settings = yaml.safe_load(params_file.read_text())
    settings["serving"].update({"keys_file": str(folder / "keys.json"), "audit_log": str(folder / "audit.jsonl")})
    params_file.write_text(yaml.safe_dump(settings), encoding="utf-8")
    key, _ = KeyStore(folder / "keys.json").create("default", ["*"], label="tests")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "cli", "serve", "--params", str(params_file), "--host",
                               "127.0.0.1", "--port", str(port)], cwd=folder, env=child_env(s3_service, folder),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + QUEUE_TIMEOUT_S
        while time.monotonic() < deadline and server.poll() is None:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        spoken = httpx.post(f"{base}/v1/speech", headers={"Authorization": f"Bearer {key}"}, timeout=120,
                            json={"voice": "spoken", "text": "Hello there.", "seed": 1})
        assert spoken.status_code == 200, spoken.text
        assert spoken.content[:4] == b"RIFF" and len(spoken.content) > 1000
        result = packaged["package"]
        assert (folder / "bundle-cache" / "spoken" / "v1" / result["bundle_sha256"] / "voice.yaml").exists()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=45)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.services
def test_the_bento_of_a_voice_packaged_elsewhere_is_built_from_the_registry(packaged, shared, s3_service, tmp_path):
    folder = working_folder(tmp_path / "machine-e", shared, pretrained=packaged["pretrained"])
    done = subprocess.run([sys.executable, "-m", "cli", "package", "spoken", "--params", str(folder / "params.yaml")],
                          cwd=folder, env=child_env(s3_service, folder), capture_output=True, text=True,
                          timeout=CHILD_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "narrator:spoken-v1" in done.stdout
    assert "narrator-spoken:v1" in (folder / "bentoml" / "bentos" / "narrator" / "spoken-v1" / "bento.yaml").read_text()
