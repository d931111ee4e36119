"""models/inference.py: the inference preparations of the GPT and SoVITS models (golden models of ../shared/gsv).

"exact" must compute what the models as loaded compute (float rounding only), "fast" must run bfloat16 SoVITS and
int8 GPT steps on CPU, every preparation must be undoable, repeatable, invisible to the state dict and to training.
"""

from __future__ import annotations

import pytest
import torch

from models.checkpoints import load_gpt, load_sovits
from models.gpt import GPT, GPTConfig, GPTError
from models.inference import (
    CachedWNConv1d,
    CachedWNConvTranspose1d,
    ChannelsLastGenerator,
    FloatDecoding,
    InferenceError,
    InferencePlan,
    Int8Decoding,
    NumbaDecoding,
    NumbaInt8Decoding,
    OneDNNDecoding,
    decoding_mode,
    float_decoding,
    int8_decoding,
    is_channels_last,
    kernels_available,
    model_decoding,
    numba_decoding,
    numba_int8_decoding,
    onednn_available,
    prepare_for_inference,
    prepare_gpt,
    prepare_sovits,
    restore_sovits,
    store_column_major,
)
from models.sovits import Generator, SoVITS, WNConv1d, WNConvTranspose1d
from narrator.errors import NarratorError


@pytest.fixture()
def golden_gpt(golden) -> GPT:
    """A fresh copy of the golden GPT (64 wide, 2 layers), float32, row-major as constructed, model decoding."""
    model = GPT(GPTConfig.from_official(golden["config"]["s1"])).eval()
    model.load_official_weights(golden["state_dict_s1"])
    return model


@pytest.fixture(scope="module")
def s1(golden):
    """(phones (1,Lx), bert (1,1024,Lx), prompt (1,Ty), outputs dict)."""
    inputs = golden["inputs"]["s1"]
    return inputs["phoneme_ids"], inputs["bert"], inputs["prompt_semantic"], golden["outputs"]["s1"]


@pytest.fixture()
def plain_sovits(gsv_dir) -> SoVITS:
    """The golden v2Pro SoVITS as loaded without preparation (weight norm per call, (B, C, T) decoder)."""
    return load_sovits(gsv_dir / "golden_A_s2_v2Pro.pth", fast=False)


@pytest.fixture(scope="module")
def s2(golden):
    """decode(*args, **kwargs) of the golden v2Pro case without noise."""
    inputs = golden["inputs"]["s2_v2Pro"]
    return (inputs["codes"], inputs["text"], [inputs["refer_spec"]]), {"noise_scale": 0.0, "sv_emb": [inputs["sv_emb"]]}


def _logits_per_step(model: GPT, phones, bert, prompt, steps: int) -> list[torch.Tensor]:
    out = []
    hook = model.ar_predict_layer.register_forward_hook(lambda mod, inp, o: out.append(o.detach().clone()))
    model.generate(phones, bert, prompt, top_k=1, early_stop_num=steps - 1)
    hook.remove()
    return out


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a.float() - b.float()).abs().max().item()


def _weight_norm_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if isinstance(m, (WNConv1d, WNConvTranspose1d))]


# ---- the entry point ------------------------------------------------------------------------------------------------


def test_exact_mode_computes_what_the_models_as_loaded_compute(gsv_dir, plain_sovits, s1, s2):
    phones, bert, prompt, _ = s1
    plain_gpt = load_gpt(gsv_dir / "golden_A_s1.ckpt")
    sovits = load_sovits(gsv_dir / "golden_A_s2_v2Pro.pth", fast=False)
    gpt = load_gpt(gsv_dir / "golden_A_s1.ckpt")
    plan = prepare_for_inference(sovits, gpt, "exact")
    decoding = "numba" if kernels_available() else "onednn" if onednn_available() else "float"
    assert plan == InferencePlan("exact", torch.device("cpu"), torch.float32, True, torch.float32, decoding)
    assert _max_diff(sovits.decode(*s2[0], **s2[1]), plain_sovits.decode(*s2[0], **s2[1])) < 1e-5
    want = _logits_per_step(plain_gpt, phones, bert, prompt, 30)
    got = _logits_per_step(gpt, phones, bert, prompt, 30)
    assert len(got) == len(want) == 30
    assert max(_max_diff(g, w) for g, w in zip(got, want)) < 1e-5
    assert torch.equal(gpt.generate(phones, bert, prompt, top_k=1, early_stop_num=40),
                       plain_gpt.generate(phones, bert, prompt, top_k=1, early_stop_num=40))


