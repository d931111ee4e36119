"""Which voices serve, and the voices loaded in this process.

`VoiceCatalog` reads the MLflow registry: every registered model named `registry.model_prefix + VOICE` with a
`champion` alias is a voice, served at the champion's version from the bundle the package step published to the
registry's artifact store (version tags `bundle_uri`, `bundle_sha256`), fetched into `serving.bundle_cache` on
this machine and checked against its digest (on every load); a version packaged before bundles were published is
read from the BentoML model store (version tag `bento`). Its tenant is the registered model's `tenant` tag
(`serving.default_tenant` when it has none). The list is cached for `CATALOG_TTL_S` so a promotion reaches the
service within seconds.

`VoiceCache` keeps loaded voices (SoVITS + GPT + reference prompt), several per process, within
`serving.memory_budget_mb` of weights and `serving.max_voices`; the least recently used go first. A request
holds its `LoadedVoice` (one voice's own models and reference) for its whole synthesis, so eviction or a new
champion never changes what a running request speaks with: no request hears another voice. The HuBERT / BERT /
SV front models are shared by every voice (they carry no timbre).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from models.tts import FrontModels, Reference, Synthesizer
from narrator.config import Params
from narrator.errors import NarratorError
from narrator.log import get_logger

log = get_logger("serving.voices")

CATALOG_TTL_S = 5.0
SUMMARY_METRICS = ("speaker_similarity", "wer", "cer", "mcd_db", "rtf", "first_audio_s",
                   "watermark_detected_share")


class VoiceUnavailable(NarratorError):
    """A registered voice cannot be loaded (not packaged, files missing); the message says what to do."""


@dataclass(frozen=True)
class VoiceInfo:
    """A serving voice as the registry describes it."""

    voice: str
    model_name: str
    version: int
    tenant: str
    payload_hex: str
    bento: str | None  # BentoML model store tag of the bundle, None when not packaged
    evaluation: dict[str, Any]  # {"verdict", "metrics": {name: value}}
    bundle_uri: str | None = None  # the bundle in the registry's artifact store, None when not published
    bundle_sha256: str | None = None  # its digest (narrator.bundle.bundle_sha256)

    @property
    def packaged(self) -> bool:
        return self.bundle_uri is not None or self.bento is not None

    def public(self) -> dict[str, Any]:
        return {"voice": self.voice, "version": self.version, "tenant": self.tenant,
                "watermark_payload": self.payload_hex, "packaged": self.packaged,
                "evaluation": self.evaluation}


class VoiceCatalog:
    """Champion voices from the registry (cached `CATALOG_TTL_S`). Thread-safe."""

    def __init__(self, params: Params, ttl_s: float = CATALOG_TTL_S) -> None:
        self.params, self.ttl_s = params, ttl_s
        self._lock = threading.Lock()
        self._voices: dict[str, VoiceInfo] = {}
        self._read_at = -1e9

    def _read(self) -> dict[str, VoiceInfo]:
        from narrator.bundle import BUNDLE_SHA256_TAG, BUNDLE_URI_TAG
        from narrator.registry import champions

        found = {}
        for best in champions(self.params):
            tags = best.tags
            metrics = {k.removeprefix("metric."): round(float(v), 4) for k, v in tags.items()
                       if k.startswith("metric.") and k.removeprefix("metric.") in SUMMARY_METRICS}
            found[best.voice] = VoiceInfo(voice=best.voice, model_name=best.model_name, version=best.version,
                                          tenant=best.tenant or self.params.serving.default_tenant,
                                          payload_hex=tags.get("payload_hex", ""), bento=tags.get("bento"),
                                          evaluation={"verdict": tags.get("verdict", "unknown"), "metrics": metrics},
                                          bundle_uri=tags.get(BUNDLE_URI_TAG),
                                          bundle_sha256=tags.get(BUNDLE_SHA256_TAG))
        return found

    def voices(self) -> dict[str, VoiceInfo]:
        with self._lock:
            if time.monotonic() - self._read_at > self.ttl_s:
                self._voices = self._read()
                self._read_at = time.monotonic()
            return dict(self._voices)

    def get(self, voice: str) -> VoiceInfo | None:
        return self.voices().get(voice)


@dataclass
class LoadedVoice:
    """One voice ready to speak: its synthesizer (own SoVITS and GPT), reference prompt and payload."""

    info: VoiceInfo
    synth: Synthesizer
    reference: Reference
    weight_mb: float
    lock: threading.Lock = field(default_factory=threading.Lock)  # one GPT batch of this voice at a time

    @property
    def key(self) -> tuple[str, int]:
        return self.info.voice, self.info.version


def _weights_mb(*modules) -> float:
    total = 0
    for module in modules:
        total += sum(t.numel() * t.element_size() for t in module.parameters())
        total += sum(t.numel() * t.element_size() for t in module.buffers())
    return total / 2 ** 20


class VoiceCache:
    """Loaded voices, least recently used first out, within the memory budget. Thread-safe; a voice is loaded
    once even when many requests ask for it at the same moment."""

    def __init__(self, params: Params, device: str = "auto") -> None:
        self.params = params
        self.budget_mb = params.serving.memory_budget_mb
        self.max_voices = params.serving.max_voices
        self.device = device
        self._lock = threading.Lock()
        self._loaded: OrderedDict[tuple[str, int], LoadedVoice] = OrderedDict()
        self._loading: dict[tuple[str, int], threading.Lock] = {}
        self.fronts = FrontModels(params, device)  # HuBERT / BERT / SV, shared by every voice
        self.evictions = 0

    # -- bookkeeping ---------------------------------------------------------------------------------------------

    def loaded(self) -> list[tuple[str, int]]:
        with self._lock:
            return list(self._loaded)

    def used_mb(self) -> float:
        with self._lock:
            return sum(v.weight_mb for v in self._loaded.values())

    def _evict_for(self, incoming_mb: float) -> None:
        """Drop least recently used voices until `incoming_mb` more fits (caller holds the lock)."""
        while self._loaded and (len(self._loaded) + 1 > self.max_voices or
                                sum(v.weight_mb for v in self._loaded.values()) + incoming_mb > self.budget_mb):
            key, _ = self._loaded.popitem(last=False)
            self.evictions += 1
            log.info("evicted voice %s v%d (least recently used)", *key)

    # -- loading -------------------------------------------------------------------------------------------------

    def get(self, info: VoiceInfo) -> LoadedVoice:
        key = (info.voice, info.version)
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                if key in self._loaded:
                    self._loaded.move_to_end(key)
                    return self._loaded[key]
            voice = self._load(info)
            with self._lock:
                if voice.weight_mb > self.budget_mb:
                    raise VoiceUnavailable(f"voice {info.voice} needs {voice.weight_mb:.0f} MB, more than "
                                           f"serving.memory_budget_mb ({self.budget_mb:g}); raise the budget")
                self._evict_for(voice.weight_mb)
                self._loaded[key] = voice
                self._loading.pop(key, None)
            return voice

    def bundle_dir(self, info: VoiceInfo) -> Path:
        """The champion's bundle as a local folder: fetched from the registry's artifact store into
        `serving.bundle_cache` (any machine), else from the BentoML model store (a version packaged before bundles
        were published, or a bento that carries it)."""
        from narrator.bundle import BundleError, fetch_bundle, stored_bundle

        if not info.packaged:
            raise VoiceUnavailable(f"voice {info.voice} v{info.version} is registered but not packaged; run "
                                   f"`narrator package {info.voice} --version {info.version} ...`")
        try:
            if info.bundle_uri:
                if not info.bundle_sha256:
                    raise BundleError(f"{info.model_name} v{info.version} names its bundle ({info.bundle_uri}) but "
                                      "not its digest (tag bundle_sha256); package the voice again")
                return fetch_bundle(info.voice, info.version, info.bundle_uri, info.bundle_sha256,
                                    self.params.serving.bundle_cache, self.params)
            return stored_bundle(info.bento)
        except BundleError as error:
            raise VoiceUnavailable(f"voice {info.voice}: {error}") from None

    def _load(self, info: VoiceInfo) -> LoadedVoice:
        from models.tts import load_bundle

        started = time.perf_counter()
        voice = load_bundle(self.bundle_dir(info), self.params, fronts=self.fronts)
        synth = voice.synth
        loaded = LoadedVoice(info=info, synth=synth, reference=voice.reference,
                             weight_mb=_weights_mb(synth.sovits, synth.gpt))
        log.info("loaded voice %s v%d (%.1f MB) in %.2f s", info.voice, info.version, loaded.weight_mb,
                 time.perf_counter() - started)
        return loaded
