"""The voice bundle: one folder holding everything a server needs to speak with one registered voice version.

Written by the package step (`components/package.py`), published to the registry's artifact store (`publish_bundle`:
an artifact folder of the version's register run, the version tagged `bundle_uri` and `bundle_sha256`) and kept in
the BentoML model store as `narrator-VOICE:vN` (`store_tag`, what a bento build includes). The service fetches it
from the artifact store into a local cache on whichever machine it runs (`fetch_bundle`, verified by digest) and
reads it, as the packaged sample's synthesis does, with `models.tts.load_bundle`:

    voice.yaml      voice, version, registered model, watermark payload, reference text and language, the base
                    models it still needs (HuBERT, BERT, SV) and every file's sha256 (`BUNDLE_FORMAT` 1)
    sovits.pth      the fine-tuned SoVITS (official container)
    gpt.ckpt        the fine-tuned GPT (official container)
    reference.wav   the 3-10 s reference clip (32 kHz) the voice speaks from, from the narrator's training data
    voice.json      the narrator's speaker fingerprint (the features step's), when there is one
    sample.wav      the package step's watermarked sample
    lexicon.yaml    the version's pronunciation lexicon (`narrator/lexicon.py`), when it was registered with one;
                    voice.yaml's `lexicon` names it with its sha256 (the version's `lexicon_sha256`)
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from narrator.config import Params
from narrator.errors import NarratorError
from narrator.lexicon import LEXICON_FILE, Lexicon, parse_lexicon
from narrator.storage import sha256_file

BUNDLE_FORMAT = 1
STORE_PREFIX = "narrator-"
MANIFEST = "voice.yaml"
BUNDLE_ARTIFACTS = "bundle"  # the artifact folder of a published bundle: bundle/<first digits of its digest>
ARTIFACT_DIGEST_CHARS = 16  # of the bundle digest, naming its artifact folder (one folder per content)
BUNDLE_RUN = "package"  # the run a bundle is published to when its version has no register run ...
BUNDLE_EXPERIMENT = "narrator-bundles"  # ... in this experiment
BUNDLE_URI_TAG, BUNDLE_SHA256_TAG = "bundle_uri", "bundle_sha256"  # model version tags of a published bundle
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


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
                 voice_json: Path | None = None, lexicon: Lexicon | None = None) -> dict[str, Any]:
    """Write a voice bundle: the two models, the reference clip, the lexicon (when given) and `voice.yaml`
    (returned as a dict)."""
    bundle.mkdir(parents=True, exist_ok=True)
    shutil.copy2(sovits_path, bundle / "sovits.pth")
    shutil.copy2(gpt_path, bundle / "gpt.ckpt")
    shutil.copy2(reference.wav_32k, bundle / "reference.wav")
    if voice_json is not None and voice_json.exists():
        shutil.copy2(voice_json, bundle / "voice.json")
    files = ["sovits.pth", "gpt.ckpt", "reference.wav"]
    if lexicon is not None:
        (bundle / LEXICON_FILE).write_text(lexicon.text, encoding="utf-8")
        files.append(LEXICON_FILE)
    pre = params.pretrained
    info = {
        "format": BUNDLE_FORMAT, "voice": voice, "version": version,
        "registered_model": params.registry.model_prefix + voice, "watermark_payload": payload_hex,
        "sovits_version": sovits_version,
        "reference": {"file": "reference.wav", "text": reference.text, "language": reference.language,
                      "duration_s": reference.duration_s},
        "base_models": {"hubert_dir": pre.hubert_dir, "bert_dir": pre.bert_dir, "sv_checkpoint": pre.sv_checkpoint},
        "sha256": {name: sha256_file(bundle / name) for name in files},
    }
    if lexicon is not None:
        info["lexicon"] = {"file": LEXICON_FILE, "sha256": lexicon.sha256}
    (bundle / MANIFEST).write_text(yaml.safe_dump(info, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return info


def read_manifest(bundle: str | Path) -> dict[str, Any]:
    """A bundle's voice.yaml."""
    path = Path(bundle) / MANIFEST
    if not path.exists():
        raise BundleError(f"{path} not found: {bundle} is not a voice bundle; package the voice with `narrator "
                          "package VOICE --version N ...`")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def read_bundle_lexicon(bundle: str | Path, manifest: dict[str, Any]) -> Lexicon | None:
    """The pronunciation lexicon of a bundle (None when voice.yaml names none), checked against its sha256."""
    entry = manifest.get("lexicon")
    if not entry:
        return None
    path = Path(bundle) / entry["file"]
    if not path.is_file():
        raise BundleError(f"{path} is missing, but {MANIFEST} lists it; package the voice again")
    text = path.read_text(encoding="utf-8")
    lexicon = parse_lexicon(text, str(path))
    if lexicon.sha256 != entry["sha256"]:
        raise BundleError(f"{path} has sha256 {lexicon.sha256[:12]}, but {MANIFEST} recorded {entry['sha256'][:12]}: "
                          "the lexicon changed after packaging; package the voice again")
    return lexicon


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