def test_fast_mode_on_cpu_runs_bfloat16_sovits_and_int8_gpt_steps(gsv_dir, s1, s2):
    phones, bert, prompt, _ = s1
    sovits, gpt = load_sovits(gsv_dir / "golden_A_s2_v2Pro.pth"), load_gpt(gsv_dir / "golden_A_s1.ckpt")
    plan = prepare_for_inference(sovits, gpt, "fast")
    decoding = "numba_int8" if kernels_available() else "int8"
    assert (plan.sovits_dtype, plan.gpt_dtype, plan.gpt_decoding, plan.sovits_channels_last) == (
        torch.bfloat16, torch.float32, decoding, True)
    assert str(plan) == ("fast on cpu: SoVITS bfloat16 (channels-last decoder, cached weight norm), GPT float32 "
                         f"with {decoding} decoding steps")
    assert next(sovits.parameters()).dtype == torch.bfloat16 and decoding_mode(gpt) == decoding
    assert is_channels_last(sovits)
    wav = sovits.decode(*s2[0], **s2[1])
    assert wav.dtype == torch.bfloat16 and torch.isfinite(wav.float()).all()
    assert gpt.generate(phones, bert, prompt, top_k=1, early_stop_num=20).shape == (1, 21)


def test_an_unknown_mode_or_decoding_is_refused(gsv_dir, golden_gpt):
    sovits = load_sovits(gsv_dir / "golden_A_s2_v2.pth")
    with pytest.raises(InferenceError, match="exact, fast"):
        prepare_for_inference(sovits, golden_gpt, "turbo")
    with pytest.raises(NarratorError, match="'model', 'float', 'onednn', 'numba', 'numba_int8', 'int8'"):
        prepare_gpt(golden_gpt, "int4")


def test_preparing_twice_changes_nothing(gsv_dir, plain_sovits, s1, s2):
    phones, bert, prompt, _ = s1
    sovits, gpt = load_sovits(gsv_dir / "golden_A_s2_v2Pro.pth"), load_gpt(gsv_dir / "golden_A_s1.ckpt")
    prepare_for_inference(sovits, gpt, "fast")
    decoder = gpt.decoding_step
    wav = sovits.decode(*s2[0], **s2[1])
    tokens = gpt.generate(phones, bert, prompt, top_k=1, early_stop_num=30)
    modules = {name: type(m) for name, m in sovits.named_modules()}
    prepare_for_inference(sovits, gpt, "fast")
    assert {name: type(m) for name, m in sovits.named_modules()} == modules  # no stand-in of a stand-in
    assert gpt.decoding_step is decoder
    assert torch.equal(sovits.decode(*s2[0], **s2[1]), wav)
    assert torch.equal(gpt.generate(phones, bert, prompt, top_k=1, early_stop_num=30), tokens)
    assert set(sovits.state_dict()) == set(plain_sovits.state_dict())


# ---- GPT decoding steps ---------------------------------------------------------------------------------------------


def test_float_decoding_is_bit_identical_to_the_models_own_step(golden_gpt, s1):
    phones, bert, prompt, out = s1
    store_column_major(golden_gpt)
    assert decoding_mode(golden_gpt) == "model"
    want = _logits_per_step(golden_gpt, phones, bert, prompt, 30)
    float_decoding(golden_gpt)
    assert isinstance(golden_gpt.decoding_step, FloatDecoding) and decoding_mode(golden_gpt) == "float"
    got = _logits_per_step(golden_gpt, phones, bert, prompt, 30)
    assert all(torch.equal(g, w) for g, w in zip(got, want))
    expected_new = out["greedy_rp1.35_full_y"][:, prompt.shape[1]:]
    assert torch.equal(golden_gpt.generate(phones, bert, prompt, top_k=1, early_stop_num=24), expected_new)


ROW_MAJOR_FLOAT32 = [
    pytest.param("onednn", OneDNNDecoding, marks=pytest.mark.skipif(not onednn_available(),
                                                                  reason="this torch build has no oneDNN linear")),
    pytest.param("numba", NumbaDecoding, marks=pytest.mark.skipif(not kernels_available(),
                                                                reason="numba's thread-safe loops do not run here")),
]


