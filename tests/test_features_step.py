"""`narrator features`: per-segment training features in the documented layout, resumable after a kill."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from components.features import FeaturesError, extract_features, load_entry
from narrator.audiofile import resample, write_wav
from narrator.config import load_params
from tests.conftest import shared_root
from tests.intake import speech
from tests.models.tiny_hf import build_tiny_hubert

SENTENCES = ["The quick brown fox jumps over the lazy dog.", "A second sentence for the features step."]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A prepared folder of two English segments, a tiny 768-wide HuBERT, and the golden reduced SoVITS base."""
    root = tmp_path_factory.mktemp("features")
    segments = []
    for i, text in enumerate(SENTENCES):
        mono, rate = speech(text, seed=i)
        w32 = write_wav(root / "prepared" / "wav32k" / f"s{i}.wav", resample(mono, rate, 32000), 32000)
        w16 = write_wav(root / "prepared" / "wav16k" / f"s{i}.wav", resample(mono, rate, 16000), 16000)
        segments.append({"name": f"s{i}", "source": f"clip{i}.wav", "start_s": 0.0, "end_s": len(mono) / rate,
                         "duration_s": round(len(mono) / rate, 3), "text": text, "language": "en",
                         "wav_32k": str(w32), "wav_16k": str(w16)})
    (root / "prepared" / "prepare.json").write_text(json.dumps({"segments": segments}))
    hubert = build_tiny_hubert(root / "hubert", hidden=768)
    params = load_params(None, {"pretrained": {"sovits": str(shared_root() / "gsv" / "golden_A_s2_v2.pth"),
                                               "hubert_dir": str(hubert)}, "features": {"device": "cpu"}})
    manifest = extract_features(root / "prepared", root / "features", params)
    return root, params, manifest, segments


def test_manifest_lists_every_segment_with_phones(setup):
    _, _, manifest, segments = setup
    assert [e.name for e in manifest.entries] == ["s0", "s1"]
    for entry in manifest.entries:
        assert len(entry.ids) == len(entry.phones) == sum(entry.word2ph) > 10
    assert manifest.sovits_version == "v2"


def test_feature_files_have_documented_shapes_and_rates(setup):
    root, _, manifest, segments = setup
    for entry, seg in zip(manifest.entries, segments):
        t = load_entry(root / "features", entry)
        assert t["bert"].shape == (1024, len(entry.phones)) and t["bert"].abs().sum() == 0  # English: zeros
        assert t["hubert"].shape[0] == 768
        assert abs(t["hubert"].shape[1] - seg["duration_s"] * 50) <= 2  # 50 Hz
        assert t["semantic"].dtype == torch.int64
        assert abs(t["semantic"].shape[0] - seg["duration_s"] * 25) <= 2  # 25 Hz
        assert t["spec"].shape[0] == 1025 and abs(t["spec"].shape[1] - seg["duration_s"] * 50) <= 2


def test_voice_fingerprint_is_a_unit_embedding(setup):
    root, *_ = setup
    voice = json.loads((root / "features" / "voice.json").read_text())
    vector = torch.tensor(voice["embedding"])
    assert vector.shape == (256,) and abs(float(vector.norm()) - 1) < 1e-3


def test_rerun_after_a_kill_redoes_only_unfinished_entries(setup):
    root, params, _, _ = setup
    features = root / "features" / "entries"
    (features / "s1" / "done").unlink()  # as if killed while writing s1
    before = (features / "s0" / "hubert.pt").stat().st_mtime_ns
    manifest = extract_features(root / "prepared", root / "features", params)
    assert (features / "s0" / "hubert.pt").stat().st_mtime_ns == before
    assert (features / "s1" / "done").exists() and len(manifest.entries) == 2


def test_missing_base_sovits_names_the_params_key(setup, tmp_path):
    root, *_ = setup
    with pytest.raises(FeaturesError, match="pretrained.sovits"):
        extract_features(root / "prepared", tmp_path / "f", load_params(None))


def test_missing_prepare_output_says_to_prepare_first(tmp_path):
    with pytest.raises(FeaturesError, match="narrator prepare"):
        extract_features(tmp_path, tmp_path / "f", load_params(None))


def test_chinese_segments_get_bert_features_and_v2pro_gets_sv_embeddings(setup, tmp_path):
    from tests.models.tiny_hf import build_tiny_bert

    root, params, _, _ = setup
    prepared = tmp_path / "prepared"
    shutil.copytree(root / "prepared", prepared)
    report = json.loads((prepared / "prepare.json").read_text())
    report["segments"][0].update(text="你好世界。", language="zh")
    (prepared / "prepare.json").write_text(json.dumps(report))
    gsv = shared_root() / "gsv"
    pro = load_params(None, {"pretrained": {"sovits": str(gsv / "golden_A_s2_v2Pro.pth"),
                                            "sv_checkpoint": str(gsv / "golden_sv_eres2netv2_small.ckpt"),
                                            "hubert_dir": params.pretrained.hubert_dir,
                                            "bert_dir": str(build_tiny_bert(tmp_path / "bert"))},
                             "features": {"device": "cpu"}})
    manifest = extract_features(prepared, tmp_path / "features", pro)
    assert manifest.sovits_version == "v2Pro"
    zh = load_entry(tmp_path / "features", manifest.entries[0])
    assert zh["bert"].shape == (40, 9) and zh["bert"].abs().sum() > 0  # 4 characters x 2 phones + "."
    assert manifest.entries[0].phones[:2] == ["n", "i2"]  # 你好: third-tone sandhi
    assert all(e.has_sv for e in manifest.entries)
    assert zh["sv"].ndim == 1 and zh["sv"].shape[0] > 0