# -- the bundle in the registry's artifact store -----------------------------------------------------------------


@dataclass(frozen=True)
class PublishedBundle:
    """A bundle in the registry's artifact store."""

    uri: str  # its artifact folder, e.g. mlflow-artifacts:/1/RUN/artifacts/bundle/0123abcd... or s3://...
    sha256: str  # `bundle_sha256` of its files
    run_id: str  # the run holding it


def bundle_sha256(bundle: str | Path) -> str:
    """The digest of a bundle folder: sha256 over the sorted lines "relative/path<TAB>sha256 of the file"; it
    changes when any file is added, removed, renamed or changed."""
    root = Path(bundle)
    lines = sorted(f"{path.relative_to(root).as_posix()}\t{sha256_file(path)}\n" for path in root.rglob("*")
                   if path.is_file())
    return hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()


def publish_bundle(bundle: Path, voice: str, version: int, params: Params) -> PublishedBundle:
    """Log a written bundle to the registry's artifact store (`registry.tracking_uri`: beside a sqlite database,
    or the server's artifact store, e.g. S3) under its registered version's register run (a run "package" when
    the version has none), in a folder named by its digest so a published bundle never changes; tag the version
    with `bundle_uri` and `bundle_sha256`."""
    from narrator.registry import model_name, model_version, registry_client

    client = registry_client(params)
    name = model_name(voice, params)
    run_id = model_version(client, name, version).run_id or _bundle_run(client, name, voice, version, params)
    digest = bundle_sha256(bundle)
    folder = f"{BUNDLE_ARTIFACTS}/{digest[:ARTIFACT_DIGEST_CHARS]}"
    client.log_artifacts(run_id, str(bundle), folder)
    uri = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{folder}"
    client.set_model_version_tag(name, str(version), BUNDLE_URI_TAG, uri)
    client.set_model_version_tag(name, str(version), BUNDLE_SHA256_TAG, digest)
    return PublishedBundle(uri=uri, sha256=digest, run_id=run_id)


def _bundle_run(client, name: str, voice: str, version: int, params: Params) -> str:
    from narrator.tracking import ensure_experiment

    experiment_id = ensure_experiment(client, BUNDLE_EXPERIMENT, params.registry.tracking_uri)
    run = client.create_run(experiment_id, run_name=BUNDLE_RUN, tags={"voice": voice, "registered_model": name,
                                                                     "version": str(version)})
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def cached_bundle_dir(cache_dir: str | Path, voice: str, version: int, sha256: str) -> Path:
    """Where a published bundle lies once fetched: CACHE/VOICE/vVERSION/SHA256."""
    return Path(cache_dir).expanduser() / voice / f"v{version}" / sha256


def fetch_bundle(voice: str, version: int, uri: str, sha256: str, cache_dir: str | Path, params: Params) -> Path:
    """A published bundle as a local folder: the cached copy (`cached_bundle_dir`) when its digest still matches,
    else downloaded from `uri` through the registry (`registry.tracking_uri`), checked against `sha256` and moved
    into the cache whole (processes fetching at once each download; the first to finish places it)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from narrator.log import get_logger
    from narrator.registry import check_voice_name

    if not SHA256_HEX.fullmatch(sha256):
        raise BundleError(f"{voice} v{version}: the recorded bundle digest {sha256!r} is not a sha256 (64 hex "
                          f"digits); package the voice again (`narrator package {voice} --version {version} ...`)")
    check_voice_name(voice)
    final = cached_bundle_dir(cache_dir, voice, version, sha256)
    if final.is_dir():
        if bundle_sha256(final) == sha256:
            return final
        get_logger("bundle").warning("%s no longer matches its digest %s; fetching it again", final, sha256[:12])
        shutil.rmtree(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".fetching-", dir=final.parent))
    try:
        try:
            downloaded = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(staging),
                                                                  tracking_uri=params.registry.tracking_uri))
        except (MlflowException, OSError) as error:
            raise BundleError(f"cannot fetch the bundle of {voice} v{version} from {uri} ({error}); check that "
                              "registry.tracking_uri reaches the registry and its artifact store, or package the "
                              "voice again") from None
        found = bundle_sha256(downloaded)
        if found != sha256:
            raise BundleError(f"the bundle of {voice} v{version} at {uri} has digest {found[:12]}, but the registry "
                              f"recorded {sha256[:12]} (bundle_sha256): it changed or arrived incomplete; package "
                              f"the voice again (`narrator package {voice} --version {version} ...`)")
        read_manifest(downloaded)
        try:
            downloaded.rename(final)
        except OSError:  # another process placed it first
            if not (final.is_dir() and bundle_sha256(final) == sha256):
                raise
        return final
    finally:
        shutil.rmtree(staging, ignore_errors=True)