@pytest.mark.parametrize(("decoding", "kind"), ROW_MAJOR_FLOAT32)
def test_row_major_float32_decodings_compute_float_decoding_up_to_float_rounding(golden_gpt, s1, decoding, kind):
    phones, bert, prompt, out = s1
    want = _logits_per_step(prepare_gpt(golden_gpt, "float"), phones, bert, prompt, 30)
    state = {k: v.clone() for k, v in golden_gpt.state_dict().items()}
    prepare_gpt(golden_gpt, decoding)
    assert type(golden_gpt.decoding_step) is kind and decoding_mode(golden_gpt) == decoding
    assert golden_gpt.h.layers[0].linear1.weight.is_contiguous()  # read in place, row-major
    assert all(torch.equal(v, golden_gpt.state_dict()[k]) for k, v in state.items())  # same values, same keys
    got = _logits_per_step(golden_gpt, phones, bert, prompt, 30)
    assert max(_max_diff(g, w) for g, w in zip(got, want)) < 1e-5
    expected_new = out["greedy_rp1.35_full_y"][:, prompt.shape[1]:]
    assert torch.equal(golden_gpt.generate(phones, bert, prompt, top_k=1, early_stop_num=24), expected_new)


@pytest.mark.skipif(not onednn_available(), reason="this torch build has no oneDNN fused linear")
def test_onednn_decoding_of_a_batch_of_uneven_sentences_equals_float_decoding(golden_gpt, s1):
    phones, bert, prompt, _ = s1
    sentences = [(phones[:, :n], bert[:, :, :n]) for n in (phones.shape[1], phones.shape[1] - 3, 5)]
    want = prepare_gpt(golden_gpt, "float").generate_batch([p for p, _ in sentences], [b for _, b in sentences],
                                                           prompt, top_k=1, early_stop_num=20)
    got = prepare_gpt(golden_gpt, "onednn").generate_batch([p for p, _ in sentences], [b for _, b in sentences],
                                                            prompt, top_k=1, early_stop_num=20)
    assert all(torch.equal(g, w) for g, w in zip(got, want))


def test_onednn_decoding_refuses_a_model_that_is_not_float32():
    model = prepare_gpt(GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32)).eval(), "onednn" if onednn_available() else
                        "float").to(torch.bfloat16)
    if not onednn_available():
        pytest.skip("this torch build has no oneDNN fused linear")
    with pytest.raises(GPTError, match="float32 on CPU"):
        model.generate(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 1024, 4, dtype=torch.bfloat16),
                       torch.zeros(1, 3, dtype=torch.long), early_stop_num=2)


NUMBA = pytest.mark.skipif(not kernels_available(), reason="numba's thread-safe parallel loops do not run here")


@NUMBA
@pytest.mark.parametrize("decoding", ["numba", "numba_int8"])
def test_numba_decoding_of_a_batch_of_uneven_sentences_decodes_each_as_alone(golden_gpt, s1, decoding):
    """Left padding is masked by the key bias (the compiled attention adds it as the float step does)."""
    phones, bert, prompt, _ = s1
    sentences = [(phones[:, :n], bert[:, :, :n]) for n in (phones.shape[1], phones.shape[1] - 3, 5)]
    prepare_gpt(golden_gpt, decoding)
    batch = golden_gpt.generate_batch([p for p, _ in sentences], [b for _, b in sentences], prompt, top_k=1,
                                      early_stop_num=20)
    alone = [golden_gpt.generate(p, b, prompt, top_k=1, early_stop_num=20) for p, b in sentences]
    assert all(torch.equal(g, w) for g, w in zip(batch, alone))
    if decoding == "numba":
        want = prepare_gpt(golden_gpt, "float").generate_batch([p for p, _ in sentences],
                                                               [b for _, b in sentences], prompt, top_k=1,
                                                               early_stop_num=20)
        assert all(torch.equal(g, w) for g, w in zip(batch, want))


@NUMBA
def test_numba_int8_decoding_follows_float32_greedy_tokens_and_logits(golden_gpt, s1):
    """Weight-only int8 (float32 activations, int8 copy of the KV cache) of the golden model: greedy tokens follow
    float32 on at least 90% of 40 steps; the logits of the prefill (bfloat16 where the CPU has it, else float32)
    and of the first step within 2% of their largest value."""
    phones, bert, prompt, _ = s1
    ref = golden_gpt.generate(phones, bert, prompt, top_k=1, early_stop_num=39)
    ref_logits = _logits_per_step(golden_gpt, phones, bert, prompt, 2)
    numba_int8_decoding(golden_gpt)
    assert type(golden_gpt.decoding_step) is NumbaInt8Decoding and decoding_mode(golden_gpt) == "numba_int8"
    got = golden_gpt.generate(phones, bert, prompt, top_k=1, early_stop_num=39)
    got_logits = _logits_per_step(golden_gpt, phones, bert, prompt, 2)
    assert got.shape == ref.shape == (1, 40)
    assert (got == ref).float().mean() >= 0.9
    if golden_gpt.decoding_step.prefill_dtype is None:
        assert torch.equal(got_logits[0], ref_logits[0])  # the prefill and the output head stay float32
    for step in (0, 1):
        assert (got_logits[step] - ref_logits[step]).abs().max() / ref_logits[step].abs().max() < 0.02


