"""models/inference.py: the static decoding step (fixed shapes, whole-cache attention with a -inf bias, device-side
write position) and its CUDA-graph replay. The static step runs on CPU and is checked here against float decoding;
the graph tests need a CUDA device and are skipped without one (a GPU run exercises them)."""

from __future__ import annotations

import pytest
import torch

from models.gpt import BERT_DIM, GPT, GPTConfig, GPTError, KVCache
from models.inference import (
    GraphDecoding,
    StaticDecoding,
    batch_bucket,
    decoding_mode,
    graph_decoding,
    length_bucket,
    prepare_for_inference,
    prepare_gpt,
)
from models.sovits import SoVITS, SoVITSConfig

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device; none here")
TINY = GPTConfig(n_layer=2, n_head=2, n_embd=16, phoneme_vocab_size=20, vocab_size=9, eos=8)


def _gpt(seed: int = 0, device: str = "cpu") -> GPT:
    torch.manual_seed(seed)
    return GPT(TINY).eval().to(device)


def _sentences(seed: int, lengths: tuple[int, ...], device: str = "cpu"):
    """([phones (1, n)], [bert (1, 1024, n)], prompt (1, 5)) for sentences of the given lengths."""
    g = torch.Generator().manual_seed(seed)
    sents = [(torch.randint(0, 20, (1, n), generator=g), torch.randn(1, BERT_DIM, n, generator=g)) for n in lengths]
    prompt = torch.randint(0, 8, (1, 5), generator=g)
    return ([p.to(device) for p, _ in sents], [b.to(device) for _, b in sents], prompt.to(device))


def _logits_per_step(model: GPT, phones, bert, prompt, steps: int) -> list[torch.Tensor]:
    out = []
    hook = model.ar_predict_layer.register_forward_hook(lambda mod, inp, o: out.append(o.detach().float().clone()))
    tokens = model.generate(phones, bert, prompt, top_k=1, early_stop_num=steps - 1)
    hook.remove()
    return [tokens, *out]


def _batch(model: GPT, sents, max_steps: int = 60) -> list[torch.Tensor]:
    return model.generate_batch(sents[0], sents[1], sents[2], top_k=1, max_steps=max_steps)


def test_static_decoding_gives_float_decodings_greedy_tokens_and_logits():
    model = _gpt()
    phones, bert, prompt = _sentences(0, (7,))
    prepare_gpt(model, "float")
    float_tokens, *float_logits = _logits_per_step(model, phones[0], bert[0], prompt, 40)
    prepare_gpt(model, "static")
    assert decoding_mode(model) == "static" and type(model.decoding_step) is StaticDecoding
    static_tokens, *static_logits = _logits_per_step(model, phones[0], bert[0], prompt, 40)
    assert float_tokens.shape[1] >= 20
    assert torch.equal(static_tokens, float_tokens)
    assert len(static_logits) == len(float_logits)
    for a, b in zip(static_logits, float_logits):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("seed", [1, 3])  # seed 1: row 0 finishes first; seed 3: rows 1 and 2 do
def test_static_decoding_of_a_batch_whose_rows_finish_apart_equals_float_decoding(seed):
    model = _gpt(seed)
    sents = _sentences(seed, (3, 6, 4))  # uneven: left padding masked by the key bias; 3 rows in a bucket of 4
    expected = _batch(prepare_gpt(model, "float"), sents)
    assert len({t.shape[1] for t in expected}) > 1  # rows finished at different steps (keep_rows ran)
    got = _batch(prepare_gpt(model, "static"), sents)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


def test_static_buffers_are_reused_across_requests_in_one_bucket():
    model = prepare_gpt(_gpt(3), "static")
    first = _batch(model, _sentences(3, (3, 6, 4)))
    held = model.decoding_step._states[0]
    again = _batch(model, _sentences(3, (3, 6, 4)))
    other = _batch(model, _sentences(5, (5, 2, 6, 8)))  # 4 rows: the same (4, 256) bucket, stale positions masked
    assert model.decoding_step.states() == [(4, 256, torch.float32, torch.float32, torch.device("cpu"))]
    assert model.decoding_step._states[0] is held
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert all(torch.equal(a, b) for a, b in zip(other, _batch(prepare_gpt(model, "float"), _sentences(5, (5, 2, 6, 8)))))


