"""`narrator package`: turn a registered voice version into the bundle a server loads, prove it speaks, and build
the service's bento around a voice's champion.

With a version (the pipeline's last step): the bundle (`narrator/bundle.py`: voice.yaml, the two fine-tuned models,
the reference clip, the speaker fingerprint) is written to `--out`/voice, speaks `package.sample_text`
watermarked with the version's payload (`sample.wav`), is published to the registry's artifact store (the version's
tags `bundle_uri` and `bundle_sha256`: what the service fetches, on any machine), is kept in the BentoML model store
as `narrator-VOICE:vN`, and the registered version gets the tag `bento` (the store tag), so `narrator lineage` ends
at the packaged voice. `--out`/package.json holds the result.

Without a version: the bento is the service of bentofile.yaml plus the champion's bundle in its `models`, labelled
with the voice and version, tagged `narrator:VOICE-vN`. Built offline (`python.lock_packages: false`);
`bentoml serve narrator:VOICE-vN` or `narrator serve --bento narrator:VOICE-vN` runs it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from components.evaluate import pick_reference
from components.features import read_manifest, training_entries
from components.register import registered_lexicon
from narrator.bundle import (BUNDLE_SHA256_TAG, BUNDLE_URI_TAG, BundleError, BundleReference, fetch_bundle,
                             publish_bundle, save_to_store, store_tag, use_model_store, write_bundle)
from narrator.bundle import read_manifest as read_bundle_manifest
from narrator.config import Params
from narrator.errors import NarratorError
from narrator.lexicon import Lexicon
from narrator.log import get_logger
from narrator.registry import (RegistryError, actor, champion, format_payload, model_name, payload_for,
                               registry_client, version_audit)
from narrator.storage import sha256_file

log = get_logger("package")

REPO_ROOT = Path(__file__).resolve().parents[1]  # where bentofile.yaml and the service's code are


class PackageError(NarratorError):
    """The voice cannot be packaged (not registered, or its files are missing)."""


class BentoBuildError(NarratorError):
    """The bento cannot be built (no champion, voice not packaged, bad bentofile); the message says what to do."""

    exit_code = 2


@dataclass
class PackageResult:
    voice: str
    version: int
    store_tag: str  # BentoML model store tag, e.g. narrator-alice:v3
    bundle_dir: str  # the copy under --out
    sample: str  # the watermarked sample
    payload_hex: str
    sample_watermark: dict  # detection of the mark in the sample: {"detected", "payload", "score"}
    bundle_uri: str = ""  # the bundle in the registry's artifact store (what the service fetches)
    bundle_sha256: str = ""  # its digest (narrator.bundle.bundle_sha256)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)


@dataclass
class BuiltBento:
    tag: str
    voice: str
    version: int
    model: str
    path: str


def bundle_from_features(bundle: Path, voice: str, version: int, payload_hex: str, features_dir: Path,
                          sovits_path: Path, gpt_path: Path, params: Params, lexicon: Lexicon | None = None) -> dict:
    """The bundle of a fine-tuned voice, its reference the training segment evaluation spoke from, with its
    registered pronunciation lexicon (when it has one)."""
    manifest = read_manifest(features_dir)
    picked = pick_reference(training_entries(manifest))
    reference = BundleReference(Path(picked.wav_32k), picked.text, picked.language, picked.duration_s)
    return write_bundle(bundle, voice, version, payload_hex, sovits_path, gpt_path, reference, params,
                        sovits_version=manifest.get("sovits_version"), voice_json=features_dir / "voice.json",
                        lexicon=lexicon)


def speak_sample(bundle: Path, params: Params, text: str, language: str) -> tuple[Path, dict]:
    """Load the bundle as the service does, speak `text`, watermark it with the bundle's payload; the sample and
    the detection result. Needs the watermark key (`models.watermark.load_key`)."""
    from models.tts import load_bundle
    from models.watermark import detect, embed, load_key
    from narrator.audiofile import write_wav

    key = load_key()
    voice = load_bundle(bundle, params)
    speech = voice.synth.speak(text, voice.reference, language, seed=0)
    payload = int(voice.manifest["watermark_payload"], 16)
    marked = embed(speech.samples, speech.sample_rate_hz, payload, key)
    write_wav(bundle / "sample.wav", marked, speech.sample_rate_hz)
    found = detect(marked, speech.sample_rate_hz, key)
    return bundle / "sample.wav", {"detected": bool(found.detected), "payload": format_payload(found.payload),
                                   "score": round(float(found.score), 3)}


def package(voice: str, version: int, features_dir: str | Path, sovits_path: str | Path, gpt_path: str | Path,
            out_dir: str | Path, params: Params) -> PackageResult:
    """Bundle registered version `version` of `voice` (its files from the pipeline's steps), speak a watermarked
    sample with it, save it to the BentoML store and tag the registered version with the store tag."""
    features_dir, out_dir = Path(features_dir), Path(out_dir)
    for path, what in ((Path(sovits_path), "SoVITS"), (Path(gpt_path), "GPT"), (features_dir / "manifest.json",
                                                                                 "features manifest")):
        if not path.exists():
            raise PackageError(f"{path}: the {what} file is missing; run the pipeline steps before `package`")
    payload_hex = format_payload(payload_for(voice, version, params))
    bundle = out_dir / "voice"
    if bundle.exists():
        shutil.rmtree(bundle)
    info = bundle_from_features(bundle, voice, version, payload_hex, features_dir, Path(sovits_path),
                                 Path(gpt_path), params, registered_lexicon(voice, version, params))
    sample, found = speak_sample(bundle, params, params.package.sample_text, params.package.sample_language)
    if not (found["detected"] and found["payload"] == payload_hex):
        log.warning("the packaged sample's watermark was not read back whole (it is short); the mark is present: %s",
                    found["detected"])
    published = publish_bundle(bundle, voice, version, params)
    tag = save_to_store(bundle, store_tag(voice, version), info, params)
    client = registry_client(params)
    name = model_name(voice, params)
    client.set_model_version_tag(name, str(version), "bento", tag)
    client.set_model_version_tag(name, str(version), "sample_sha256", sha256_file(sample))
    # the bundle the service will fetch, on the record: `narrator lineage --verify` compares the tags with it
    version_audit(params, "packaged", name, voice, version, actor(), bento=tag,
                  **{BUNDLE_URI_TAG: published.uri, BUNDLE_SHA256_TAG: published.sha256})
    result = PackageResult(voice=voice, version=version, store_tag=tag, bundle_dir=str(bundle), sample=str(sample),
                           payload_hex=payload_hex, sample_watermark=found, bundle_uri=published.uri,
                           bundle_sha256=published.sha256)
    (out_dir / "package.json").write_text(result.to_json(), encoding="utf-8")
    log.info("packaged %s version %d as %s and %s", voice, version, tag, published.uri)
    return result


# -- the service's bento -----------------------------------------------------------------------------------------


def champion_bundle(voice: str, params: Params) -> tuple[int, str]:
    """(champion version, its BentoML model tag) of `voice`."""
    try:
        best = champion(voice, params)
    except RegistryError as error:
        raise BentoBuildError(str(error)) from None
    if best is None:
        raise BentoBuildError(f"{voice} has no champion yet; promote a version (`narrator approve {voice} N --by "
                              "NAME`) before building its bento")
    tag = best.tags.get("bento")
    if not tag:
        raise BentoBuildError(f"{best.model_name} v{best.version} (the champion) is not packaged; run `narrator "
                              f"package {voice} --version {best.version} --features ... --sovits ... --gpt ... --out "
                              "DIR` first")
    return best.version, tag


def _store_published_bundle(voice: str, version: int, model_tag: str, params: Params) -> None:
    """Put the champion's bundle, fetched from the registry's artifact store into a temporary folder (checked by
    digest), into this machine's BentoML model store as `model_tag`."""
    tags = champion(voice, params).tags
    uri, digest = tags.get(BUNDLE_URI_TAG), tags.get(BUNDLE_SHA256_TAG)
    if not (uri and digest):
        raise BentoBuildError(f"{model_tag} is not in the BentoML model store and the registry names no published "
                              f"bundle for it; package the voice again (`narrator package {voice} --version "
                              f"{version} ...`) or set package.bentoml_home")
    with tempfile.TemporaryDirectory(prefix="narrator-bundle-") as cache:
        try:
            bundle = fetch_bundle(voice, version, uri, digest, cache, params)
        except BundleError as error:
            raise BentoBuildError(str(error)) from None
        save_to_store(bundle, model_tag, read_bundle_manifest(bundle), params)


def build_bento(voice: str, params: Params, bentofile: str | Path) -> BuiltBento:
    """Build `narrator:VOICE-vN` from `bentofile` (relative: to the repository; `serving.bentofile`) with the
    champion's bundle included (from this machine's BentoML model store, else from the registry's artifact
    store)."""
    use_model_store(params)
    import bentoml

    version, model_tag = champion_bundle(voice, params)
    try:
        bentoml.models.get(model_tag)
    except bentoml.exceptions.NotFound:  # packaged on another machine: fetch its published bundle
        _store_published_bundle(voice, version, model_tag, params)
    path = Path(bentofile)
    if not path.is_absolute():
        path = REPO_ROOT / path
    if not path.exists():
        raise BentoBuildError(f"{path} not found; the service's bentofile.yaml lives at the repository root")
    spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not spec.get("service"):
        raise BentoBuildError(f"{path} names no service: add `service: serving.service:NarratorService`")
    spec["labels"] = {**(spec.get("labels") or {}), "voice": voice, "voice_version": str(version)}
    spec["models"] = list(spec.get("models") or []) + [model_tag]
    name = spec.get("name", "narrator")
    try:  # building the same champion again replaces its bento
        bentoml.bentos.delete(f"{name}:{voice}-v{version}")
    except bentoml.exceptions.NotFound:
        pass
    with tempfile.TemporaryDirectory() as tmp:
        resolved = Path(tmp) / "bentofile.yaml"
        resolved.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
        bento = bentoml.bentos.build_bentofile(str(resolved), version=f"{voice}-v{version}",
                                               build_ctx=str(REPO_ROOT))
    return BuiltBento(tag=str(bento.tag), voice=voice, version=version, model=model_tag, path=str(bento.path))