@NUMBA
def test_numba_int8_weights_are_remade_after_the_parameters_change_and_reused_otherwise(golden_gpt, s1):
    phones, bert, prompt, _ = s1
    numba_int8_decoding(golden_gpt)
    before = golden_gpt.generate(phones, bert, prompt, top_k=1, early_stop_num=30)
    weights = golden_gpt.decoding_step._weights
    golden_gpt.generate(phones, bert, prompt, top_k=1, early_stop_num=5)
    assert golden_gpt.decoding_step._weights is weights  # unchanged parameters: the copies are reused
    with torch.no_grad():
        golden_gpt.h.layers[0].linear2.weight.mul_(-3.0)
    after = golden_gpt.generate(phones, bert, prompt, top_k=1, early_stop_num=30)
    assert golden_gpt.decoding_step._weights is not weights
    assert not torch.equal(before, after)
    numba_decoding(golden_gpt)
    float32 = golden_gpt.generate(phones, bert, prompt, top_k=1, early_stop_num=30)
    assert (after == float32).float().mean() >= 0.8


@NUMBA
def test_numba_decoding_refuses_a_model_that_is_not_float32():
    model = prepare_gpt(GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32)).eval(), "numba").to(torch.bfloat16)
    with pytest.raises(GPTError, match="float32 on CPU"):
        model.generate(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 1024, 4, dtype=torch.bfloat16),
                       torch.zeros(1, 3, dtype=torch.long), early_stop_num=2)


@NUMBA
def test_numba_decoding_from_several_threads_at_once_gives_each_its_own_tokens(golden_gpt, s1):
    """The service decodes in its batcher thread while other requests run: the compiled step is thread-safe."""
    from concurrent.futures import ThreadPoolExecutor

    phones, bert, prompt, _ = s1
    prepare_gpt(golden_gpt, "numba")
    lengths = (phones.shape[1], phones.shape[1] - 2, 6, 9)
    alone = [golden_gpt.generate(phones[:, :n], bert[:, :, :n], prompt, top_k=1, early_stop_num=25) for n in lengths]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda n: golden_gpt.generate(phones[:, :n], bert[:, :, :n], prompt, top_k=1,
                                                               early_stop_num=25), lengths))
    assert all(torch.equal(a, b) for a, b in zip(together, alone))


def test_int8_decoding_follows_float32_greedy_tokens_and_logits(golden_gpt, s1):
    """Greedy int8 decoding of the golden model: measured equal to float32 on the first 52 of 61 tokens (then the
    two diverge, as float32 and bfloat16 do), logits of the first int8 step within 0.8% of their largest value."""
    phones, bert, prompt, _ = s1
    ref = golden_gpt.generate(phones, bert, prompt, top_k=1, early_stop_num=39)
    ref_logits = _logits_per_step(golden_gpt, phones, bert, prompt, 2)
    int8_decoding(golden_gpt)
    assert isinstance(golden_gpt.decoding_step, Int8Decoding) and decoding_mode(golden_gpt) == "int8"
    got = golden_gpt.generate(phones, bert, prompt, top_k=1, early_stop_num=39)
    got_logits = _logits_per_step(golden_gpt, phones, bert, prompt, 2)
    assert got.shape == ref.shape == (1, 40)
    assert (got == ref).float().mean() >= 0.9
    assert torch.equal(got_logits[0], ref_logits[0])  # the prefill and the output head stay float32
    step1 = (got_logits[1] - ref_logits[1]).abs().max() / ref_logits[1].abs().max()
    assert step1 < 0.02


