"""models/gpt.py against the official GPT-SoVITS v2 stage-1 model: golden vectors from ../shared/gsv (see GOLDEN.md)."""

from __future__ import annotations

import json

import pytest
import torch

from models.gpt import GPT, GPTConfig, GPTError
from narrator.errors import NarratorError

ATOL = 1e-4


@pytest.fixture(scope="module")
def gpt(golden) -> GPT:
    """The reduced official model (64 wide, 2 layers) with the golden weights, float32, eval mode."""
    model = GPT(GPTConfig.from_official(golden["config"]["s1"])).eval()
    model.load_state_dict({k.removeprefix("model."): v for k, v in golden["state_dict_s1"].items()})
    return model


@pytest.fixture(scope="module")
def s1(golden):
    """(phones (1,Lx), bert (1,1024,Lx), prompt (1,Ty), outputs dict)."""
    inputs = golden["inputs"]["s1"]
    return inputs["phoneme_ids"], inputs["bert"], inputs["prompt_semantic"], golden["outputs"]["s1"]


@pytest.fixture(scope="module")
def eos_prone_gpt(golden, s1) -> GPT:
    """The golden model with its EOS output row pointed along the mean decoder state, so that sentences end by EOS
    after a dozen tokens, at different steps for different texts."""
    phones, bert, prompt, _ = s1
    model = GPT(GPTConfig.from_official(golden["config"]["s1"])).eval()
    model.load_official_weights(golden["state_dict_s1"])
    states = []
    hook = model.ar_predict_layer.register_forward_hook(lambda mod, inp, out: states.append(inp[0].reshape(-1, 64)))
    model.generate(phones, bert, prompt, top_k=1, early_stop_num=30)
    hook.remove()
    h = torch.cat(states)
    w = model.ar_predict_layer.weight
    with torch.no_grad():
        direction = h.mean(0)
        w[1024] = 0.85 * direction / direction.norm() ** 2 * (h @ w[:1024].T).max(1).values.mean()
    return model


def three_sentences(s1):
    phones, bert, _, _ = s1
    g = torch.Generator().manual_seed(1)
    return ([phones, phones[:, :9], torch.randint(0, 732, (1, 20), generator=g)],
            [bert, bert[:, :, :9], torch.randn(1, 1024, 20, generator=g)])


# ---- config and weights ------------------------------------------------------------------------------------------


def test_config_round_trips_the_official_dicts(golden, gsv_dir):
    manifest = json.loads((gsv_dir / "manifest_gpt_v2.json").read_text())
    for official in (golden["config"]["s1"], golden["official_ckpt_s1"]["config"], manifest["config"]):
        assert GPTConfig.from_official(official).to_official() == official


def test_default_config_is_the_v2_pretrained_model(gsv_dir):
    manifest = json.loads((gsv_dir / "manifest_gpt_v2.json").read_text())
    assert GPTConfig() == GPTConfig.from_official(manifest["config"])
    assert GPTConfig().to_official() == manifest["config"]


def test_a_config_made_from_scratch_survives_the_official_format():
    cfg = GPTConfig(n_layer=3, n_head=2, n_embd=32, max_sec=20)
    official = cfg.to_official()
    assert official["model"]["hidden_dim"] == official["model"]["embedding_dim"] == 32
    assert GPTConfig.from_official(official) == cfg


def test_full_size_model_has_exactly_the_official_keys_and_shapes(gsv_dir):
    manifest = json.loads((gsv_dir / "manifest_gpt_v2.json").read_text())
    model = GPT(GPTConfig.from_official(manifest["config"]))
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    official = {k.removeprefix("model."): shape for k, shape, _ in manifest["state_dict"]}
    assert ours == official
    assert model.num_params() == manifest["param_count"] == 77_606_402


def test_official_ckpt_container_loads(gsv_dir, s1):
    ckpt = torch.load(gsv_dir / "golden_A_s1.ckpt", weights_only=False)
    model = GPT(GPTConfig.from_official(ckpt["config"])).eval()
    model.load_official_weights(ckpt["weight"])
    phones, bert, prompt, out = s1
    with torch.no_grad():
        torch.testing.assert_close(model.logits(phones, bert, prompt), out["prefill_logits_all_positions"],
                                   atol=ATOL, rtol=0)


