"""`narrator features`: the per-clip training features of GPT-SoVITS, computed once, resumable.

For every prepared segment (the output of `narrator prepare`):

    FEATURES_DIR/
      manifest.json            one entry per segment (below) + the models used + the voice fingerprint
      voice.json               the dataset's speaker embedding (GE2E, 256-d): registry, consent and evaluation use it
      entries/NAME/
        bert.pt                (1024, n_phones) float16/32: BERT features, zeros outside Chinese segments
        hubert.pt              (768, T50) float32: HuBERT last layer at 50 Hz (training-data input scaling)
        semantic.pt            (T25,) int64: codes of the base SoVITS quantizer at 25 Hz
        spec.pt                (1025, T50) float32: linear spectrogram of the 32 kHz audio
        sv.pt                  (20480,) float32: v2Pro speaker-verification embedding (v2Pro/v2ProPlus bases only)
        done                   written last: the entry is complete

A manifest entry: name, text (normalised), language, phones, ids, word2ph, duration_s, wav_32k, the frame counts, and
split ("train", or "holdout" for segments prepare kept out of training; the fine-tuning steps skip those).
Re-running skips complete entries, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from narrator.audiofile import read_audio
from narrator.config import Params
from narrator.errors import NarratorError
from narrator.log import get_logger
from narrator.storage import fetch

log = get_logger("features")

MANIFEST_VERSION = 1


class FeaturesError(NarratorError):
    """The prepared dataset or the configured models cannot produce features."""


@dataclass
class FeatureEntry:
    name: str
    text: str
    language: str
    phones: list[str]
    ids: list[int]
    word2ph: list[int]
    duration_s: float
    wav_32k: str
    hubert_frames: int
    semantic_frames: int
    spec_frames: int
    has_sv: bool
    split: str = "train"  # "holdout": kept out of training (see prepare.holdout_share), used by evaluate


@dataclass
class FeaturesManifest:
    version: int
    sovits_version: str
    models: dict
    entries: list[FeatureEntry] = field(default_factory=list)
    voice_fingerprint: str = "voice.json"
    elapsed_s: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, ensure_ascii=False)


def _read_prepared(prepared_dir: Path) -> list[dict]:
    report = prepared_dir / "prepare.json"
    if not report.exists():
        raise FeaturesError(f"{report} not found; run `narrator prepare VALIDATED_DIR --out {prepared_dir}` first")
    segments = json.loads(report.read_text(encoding="utf-8"))["segments"]
    if not segments:
        raise FeaturesError(f"{report} lists no segments; prepare produced nothing to train on")
    return segments


def _save(tensor: torch.Tensor, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(tensor.contiguous().clone(), tmp)
    os.replace(tmp, path)


def extract_features(prepared_dir: str | Path, out_dir: str | Path, params: Params) -> FeaturesManifest:
    """Compute every segment's features into `out_dir` (see the module docstring for the layout)."""
    from tqdm import tqdm

    from models.checkpoints import load_sovits
    from models.features import BertExtractor, HubertExtractor, bert_for_results, pick_device, training_hubert_input
    from models.text import g2p

    prepared_dir, out_dir = Path(prepared_dir), Path(out_dir)
    segments = _read_prepared(prepared_dir)
    pre, cfg = params.pretrained, params.features
    device = pick_device(cfg.device)
    started = time.monotonic()
    if not pre.sovits:
        raise FeaturesError("semantic tokens need the base SoVITS model: set pretrained.sovits in params.yaml "
                            "(e.g. gsv-v2final-pretrained/s2G2333k.pth, a local path or s3:// URI)")
    sovits = load_sovits(fetch(pre.sovits, params.storage, "pretrained.sovits"), device=device)
    hubert = HubertExtractor(fetch(pre.hubert_dir, params.storage, "pretrained.hubert_dir") if pre.hubert_dir
                             else None, device=str(device))
    languages = {s["language"] for s in segments}
    bert = None
    if "zh" in languages:
        bert = BertExtractor(fetch(pre.bert_dir, params.storage, "pretrained.bert_dir") if pre.bert_dir else None,
                             device=str(device))
    sv_model = None
    if sovits.version in ("v2Pro", "v2ProPlus"):
        sv_model = _load_sv(params, device)
    bert_dtype = torch.float16 if cfg.bert_dtype == "float16" else torch.float32
    manifest = FeaturesManifest(version=MANIFEST_VERSION, sovits_version=sovits.version, models={
        "sovits": pre.sovits, "hubert_dir": pre.hubert_dir, "bert_dir": pre.bert_dir,
        "sv_checkpoint": pre.sv_checkpoint if sv_model is not None else None})
    entries_dir = out_dir / "entries"
    entries_dir.mkdir(parents=True, exist_ok=True)
    done: dict[str, FeatureEntry] = {}
    pending = []
    for seg in segments:
        meta_file = entries_dir / seg["name"] / "entry.json"
        if (entries_dir / seg["name"] / "done").exists() and meta_file.exists():
            entry = FeatureEntry(**json.loads(meta_file.read_text(encoding="utf-8")))
            entry.split = seg.get("split", "train")  # the split may change with prepare.holdout_share
            done[seg["name"]] = entry
        else:
            pending.append(seg)
    with tqdm(total=len(segments), initial=len(done), desc="features", unit="clip", disable=None) as progress:
        for start in range(0, len(pending), cfg.batch_size):
            chunk = pending[start:start + cfg.batch_size]
            results = [g2p(seg["text"], seg["language"]) for seg in chunk]
            berts = bert_for_results(bert, [(r.segments, r.word2ph) for r in results])
            ssls = hubert([training_hubert_input(read_audio(seg["wav_16k"]).mono()) for seg in chunk],
                          batch_size=cfg.batch_size)
            for seg, result, bert_features, ssl in zip(chunk, results, berts, ssls):
                done[seg["name"]] = _write_entry(entries_dir / seg["name"], seg, result, bert_features.to(bert_dtype),
                                                 ssl, sovits, sv_model, device)
                progress.update(1)
    manifest.entries = [done[seg["name"]] for seg in segments]
    _write_voice_fingerprint(segments, out_dir / manifest.voice_fingerprint)
    manifest.elapsed_s = round(time.monotonic() - started, 3)
    (out_dir / "manifest.json").write_text(manifest.to_json(), encoding="utf-8")
    log.info("features for %d segments in %.1f s -> %s", len(manifest.entries), manifest.elapsed_s, out_dir)
    return manifest