@pytest.mark.parametrize("back", [model_decoding, float_decoding])
def test_switching_back_from_int8_restores_exact_float32_decoding(golden_gpt, s1, back):
    phones, bert, prompt, out = s1
    expected_new = out["greedy_rp1.35_full_y"][:, prompt.shape[1]:]
    prepare_gpt(golden_gpt, "int8")
    golden_gpt.generate(phones, bert, prompt, top_k=1, early_stop_num=24)
    back(golden_gpt)
    assert decoding_mode(golden_gpt) == back.__name__.removesuffix("_decoding")
    assert torch.equal(golden_gpt.generate(phones, bert, prompt, top_k=1, early_stop_num=24), expected_new)
    assert set(golden_gpt.state_dict()) == set(GPT(golden_gpt.cfg).state_dict())  # no packed weights in the state


def test_int8_weights_are_repacked_after_the_parameters_change(golden_gpt, s1):
    phones, bert, prompt, _ = s1
    int8_decoding(golden_gpt)
    before = golden_gpt.generate(phones, bert, prompt, top_k=1, early_stop_num=30)
    with torch.no_grad():
        golden_gpt.h.layers[0].linear2.weight.mul_(-3.0)
    after = golden_gpt.generate(phones, bert, prompt, top_k=1, early_stop_num=30)
    model_decoding(golden_gpt)
    assert not torch.equal(before, after)
    fp32 = golden_gpt.generate(phones, bert, prompt, top_k=1, early_stop_num=30)
    assert (after == fp32).float().mean() >= 0.8
    # loading other weights (same storage, new version) and converting (new storage) repack as well
    int8_decoding(golden_gpt).generate(phones, bert, prompt, top_k=1, early_stop_num=5)
    packs = golden_gpt.decoding_step._layers
    golden_gpt.load_state_dict(golden_gpt.state_dict())
    golden_gpt.generate(phones, bert, prompt, top_k=1, early_stop_num=5)
    assert golden_gpt.decoding_step._layers is not packs
    packs = golden_gpt.decoding_step._layers
    golden_gpt.generate(phones, bert, prompt, top_k=1, early_stop_num=5)
    assert golden_gpt.decoding_step._layers is packs  # unchanged parameters: the packs are reused


def test_int8_decoding_of_a_gpt_built_under_inference_mode_generates(golden, s1):
    """Parameters made under torch.inference_mode() are inference tensors without a version counter (issue 19,
    part 6): fingerprinting them for the int8 packs must not fail at the next generate, in or out of the mode."""
    phones, bert, prompt, _ = s1
    with torch.inference_mode():
        model = GPT(GPTConfig.from_official(golden["config"]["s1"])).eval()
        model.load_official_weights(golden["state_dict_s1"])
        prepare_gpt(model, "int8")
        assert next(model.parameters()).is_inference()
        inside = model.generate(phones, bert, prompt, top_k=1, early_stop_num=10)
    outside = model.generate(phones, bert, prompt, top_k=1, early_stop_num=10)
    assert inside.shape[1] > 0
    assert torch.equal(inside, outside)


def test_int8_decoding_is_refused_off_cpu(golden_gpt):
    golden_gpt.to("meta")
    with pytest.raises(GPTError, match="CPU only"):
        int8_decoding(golden_gpt)


def test_column_major_storage_keeps_values_keys_and_training(golden_gpt, golden, s1):
    phones, bert, prompt, _ = s1
    before = {k: v.clone() for k, v in golden_gpt.state_dict().items()}
    store_column_major(golden_gpt)
    store_column_major(golden_gpt)
    w = golden_gpt.h.layers[0].self_attn.in_proj_weight
    assert w.shape == (192, 64) and w.stride() == (1, 192)
    assert golden_gpt.h.layers[0].linear2.weight.is_contiguous()  # 4C-wide input: row-major is faster
    after = golden_gpt.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)
    fresh = GPT(golden_gpt.cfg)
    fresh.load_state_dict(after)
    # the training loss and its gradients are those of the row-major model up to float rounding
    codes = prompt[:, :20]
    losses, grads = [], []
    for model in (golden_gpt, fresh):
        model.train()
        model.zero_grad()
        loss = model.training_loss(phones, bert, codes)
        loss.backward()
        losses.append(loss.item())
        grads.append(model.h.layers[0].self_attn.in_proj_weight.grad.clone())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert _max_diff(grads[0], grads[1]) < 1e-4 * grads[1].abs().max().item()


# ---- SoVITS: cached weight norm, channels-last decoder ------------------------------------------------------------