def test_weights_of_another_size_are_refused_with_advice(golden):
    model = GPT(GPTConfig(n_layer=1, n_head=4, n_embd=32))
    with pytest.raises(GPTError, match="GPTConfig.from_official"):
        model.load_official_weights(golden["state_dict_s1"])


def test_a_dict_without_model_section_is_not_a_config():
    with pytest.raises(NarratorError, match="checkpoint\\['config'\\]"):
        GPTConfig.from_official({"weight": {}})


# ---- forward passes vs golden ---------------------------------------------------------------------------------------


def test_input_embeddings_match_golden_prefill_input(gpt, s1):
    phones, bert, prompt, out = s1
    with torch.no_grad():
        x = gpt.input_embeddings(phones, bert, prompt)
    torch.testing.assert_close(x, out["prefill_xy_pos_input"], atol=ATOL, rtol=0)


def test_logits_at_every_position_match_golden_inference_prefill(gpt, s1):
    phones, bert, prompt, out = s1
    with torch.no_grad():
        logits = gpt.logits(phones, bert, prompt)
    assert logits.shape == (1, phones.shape[1] + prompt.shape[1], 1025)
    torch.testing.assert_close(logits, out["prefill_logits_all_positions"], atol=ATOL, rtol=0)


def test_training_forward_matches_golden_training_encoder(gpt, s1):
    phones, bert, prompt, out = s1
    with torch.no_grad():
        logits = gpt(phones, bert, prompt)
    torch.testing.assert_close(logits, out["prefill_logits_via_training_encoder"], atol=ATOL, rtol=0)


def test_training_loss_matches_official_forward_old(gpt, golden, s1):
    phones, bert, _, out = s1
    target = golden["inputs"]["s1"]["forward_old_target_semantic"]
    with torch.no_grad():
        loss = gpt.training_loss(phones, bert, target)
    assert loss.dim() == 0
    torch.testing.assert_close(loss, out["forward_old_loss_sum"], rtol=1e-3, atol=0)