def test_static_buffers_are_dropped_when_the_parameters_get_new_storage():
    model = prepare_gpt(_gpt(), "static")
    sents = _sentences(0, (4,))
    _batch(model, sents, 20)
    held = model.decoding_step._states[0]
    model.to(torch.float64).to(torch.float32)  # new storage for every parameter
    _batch(model, sents, 20)
    assert len(model.decoding_step._states) == 1 and model.decoding_step._states[0] is not held


def test_batches_and_cache_lengths_round_up_to_buckets():
    assert [batch_bucket(n) for n in (1, 2, 3, 5, 8, 9, 17, 32, 33, 65)] == [1, 2, 4, 8, 8, 16, 32, 32, 64, 96]
    assert [length_bucket(n) for n in (1, 256, 257, 1712)] == [256, 256, 512, 1792]
    with pytest.raises(GPTError, match="at least one row"):
        batch_bucket(0)


def test_graph_decoding_is_refused_off_cuda():
    model = _gpt()
    with pytest.raises(GPTError, match="CUDA device"):
        graph_decoding(model)
    model.decoding_step = GraphDecoding()
    with pytest.raises(GPTError, match="CUDA device"):
        model.generate(*[t[0] if isinstance(t, list) else t for t in _sentences(0, (4,))], top_k=1, max_steps=3)


def test_a_bfloat16_cache_takes_a_float32_key_bias():
    """generate_batch builds the padding bias in float32; a bfloat16 cache (GPU "fast") must add it to its scores."""
    bias = torch.zeros(2, 1, 8)
    bias[0, :, :2] = float("-inf")
    cache = KVCache(TINY, 2, 8, torch.bfloat16, torch.device("cpu"), bias)
    cache.length = 3
    q = k = v = torch.randn(2, TINY.n_head, TINY.head_dim, dtype=torch.bfloat16)
    assert cache.attend(0, q, k, v).dtype == torch.bfloat16


@CUDA
def test_graph_decoding_on_cuda_gives_float_decodings_greedy_tokens():
    model = _gpt(3, "cuda")
    sents = _sentences(3, (3, 6, 4), "cuda")
    expected = _batch(prepare_gpt(model, "float"), sents)
    graph_decoding(model)
    assert decoding_mode(model) == "graph"
    for _ in range(2):  # the first captures, the second replays the same graph
        got = _batch(model, sents)
        assert all(torch.equal(a, b) for a, b in zip(got, expected))
    (state,) = model.decoding_step._states
    assert state.graph is not None


@CUDA
def test_graph_decoding_on_cuda_follows_float_logits():
    model = _gpt(0, "cuda")
    phones, bert, prompt = _sentences(0, (7,), "cuda")
    float_tokens, *float_logits = _logits_per_step(prepare_gpt(model, "float"), phones[0], bert[0], prompt, 40)
    graph_tokens, *graph_logits = _logits_per_step(graph_decoding(model), phones[0], bert[0], prompt, 40)
    assert torch.equal(graph_tokens, float_tokens)
    for a, b in zip(graph_logits, float_logits):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)  # TF32 / kernel choice may differ on a GPU


@CUDA
def test_fast_mode_on_cuda_runs_bfloat16_models_with_graph_decoding_and_exact_stays_float():
    sovits, gpt = SoVITS(SoVITSConfig()).cuda(), _gpt(0, "cuda")
    plan = prepare_for_inference(sovits, gpt, "fast")
    assert (plan.gpt_decoding, plan.gpt_dtype, plan.sovits_dtype) == ("graph", torch.bfloat16, torch.bfloat16)
    phones, bert, prompt = _sentences(0, (7,), "cuda")
    assert gpt.generate(phones[0], bert[0].bfloat16(), prompt, top_k=1, max_steps=30).shape[1] > 0
    exact = prepare_for_inference(SoVITS(SoVITSConfig()).cuda(), _gpt(0, "cuda"), "exact")
    assert (exact.gpt_decoding, exact.gpt_dtype) == ("float", torch.float32)