@pytest.mark.parametrize("channels_last", [True, False])
def test_prepared_sovits_decodes_as_the_plain_model(plain_sovits, gsv_dir, s2, channels_last):
    prepared = prepare_sovits(load_sovits(gsv_dir / "golden_A_s2_v2Pro.pth", fast=False), channels_last=channels_last)
    assert is_channels_last(prepared) == channels_last
    assert type(prepared.dec) is (ChannelsLastGenerator if channels_last else Generator)
    assert {type(m) for m in _weight_norm_modules(prepared)} == {CachedWNConv1d, CachedWNConvTranspose1d}
    assert _max_diff(prepared.decode(*s2[0], **s2[1]), plain_sovits.decode(*s2[0], **s2[1])) < 1e-6
    with torch.inference_mode():  # caches made or used under inference mode serve no_grad decoding as well
        in_inference_mode = prepared.decode(*s2[0], **s2[1])
    assert torch.equal(in_inference_mode, prepared.decode(*s2[0], **s2[1]))


def test_restore_and_switching_layouts_give_the_models_own_modules_back(plain_sovits, s2):
    reference = plain_sovits.decode(*s2[0], **s2[1])
    params = {name: p for name, p in plain_sovits.named_parameters()}
    prepare_sovits(plain_sovits)
    prepare_sovits(plain_sovits, channels_last=False)
    assert type(plain_sovits.dec) is Generator
    assert all(not m._weight_cache.get("channels_last") for m in _weight_norm_modules(plain_sovits))
    restore_sovits(plain_sovits)
    assert {type(m) for m in _weight_norm_modules(plain_sovits)} == {WNConv1d, WNConvTranspose1d}
    assert all(p is params[name] for name, p in plain_sovits.named_parameters())  # the same Parameters throughout
    assert torch.equal(plain_sovits.decode(*s2[0], **s2[1]), reference)


def test_prepared_sovits_keeps_its_state_dict(plain_sovits, gsv_dir, s2):
    prepared = load_sovits(gsv_dir / "golden_A_s2_v2Pro.pth")  # fast=True: prepared
    assert is_channels_last(prepared)
    state = prepared.state_dict()
    assert list(state) == list(plain_sovits.state_dict())
    fresh = SoVITS(prepared.config)
    fresh.load_state_dict(state)
    assert _max_diff(fresh.eval().decode(*s2[0], **s2[1]), prepared.decode(*s2[0], **s2[1])) < 1e-6


def test_converting_a_prepared_sovits_remakes_its_caches(gsv_dir, s2):
    converted = load_sovits(gsv_dir / "golden_A_s2_v2Pro.pth").to(torch.bfloat16)
    prepared_after = prepare_sovits(load_sovits(gsv_dir / "golden_A_s2_v2Pro.pth", fast=False).to(torch.bfloat16))
    assert torch.equal(converted.decode(*s2[0], **s2[1]), prepared_after.decode(*s2[0], **s2[1]))


def test_training_a_prepared_sovits_drops_the_caches_and_trains_the_weights(plain_sovits, gsv_dir, s2):
    prepared = load_sovits(gsv_dir / "golden_A_s2_v2Pro.pth")
    g = torch.randn(1, prepared.config.gin_channels, 1, generator=torch.Generator().manual_seed(0))
    z = torch.randn(1, prepared.config.inter_channels, 12, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(1, 1, 12)
    grads = []
    for model in (prepared, plain_sovits):
        model.train()
        model.zero_grad()
        loss = model.dec(z, g=g).pow(2).mean() + model.flow(z, mask, g=g).pow(2).mean()
        loss.backward()
        grads.append({name: p.grad.clone() for name, p in model.named_parameters()
                      if p.grad is not None and name.startswith(("dec.", "flow."))})
    assert all(not m._weight_cache for m in _weight_norm_modules(prepared))  # train() dropped them
    assert set(grads[0]) == set(grads[1]) and "dec.ups.0.weight_g" in grads[0] and "dec.ups.0.weight_v" in grads[0]
    assert all(_max_diff(grads[0][k], grads[1][k]) <= 1e-6 + 1e-5 * grads[1][k].abs().max().item() for k in grads[1])
    with torch.no_grad():  # one SGD step on the prepared model, then the same weights in a plain model
        for p in prepared.parameters():
            if p.grad is not None:
                p.sub_(0.5 * p.grad)
    prepared.eval()
    trained = SoVITS(prepared.config)
    trained.load_state_dict(prepared.state_dict())
    wav = prepared.decode(*s2[0], **s2[1])
    assert _max_diff(wav, trained.eval().decode(*s2[0], **s2[1])) < 1e-6
    assert _max_diff(wav, plain_sovits.eval().decode(*s2[0], **s2[1])) > 1e-4  # the step changed the output
