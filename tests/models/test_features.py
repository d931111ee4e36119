"""HuBERT and BERT extractors: loaded by path, right shapes and frame rates, clear errors without a model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.features import (BertExtractor, FeatureError, HubertExtractor, bert_for_results, bert_for_segments,
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


def test_batched_bert_equals_each_text_alone(bert):
    texts = ["你好", "今天天气很不错", "我们一起去公园吧"]
    batched = bert.characters_batch(texts)
    for text, features in zip(texts, batched):
        assert torch.allclose(features, bert.characters_batch([text])[0], atol=1e-5)
        assert features.shape == (len(text), 40)


def test_bert_batches_segments_of_several_results(bert):
    results = [([("zh", "你好", 0, 4)], [2, 2]), ([("en", "hi", 0, 2), ("zh", "世界", 2, 6)], [2, 2, 2])]
    first, second = bert_for_results(bert, results)
    assert torch.allclose(first, bert.phone_features("你好", [2, 2]), atol=1e-5)
    assert second[:, :2].abs().sum() == 0
    assert torch.allclose(second[:, 2:], bert.phone_features("世界", [2, 2]), atol=1e-5)


def test_hubert_batches_only_clips_of_equal_length(hubert):
    rng = np.random.default_rng(2)
    a, b, c = (rng.standard_normal(n).astype(np.float32) * 0.1 for n in (16000, 16000, 24000))
    together = hubert([a, b, c], batch_size=8)
    alone = [hubert([x])[0] for x in (a, b, c)]
    for t, s in zip(together, alone):
        assert t.shape == s.shape and torch.allclose(t, s, atol=1e-4)


def test_reference_input_appends_the_official_9600_zero_samples():
    from models.features import reference_hubert_input

    wav = np.ones(16000, np.float32) * 0.5
    padded = reference_hubert_input(wav)
    assert padded.shape == (25600,) and np.all(padded[16000:] == 0) and np.all(padded[:16000] == 0.5)
