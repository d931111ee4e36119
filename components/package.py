"""`narrator package`: turn a registered voice version into the bundle a server loads, and prove it speaks.

The bundle is one folder, kept in the BentoML model store as `narrator-VOICE:vVERSION` (the serving step builds its
bento from these) and written to `--out`/voice (with `--out`/package.json, the result):

    voice.yaml      what a server needs to know: voice, version, registered model, watermark payload, reference
                    text and language, the base models it still needs (HuBERT, BERT, SV) and every file's sha256
    sovits.pth      the fine-tuned SoVITS (official container)
    gpt.ckpt        the fine-tuned GPT (official container)
    reference.wav   the 3-10 s reference clip (32 kHz) the voice speaks from, from the narrator's training data
    voice.json      the narrator's speaker fingerprint (the features step's)
    sample.wav      `package.sample_text`, spoken by the bundle and watermarked with the version's payload

The registered version gets the tag `bento` (the store tag), so `narrator lineage` ends at the packaged voice.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from narrator.config import Params
from narrator.errors import NarratorError
from narrator.log import get_logger
from narrator.storage import sha256_file

log = get_logger("package")

BUNDLE_FORMAT = 1
STORE_PREFIX = "narrator-"


class PackageError(NarratorError):
    """The voice cannot be packaged (not registered, or its files are missing)."""


@dataclass
class PackageResult:
    voice: str
    version: int
    store_tag: str  # BentoML model store tag, e.g. narrator-alice:v3
    bundle_dir: str  # the copy under --out
    sample: str  # the watermarked sample
    payload_hex: str
    sample_watermark: dict  # detection of the mark in the sample: {"detected", "payload", "score"}

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)


def store_tag(voice: str, version: int) -> str:
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
                 voice_json: Path | None = None) -> dict:
    """Write a voice bundle: the two models, the reference clip and `voice.yaml` (returned as a dict), the one
    format serving and `speak_sample` read."""
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
    (bundle / "voice.yaml").write_text(yaml.safe_dump(info, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return info


def _bundle_from_features(bundle: Path, voice: str, version: int, payload_hex: str, features_dir: Path,
                          sovits_path: Path, gpt_path: Path, params: Params) -> dict:
    """The bundle of a fine-tuned voice, its reference picked from the features step's training segments."""
    from components.evaluate import pick_reference
    from components.features import training_entries

    manifest = json.loads((features_dir / "manifest.json").read_text(encoding="utf-8"))
    picked = pick_reference(training_entries(manifest))
    reference = BundleReference(Path(picked.wav_32k), picked.text, picked.language, picked.duration_s)
    return write_bundle(bundle, voice, version, payload_hex, sovits_path, gpt_path, reference, params,
                        sovits_version=manifest.get("sovits_version"), voice_json=features_dir / "voice.json")


def bundle_manifest(bundle: Path) -> dict:
    """A bundle's voice.yaml."""
    return yaml.safe_load((Path(bundle) / "voice.yaml").read_text(encoding="utf-8"))


def bundle_reference(synth, bundle: Path, manifest: dict):
    """The bundle's reference clip prepared as `synth`'s prompt (a `models.tts.Reference`)."""
    from narrator.audiofile import read_audio

    ref = read_audio(Path(bundle) / manifest["reference"]["file"])
    return synth.reference(ref.mono(), ref.sample_rate_hz, manifest["reference"]["text"],
                           manifest["reference"]["language"])


def speak_sample(bundle: Path, params: Params, text: str, language: str) -> tuple[Path, dict]:
    """Load the bundle as a server would, speak `text`, watermark it with the bundle's payload; the sample and the
    detection result. Needs the watermark key (`models.watermark.load_key`)."""
    from components.evaluate import synthesizer
    from components.watermark import format_payload
    from models.watermark import detect, embed, load_key
    from narrator.audiofile import write_wav

    key = load_key()
    info = bundle_manifest(bundle)
    synth = synthesizer(str(bundle / "sovits.pth"), str(bundle / "gpt.ckpt"), params)
    reference = bundle_reference(synth, bundle, info)
    speech = synth.speak(text, reference, language, seed=0)
    payload = int(info["watermark_payload"], 16)
    marked = embed(speech.samples, speech.sample_rate_hz, payload, key)
    write_wav(bundle / "sample.wav", marked, speech.sample_rate_hz)
    found = detect(marked, speech.sample_rate_hz, key)
    return bundle / "sample.wav", {"detected": bool(found.detected), "payload": format_payload(found.payload),
                                   "score": round(float(found.score), 3)}


def save_to_store(bundle: Path, tag: str, info: dict, params: Params) -> str:
    """Store a written bundle in the BentoML model store (`package.bentoml_home`) as `tag`; the stored tag."""
    if params.package.bentoml_home:
        os.environ["BENTOML_HOME"] = str(Path(params.package.bentoml_home).expanduser().resolve())
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


def package(voice: str, version: int, features_dir: str | Path, sovits_path: str | Path, gpt_path: str | Path,
            out_dir: str | Path, params: Params) -> PackageResult:
    """Bundle registered version `version` of `voice` (its files from the pipeline's steps), speak a watermarked
    sample with it, save it to the BentoML store and tag the registered version with the store tag."""
    from components.register import model_name, payload_for, registry_client
    from components.watermark import format_payload

    features_dir, out_dir = Path(features_dir), Path(out_dir)
    for path, what in ((Path(sovits_path), "SoVITS"), (Path(gpt_path), "GPT"), (features_dir / "manifest.json",
                                                                                 "features manifest")):
        if not path.exists():
            raise PackageError(f"{path}: the {what} file is missing; run the pipeline steps before `package`")
    payload_hex = format_payload(payload_for(voice, version, params))
    bundle = out_dir / "voice"
    if bundle.exists():
        shutil.rmtree(bundle)
    info = _bundle_from_features(bundle, voice, version, payload_hex, features_dir, Path(sovits_path),
                                 Path(gpt_path), params)
    sample, found = speak_sample(bundle, params, params.package.sample_text, params.package.sample_language)
    if not (found["detected"] and found["payload"] == payload_hex):
        log.warning("the packaged sample's watermark was not read back whole (it is short); the mark is present: %s",
                    found["detected"])
    tag = save_to_store(bundle, store_tag(voice, version), info, params)
    client = registry_client(params)
    name = model_name(voice, params)
    client.set_model_version_tag(name, str(version), "bento", tag)
    client.set_model_version_tag(name, str(version), "sample_sha256", sha256_file(sample))
    result = PackageResult(voice=voice, version=version, store_tag=tag, bundle_dir=str(bundle), sample=str(sample),
                           payload_hex=payload_hex, sample_watermark=found)
    (out_dir / "package.json").write_text(result.to_json(), encoding="utf-8")
    log.info("packaged %s version %d as %s", voice, version, tag)
    return result
