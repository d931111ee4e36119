"""Small voices for the service's tests (tests/test_serving.py) and load benchmark (bench/serve_load.py): seconds
to build, registered the real way.

`build_small_deployment(work)` writes, under `work`: two tiny random voices (official file formats, espeak-ng
reference clips) in two tenants, registered in a sqlite MLflow registry as champions with payloads, packaged the
way the package step packages (from a features folder whose one training segment is the reference clip) into a
BentoML model store and the registry's artifact store (what the service fetches), a keys file with one key per
tenant, a watermark key and a params.yaml naming it all.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

VOICES = {"alice": ("acme", "en-us+f2", 0), "bob": ("globex", "en-us+m3", 1)}  # voice: (tenant, espeak voice, seed)
REFERENCE_TEXT = "The lighthouse keeper climbed the spiral stairs before the storm arrived."


@dataclass
class Deployment:
    params_file: Path
    bentoml_home: Path
    watermark_key: str
    keys: dict[str, str]  # tenant -> API key
    payloads: dict[str, str]  # voice -> payload hex
    tenants: dict[str, str]  # voice -> tenant
    features: dict[str, Path]  # voice -> its features folder (what evaluation speaks from)
    models: dict[str, tuple[Path, Path]]  # voice -> (sovits.pth, gpt.ckpt)

    def env(self, port: int) -> dict[str, str]:
        return {**os.environ, "NARRATOR_PARAMS": str(self.params_file), "BENTOML_HOME": str(self.bentoml_home),
                "NARRATOR_WATERMARK_KEY": self.watermark_key, "BENTOML_DO_NOT_TRACK": "true",
                "NARRATOR_SERVING_PORT": str(port)}


def build_small_deployment(work: str | Path, overrides: dict | None = None) -> Deployment:
    from cli.demo import build_demo_bases, espeak
    from components.package import bundle_from_features
    from narrator.audiofile import read_audio, resample, write_wav
    from narrator.bundle import publish_bundle, save_to_store, store_tag
    from narrator.config import load_params
    from narrator.registry import (CHAMPION, TENANT_TAG, ensure_registered_model, format_payload, payload_for,
                                   registry_client)
    from narrator.keys import KeyStore

    work = Path(work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    settings = {
        "registry": {"tracking_uri": f"sqlite:///{work / 'mlflow.db'}", "audit_log": str(work / "registry.jsonl")},
        "package": {"bentoml_home": str(work / "bentoml")},
        "serving": {"gpus": 0, "keys_file": str(work / "keys.json"), "audit_log": str(work / "audit.jsonl"),
                    "memory_budget_mb": 64, "max_voices": 2, "bundle_cache": str(work / "bundle-cache")},
    }
    for section, values in (overrides or {}).items():
        settings.setdefault(section, {}).update(values)
    bases = build_demo_bases(work / "bases-shared")
    settings["pretrained"] = {"hubert_dir": bases["hubert_dir"]}
    params_file = work / "params.yaml"
    params_file.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
    params = load_params(params_file)
    os.environ["BENTOML_HOME"] = str(work / "bentoml")

    client = registry_client(params)
    payloads, tenants, features, models = {}, {}, {}, {}
    for voice, (tenant, espeak_voice, seed) in VOICES.items():
        voice_bases = build_demo_bases(work / f"bases-{voice}", seed=seed)
        raw = espeak(REFERENCE_TEXT, work / f"{voice}-ref.wav", espeak_voice, 150, seed=seed)
        audio = read_audio(raw)
        reference_wav = write_wav(work / f"{voice}-ref-32k.wav", resample(audio.mono(), audio.sample_rate_hz, 32000),
                                  32000)
        name = params.registry.model_prefix + voice
        ensure_registered_model(client, name, voice)
        client.set_registered_model_tag(name, TENANT_TAG, tenant)
        bundle = work / "bundles" / voice
        created = client.create_model_version(name, str(bundle), tags={"voice": voice, "verdict": "pass",
                                                                       "metric.speaker_similarity": "0.8",
                                                                       "metric.rtf": "0.5"})
        version = int(created.version)
        payload_hex = format_payload(payload_for(voice, version, params))
        features[voice] = _features(work / f"features-{voice}", Path(reference_wav), audio.duration_s)
        models[voice] = Path(voice_bases["sovits"]), Path(voice_bases["gpt"])
        info = bundle_from_features(bundle, voice, version, payload_hex, features[voice], *models[voice], params)
        tag = save_to_store(bundle, store_tag(voice, version), info, params)
        publish_bundle(bundle, voice, version, params)
        client.set_model_version_tag(name, str(version), "payload_hex", payload_hex)
        client.set_model_version_tag(name, str(version), "bento", tag)
        client.set_registered_model_alias(name, CHAMPION, str(version))
        payloads[voice], tenants[voice] = payload_hex, tenant
    store = KeyStore(params.serving.keys_file)
    keys = {tenant: store.create(tenant, ["*"], label="tests")[0] for tenant in sorted(set(tenants.values()))}
    return Deployment(params_file=params_file, bentoml_home=work / "bentoml", watermark_key="test-serving-key",
                      keys=keys, payloads=payloads, tenants=tenants, features=features, models=models)


def _features(folder: Path, reference_wav: Path, duration_s: float) -> Path:
    """A features folder whose one training segment is the reference clip (all that evaluation and the package
    step read of it to choose the voice's reference)."""
    from components.features import FeatureEntry, FeaturesManifest

    entry = FeatureEntry(name="reference", text=REFERENCE_TEXT, language="en", phones=[], ids=[], word2ph=[],
                         duration_s=round(duration_s, 2), wav_32k=str(reference_wav), hubert_frames=0,
                         semantic_frames=0, spec_frames=0, has_sv=False)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(FeaturesManifest(version=1, sovits_version="v2", models={},
                                                           entries=[entry]).to_json(), encoding="utf-8")
    return folder


SERVICE_READY_TIMEOUT_S = 120.0  # two workers on a busy 2-core machine take their time to import torch


def bare_service(work: Path, serving: dict) -> tuple[dict[str, str], str]:
    """A service with no voices, for what needs no synthesis (keys, limits, health): params.yaml under `work` with
    `serving` settings over a keys file and an empty sqlite registry (made now, before several workers open it).
    Returns the environment to serve with (NARRATOR_PARAMS, a watermark key, BENTOML_HOME) and one API key."""
    import yaml

    from narrator.config import load_params
    from narrator.keys import KeyStore
    from narrator.registry import champions

    params_file = work / "params.yaml"
    params_file.write_text(yaml.safe_dump({
        "registry": {"tracking_uri": f"sqlite:///{work / 'mlflow.db'}", "audit_log": str(work / "registry.jsonl")},
        "serving": {"gpus": 0, "keys_file": str(work / "keys.json"), "audit_log": str(work / "audit.jsonl"),
                    **serving}}))
    params = load_params(params_file)
    champions(params)
    key, _ = KeyStore(params.serving.keys_file).create("acme", ["*"], label="tests")
    env = {**os.environ, "NARRATOR_PARAMS": str(params_file), "BENTOML_HOME": str(work / "bentoml"),
           "NARRATOR_WATERMARK_KEY": "test-bare-service", "BENTOML_DO_NOT_TRACK": "true"}
    return env, key


@contextmanager
def running_service(env: dict[str, str], port: int, log: Path, command: list[str] | None = None) -> Iterator[str]:
    """A real service on 127.0.0.1:`port` with `env` (NARRATOR_PARAMS, the watermark key, ...), its output in
    `log`: `command`, by default `bentoml serve serving.service:NarratorService` on that port. Yields its base URL
    once /readyz answers 200, stops it (the whole process group, workers included) after."""
    import httpx

    repo = Path(__file__).resolve().parents[1]
    command = command or [sys.executable, "-m", "bentoml", "serve", "serving.service:NarratorService", "--host",
                          "127.0.0.1", "--port", str(port), "--working-dir", str(repo)]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVICE_READY_TIMEOUT_S
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the service did not become ready:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield base
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
