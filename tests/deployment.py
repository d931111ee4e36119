"""Small voices for the service's tests and load benchmark: seconds to build, registered the real way.

`build_small_deployment(work)` writes, under `work`: two tiny random voices (official file formats, espeak-ng
reference clips) in two tenants, registered in a sqlite MLflow registry as champions with payloads, packaged into
a BentoML model store, a keys file with one key per tenant, a watermark key and a params.yaml naming it all.
"""

from __future__ import annotations

import os
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

    def env(self, port: int) -> dict[str, str]:
        return {**os.environ, "NARRATOR_PARAMS": str(self.params_file), "BENTOML_HOME": str(self.bentoml_home),
                "NARRATOR_WATERMARK_KEY": self.watermark_key, "BENTOML_DO_NOT_TRACK": "true",
                "NARRATOR_SERVING_PORT": str(port)}


def build_small_deployment(work: str | Path, overrides: dict | None = None) -> Deployment:
    from components.package import BundleReference, save_to_store, store_tag, write_bundle
    from components.register import CHAMPION, TENANT_TAG, ensure_registered_model, payload_for, registry_client
    from narrator.audiofile import read_audio, resample, write_wav
    from narrator.config import load_params
    from narrator.demo import build_demo_bases, espeak
    from serving.auth import KeyStore

    work = Path(work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    settings = {
        "registry": {"tracking_uri": f"sqlite:///{work / 'mlflow.db'}", "audit_log": str(work / "registry.jsonl")},
        "package": {"bentoml_home": str(work / "bentoml")},
        "serving": {"gpus": 0, "keys_file": str(work / "keys.json"), "audit_log": str(work / "audit.jsonl"),
                    "memory_budget_mb": 64, "max_voices": 2},
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
    payloads, tenants = {}, {}
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
        payload_hex = f"{payload_for(voice, version, params):08x}"
        reference = BundleReference(Path(reference_wav), REFERENCE_TEXT, "en", round(audio.duration_s, 2))
        info = write_bundle(bundle, voice, version, payload_hex, Path(voice_bases["sovits"]), Path(voice_bases["gpt"]),
                            reference, params)
        tag = save_to_store(bundle, store_tag(voice, version), info, params)
        client.set_model_version_tag(name, str(version), "payload_hex", payload_hex)
        client.set_model_version_tag(name, str(version), "bento", tag)
        client.set_registered_model_alias(name, CHAMPION, str(version))
        payloads[voice], tenants[voice] = payload_hex, tenant
    store = KeyStore(params.serving.keys_file)
    keys = {tenant: store.create(tenant, ["*"], label="tests")[0] for tenant in sorted(set(tenants.values()))}
    return Deployment(params_file=params_file, bentoml_home=work / "bentoml", watermark_key="test-serving-key",
                      keys=keys, payloads=payloads, tenants=tenants)
