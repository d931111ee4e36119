"""`narrator package VOICE` (no --version): build the service bento around a voice's champion.

The bento is the service of bentofile.yaml plus the champion's bundle (BentoML model `narrator-VOICE:vN`, put in
the store by the package step) in its `models`, labelled with the voice and version. Its tag is
`narrator:VOICE-vN`. Built offline (`python.lock_packages: false`); `bentoml serve narrator:VOICE-vN` or
`narrator serve` runs it.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from narrator.config import Params
from narrator.errors import NarratorError

REPO_ROOT = Path(__file__).resolve().parents[1]


class BentoBuildError(NarratorError):
    """The bento cannot be built (no champion, voice not packaged, bad bentofile); the message says what to do."""

    exit_code = 2


@dataclass
class BuiltBento:
    tag: str
    voice: str
    version: int
    model: str
    path: str


def champion_bundle(voice: str, params: Params) -> tuple[int, str]:
    """(champion version, its BentoML model tag) of `voice`."""
    from components.register import RegistryError, champion

    try:
        best = champion(voice, params)
    except RegistryError as error:
        raise BentoBuildError(str(error)) from None
    if best is None:
        raise BentoBuildError(f"{voice} has no champion yet; promote a version (`narrator approve {voice} N --by "
                              "NAME`) before building its bento")
    version = best.version
    tag = best.tags.get("bento")
    if not tag:
        raise BentoBuildError(f"{best.model_name} v{version} (the champion) is not packaged; run `narrator package "
                              f"{voice} --version {version} --features ... --sovits ... --gpt ... --out DIR` first")
    return version, tag


def build_bento(voice: str, params: Params, bentofile: str | Path | None = None) -> BuiltBento:
    """Build `narrator:VOICE-vN` from bentofile.yaml with the champion's bundle included."""
    if params.package.bentoml_home:
        os.environ["BENTOML_HOME"] = str(Path(params.package.bentoml_home).expanduser().resolve())
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    import bentoml

    version, model_tag = champion_bundle(voice, params)
    try:
        bentoml.models.get(model_tag)
    except bentoml.exceptions.NotFound:
        raise BentoBuildError(f"{model_tag} is not in the BentoML model store ({os.environ.get('BENTOML_HOME')}); "
                              "package the voice again or set package.bentoml_home") from None
    path = Path(bentofile or REPO_ROOT / params.serving.bentofile)
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
