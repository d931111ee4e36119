"""HuBERT and BERT extractors: loaded by path, right shapes and frame rates, clear errors without a model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.features import (BertExtractor, FeatureError, HubertExtractor, bert_for_segments,
                             training_hubert_input)
from tests.models.tiny_hf import build_tiny_bert, build_tiny_hubert


@pytest.fixture(scope="module")
def hubert(tmp_path_factory):
    return HubertExtractor(build_tiny_hubert(tmp_path_factory.mktemp("hubert")), device="cpu")


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return BertExtractor(build_tiny_bert(tmp_path_factory.mktemp("bert")), device="cpu")


def test_hubert_gives_50_hz_frames_of_its_hidden_size(hubert):
    wav = np.random.default_rng(0).standard_normal(16000 * 3).astype(np.float32) * 0.1
    (features,) = hubert([wav])
    assert features.shape == (48, 149)  # 3 s at 50 Hz, less the conv stack's edge frames
    assert torch.isfinite(features).all()


def test_hubert_handles_clips_of_different_lengths(hubert):
    rng = np.random.default_rng(1)
    out = hubert([rng.standard_normal(16000).astype(np.float32), rng.standard_normal(32000).astype(np.float32)])
    assert [f.shape[1] for f in out] == [49, 99]


def test_training_input_scaling_peaks_near_1145():
    wav = np.sin(np.linspace(0, 100, 16000)).astype(np.float32) * 0.5
    scaled = training_hubert_input(wav)
    assert abs(np.abs(scaled).max() - 1145.14 * (0.95 * 0.5 + 0.5 * 0.5)) < 1.0


def test_bert_repeats_each_character_vector_per_phone(bert):
    features = bert.phone_features("你好", [2, 2])
    assert features.shape == (40, 4)
    assert torch.equal(features[:, 0], features[:, 1]) and torch.equal(features[:, 2], features[:, 3])
    assert not torch.equal(features[:, 1], features[:, 2])


def test_bert_uses_the_third_hidden_state_from_the_end(bert):
    ids = torch.tensor([bert.tokenizer.convert_tokens_to_ids(["[CLS]", "你", "好", "[SEP]"])])
    states = bert.model(input_ids=ids, output_hidden_states=True).hidden_states
    assert torch.allclose(bert.characters("你好"), states[-3][0, 1:-1])


def test_bert_features_are_zero_outside_chinese_segments(bert):
    segments = [("zh", "你好", 0, 4), ("en", "hello", 4, 8)]
    features = bert_for_segments(bert, segments, [2, 2, 4])
    assert features.shape == (40, 8)
    assert features[:, :4].abs().sum() > 0 and features[:, 4:].abs().sum() == 0


def test_bert_refuses_misaligned_word2ph(bert):
    with pytest.raises(FeatureError, match="one entry per character"):
        bert.phone_features("你好", [2])


@pytest.mark.parametrize("extractor,key", [(HubertExtractor, "pretrained.hubert_dir"),
                                           (BertExtractor, "pretrained.bert_dir")])
def test_missing_model_directory_names_the_params_key(extractor, key, tmp_path):
    with pytest.raises(FeatureError, match=key):
        extractor(tmp_path / "absent")
    with pytest.raises(FeatureError, match=key):
        extractor(None)