def _write_entry(folder: Path, seg: dict, result, bert_features: torch.Tensor, ssl: torch.Tensor, sovits, sv_model,
                 device: torch.device) -> FeatureEntry:
    """Compute the rest of one segment's features, write its files, and mark it done (last)."""
    from models.audio import spectrogram
    from models.features import semantic_tokens

    folder.mkdir(parents=True, exist_ok=True)
    _save(bert_features, folder / "bert.pt")
    _save(ssl, folder / "hubert.pt")
    codes = semantic_tokens(sovits, ssl[None])
    _save(codes, folder / "semantic.pt")
    wav32 = torch.from_numpy(read_audio(seg["wav_32k"]).mono())
    spec = spectrogram(wav32[None])[0]
    _save(spec, folder / "spec.pt")
    if sv_model is not None:
        from models.sv import sv_embedding

        _save(sv_embedding(wav32[None].to(device), sv_model)[0].cpu(), folder / "sv.pt")
    entry = FeatureEntry(
        name=seg["name"], text=result.text, language=seg["language"], phones=list(result.phones),
        ids=[int(i) for i in result.ids], word2ph=[int(w) for w in result.word2ph],
        duration_s=float(seg["duration_s"]), wav_32k=seg["wav_32k"], hubert_frames=int(ssl.shape[1]),
        semantic_frames=int(codes.shape[0]), spec_frames=int(spec.shape[1]), has_sv=sv_model is not None,
        split=seg.get("split", "train"))
    (folder / "entry.json").write_text(json.dumps(asdict(entry), ensure_ascii=False), encoding="utf-8")
    (folder / "done").write_text("ok")
    return entry


def _load_sv(params: Params, device: torch.device):
    if not params.pretrained.sv_checkpoint:
        raise FeaturesError("a v2Pro/v2ProPlus base model needs the speaker-verification model: set "
                            "pretrained.sv_checkpoint (pretrained_eres2netv2w24s4ep4.ckpt) in params.yaml")
    from models.sv import load_sv

    return load_sv(fetch(params.pretrained.sv_checkpoint, params.storage, "pretrained.sv_checkpoint"),
                   device=device)


def _write_voice_fingerprint(segments: list[dict], path: Path) -> None:
    """The mean GE2E embedding of all segments (unit length): the voice's fingerprint."""
    from narrator.speech import SpeakerEncoder

    embeddings = SpeakerEncoder().embed([read_audio(s["wav_16k"]).mono() for s in segments])
    centre = embeddings.mean(axis=0)
    centre = centre / max(float(np.linalg.norm(centre)), 1e-9)
    path.write_text(json.dumps({"model": "resemblyzer-ge2e-256", "segments": len(segments),
                                "embedding": [round(float(v), 6) for v in centre]}), encoding="utf-8")


def read_manifest(features_dir: str | Path) -> dict:
    """The features step's manifest.json of `features_dir`."""
    path = Path(features_dir) / "manifest.json"
    if not path.exists():
        raise FeaturesError(f"{path} not found; run `narrator features PREPARED_DIR --out {features_dir}` first")
    return json.loads(path.read_text(encoding="utf-8"))


def training_entries(manifest: dict) -> list[FeatureEntry]:
    """The manifest's entries that training may use (held-out segments are left for evaluation)."""
    return [FeatureEntry(**raw) for raw in manifest["entries"] if raw.get("split", "train") == "train"]


def load_entry(features_dir: str | Path, entry: FeatureEntry) -> dict[str, torch.Tensor]:
    """The tensors of one manifest entry (for the training data loaders)."""
    folder = Path(features_dir) / "entries" / entry.name
    out = {name: torch.load(folder / f"{name}.pt", weights_only=True) for name in ("bert", "hubert", "semantic", "spec")}
    if entry.has_sv:
        out["sv"] = torch.load(folder / "sv.pt", weights_only=True)
    return out