def test_training_loss_ignores_padding_beyond_given_lengths(gpt, golden, s1):
    """A padded batch row scores like the unpadded example plus one EOS target per padded position."""
    phones, bert, _, _ = s1
    target = golden["inputs"]["s1"]["forward_old_target_semantic"]
    padded = torch.cat([target, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    with torch.no_grad():
        alone = gpt.training_loss(phones, bert, target)
        with_pad = gpt.training_loss(phones, bert, padded, semantic_lens=torch.tensor([target.shape[1]]))
    assert with_pad > alone
    assert torch.isfinite(with_pad)


# ---- decoding vs golden ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rp", ["1.35", "1.0"])
def test_greedy_decoding_matches_golden_tokens(gpt, s1, rp):
    phones, bert, prompt, out = s1
    tokens = gpt.generate(phones, bert, prompt, top_k=1, repetition_penalty=float(rp), early_stop_num=24)
    expected_new = out[f"greedy_rp{rp}_full_y"][:, prompt.shape[1]:]
    assert torch.equal(tokens, expected_new)


def test_early_stop_num_n_yields_n_plus_one_tokens_and_official_caller_drops_the_first(gpt, s1):
    phones, bert, prompt, out = s1
    tokens = gpt.generate(phones, bert, prompt, top_k=1, early_stop_num=24)
    assert tokens.shape == (1, 25)
    assert out["greedy_rp1.35_idx"] == 24
    assert torch.equal(tokens[:, 1:], out["greedy_rp1.35_pred_semantic"][0])


def test_cached_decoding_agrees_with_the_full_forward(gpt, s1):
    """Without penalty and with top_k=1 each new token is the argmax of the full (uncached) forward."""
    phones, bert, prompt, _ = s1
    tokens = gpt.generate(phones, bert, prompt, top_k=1, repetition_penalty=1.0, early_stop_num=19)
    with torch.no_grad():
        logits = gpt.logits(phones, bert, torch.cat([prompt, tokens[:, :-1]], dim=1))
    start = phones.shape[1] + prompt.shape[1] - 1
    assert torch.equal(logits[:, start:, :1024].argmax(-1), tokens)


def test_eos_cannot_end_decoding_before_eleven_tokens(gpt, s1):
    phones, bert, prompt, _ = s1
    model = GPT(gpt.cfg).eval()
    model.load_state_dict(gpt.state_dict())
    with torch.no_grad():
        model.ar_predict_layer.weight[1024] = 0.0
    model.ar_predict_layer.register_forward_hook(lambda mod, inp, out: out.index_fill(-1, torch.tensor([1024]), 1e4))
    tokens = model.generate(phones, bert, prompt, top_k=1, early_stop_num=100)
    assert tokens.shape == (1, 11)
    assert (tokens != 1024).all()


def test_a_step_whose_penalised_argmax_is_eos_ends_decoding_without_its_sample(gpt, s1):
    """From step 11 EOS (logit 0.001) narrowly beats token 5 (logit 0): the top-2 sampler draws either, and
    decoding stops there keeping only the 11 earlier tokens, whichever was drawn."""
    phones, bert, prompt, _ = s1
    model = GPT(gpt.cfg).eval()
    model.load_state_dict(gpt.state_dict())

    def two_candidates(mod, inp, out):
        out = torch.full_like(out, -1e4)
        out[:, 5], out[:, 1024] = 0.0, 0.001
        return out

    model.ar_predict_layer.register_forward_hook(two_candidates)
    for seed in range(8):  # each draw is ~50/50 between EOS and token 5
        tokens = model.generate(phones, bert, prompt, top_k=2, repetition_penalty=1.0, seed=seed)
        assert torch.equal(tokens, torch.full((1, 11), 5))


def test_decoding_ends_at_eos_and_drops_it(eos_prone_gpt, s1):
    phones, bert, prompt, _ = s1
    tokens = eos_prone_gpt.generate(phones, bert, prompt, top_k=1, early_stop_num=100)
    assert 11 <= tokens.shape[1] < 101
    assert (tokens != 1024).all()


def test_max_steps_is_a_hard_limit(gpt, s1):
    phones, bert, prompt, _ = s1
    assert gpt.generate(phones, bert, prompt, top_k=1, max_steps=7).shape == (1, 7)


def test_sampling_is_reproducible_with_a_seed_or_generator(gpt, s1):
    phones, bert, prompt, _ = s1
    a = gpt.generate(phones, bert, prompt, top_k=15, early_stop_num=30, seed=3)
    b = gpt.generate(phones, bert, prompt, top_k=15, early_stop_num=30, generator=torch.Generator().manual_seed(3))
    c = gpt.generate(phones, bert, prompt, top_k=15, early_stop_num=30, seed=4)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_batched_greedy_decoding_equals_per_sentence_decoding(eos_prone_gpt, s1):
    phones_list, bert_list = three_sentences(s1)
    prompt = s1[2]
    batched = eos_prone_gpt.generate_batch(phones_list, bert_list, prompt, top_k=1, early_stop_num=100)
    alone = [eos_prone_gpt.generate(p, b, prompt, top_k=1, early_stop_num=100) for p, b in zip(phones_list, bert_list)]
    assert len({t.shape[1] for t in alone}) > 1  # rows finish at different steps
    for got, want in zip(batched, alone):
        assert torch.equal(got, want)


def test_batched_decoding_to_the_step_limit_equals_per_sentence_decoding(gpt, s1):
    phones_list, bert_list = three_sentences(s1)
    prompt = s1[2]
    batched = gpt.generate_batch(phones_list, bert_list, prompt, top_k=1, early_stop_num=40)
    for p, b, got in zip(phones_list, bert_list, batched):
        assert torch.equal(got, gpt.generate(p, b, prompt, top_k=1, early_stop_num=40))


# The faster decoding steps (prefetched float and int8 weights, models/inference.py) are tested in test_inference.py.


# ---- input errors ---------------------------------------------------------------------------------------------------


def test_bert_features_of_the_wrong_length_are_refused(gpt, s1):
    phones, bert, prompt, _ = s1
    with pytest.raises(NarratorError, match="bert features must be"):
        gpt.generate(phones, bert[:, :, :-1], prompt)


def test_prompt_codes_out_of_range_are_refused(gpt, s1):
    phones, bert, prompt, _ = s1
    with pytest.raises(NarratorError, match="semantic codes"):
        gpt.generate(phones, bert, prompt + 1024)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(golden, s1):
    from models.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32)).train()  # dropout 0: both passes see the same network
    phones, bert, _, _ = s1
    target = golden["inputs"]["s1"]["forward_old_target_semantic"]
    grads = []
    for recompute in (False, True):
        model.zero_grad()
        model.h.gradient_checkpointing = recompute
        loss = model.training_loss(phones, bert, target)
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b)
