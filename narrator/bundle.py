"""The voice bundle: one folder holding everything a server needs to speak with one registered voice version.

Written by the package step (`components/package.py`), kept in the BentoML model store as `narrator-VOICE:vN`
(`store_tag`), read by the service and by the packaged sample's synthesis (`models.tts.load_bundle`):

    voice.yaml      voice, version, registered model, watermark payload, reference text and language, the base
                    models it still needs (HuBERT, BERT, SV) and every file's sha256 (`BUNDLE_FORMAT` 1)
    sovits.pth      the fine-tuned SoVITS (official container)
    gpt.ckpt        the fine-tuned GPT (official container)
    reference.wav   the 3-10 s reference clip (32 kHz) the voice speaks from, from the narrator's training data
    voice.json      the narrator's speaker fingerprint (the features step's), when there is one
    sample.wav      the package step's watermarked sample
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from narrator.config import Params
from narrator.errors import NarratorError
from narrator.storage import sha256_file

BUNDLE_FORMAT = 1
STORE_PREFIX = "narrator-"
MANIFEST = "voice.yaml"


class BundleError(NarratorError):
    """A bundle is missing, incomplete or not in the model store; the message says what to do."""


def store_tag(voice: str, version: int) -> str:
    """The BentoML model store tag of a voice version's bundle, e.g. narrator-alice:v3."""
    return f"{STORE_PREFIX}{voice}:v{version}"


@dataclass(frozen=True)
class BundleReference:
    """The reference clip a bundle speaks from (its timbre and prompt)."""

    wav_32k: Path
    text: str
    language: str
    duration_s: float


def write_bundle(bundle: Path, voice: str, version: int, payload_hex: str, sovits_path: Path, gpt_path: Path,
                 reference: BundleReference, params: Params, sovits_version: str | None = None,
                 voice_json: Path | None = None) -> dict[str, Any]:
    """Write a voice bundle: the two models, the reference clip and `voice.yaml` (returned as a dict)."""
    bundle.mkdir(parents=True, exist_ok=True)
    shutil.copy2(sovits_path, bundle / "sovits.pth")
    shutil.copy2(gpt_path, bundle / "gpt.ckpt")
    shutil.copy2(reference.wav_32k, bundle / "reference.wav")
    if voice_json is not None and voice_json.exists():
        shutil.copy2(voice_json, bundle / "voice.json")
    pre = params.pretrained
    info = {
        "format": BUNDLE_FORMAT, "voice": voice, "version": version,
        "registered_model": params.registry.model_prefix + voice, "watermark_payload": payload_hex,
        "sovits_version": sovits_version,
        "reference": {"file": "reference.wav", "text": reference.text, "language": reference.language,
                      "duration_s": reference.duration_s},
        "base_models": {"hubert_dir": pre.hubert_dir, "bert_dir": pre.bert_dir, "sv_checkpoint": pre.sv_checkpoint},
        "sha256": {name: sha256_file(bundle / name) for name in ("sovits.pth", "gpt.ckpt", "reference.wav")},
    }
    (bundle / MANIFEST).write_text(yaml.safe_dump(info, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return info


def read_manifest(bundle: str | Path) -> dict[str, Any]:
    """A bundle's voice.yaml."""
    path = Path(bundle) / MANIFEST
    if not path.exists():
        raise BundleError(f"{path} not found: {bundle} is not a voice bundle; package the voice with `narrator "
                          "package VOICE --version N ...`")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def use_model_store(params: Params) -> None:
    """Point BentoML at `package.bentoml_home` (when set) before its model store is used."""
    if params.package.bentoml_home:
        os.environ["BENTOML_HOME"] = str(Path(params.package.bentoml_home).expanduser().resolve())
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")


def save_to_store(bundle: Path, tag: str, info: dict[str, Any], params: Params) -> str:
    """Store a written bundle in the BentoML model store (`package.bentoml_home`) as `tag`; the stored tag."""
    use_model_store(params)
    import bentoml

    try:
        bentoml.models.delete(tag)  # re-packaging the same version replaces it
    except bentoml.exceptions.NotFound:
        pass
    labels = {"voice": info["voice"], "version": str(info["version"]), "payload": info["watermark_payload"]}
    metadata = {"voice_yaml": yaml.safe_dump(info, sort_keys=False, allow_unicode=True)}  # plain types only
    with bentoml.models.create(tag, labels=labels, metadata=metadata) as model:
        for item in bundle.iterdir():
            shutil.copy2(item, Path(model.path) / item.name)
    return str(model.tag)


def stored_bundle(tag: str) -> Path:
    """Where the bundle stored as `tag` lies in the BentoML model store."""
    import bentoml

    try:
        return Path(bentoml.models.get(tag).path)
    except bentoml.exceptions.NotFound:
        raise BundleError(f"the bundle {tag} is not in the BentoML model store (package.bentoml_home / "
                          "$BENTOML_HOME); package the voice again") from None
