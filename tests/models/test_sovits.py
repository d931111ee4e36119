"""SoVITS synthesizer (models.sovits) against the official GPT-SoVITS golden vectors (shared/gsv/GOLDEN.md)."""

from __future__ import annotations

import json

import pytest
import torch

from models.audio import spectrogram
from models.checkpoints import load_sovits
from models.sovits import MRTEConfig, SoVITS, SoVITSConfig, SoVITSError

ATOL = 1e-4
VERSIONS = ["v2", "v2Pro"]
INTERMEDIATES = ["enc_p_x", "m_p", "logs_p", "y_mask", "z_after_flow_reverse", "dec_input_z_masked"]


@pytest.fixture(scope="module")
def models(gsv_dir):
    return {v: load_sovits(gsv_dir / f"golden_A_s2_{v}.pth") for v in VERSIONS}


def _case(golden, models, version):
    inputs = golden["inputs"][f"s2_{version}"]
    outputs = golden["outputs"][f"s2_{version}"]
    sv = [inputs["sv_emb"]] if "sv_emb" in inputs else None
    return models[version], inputs, outputs, sv


def _assert_close(actual, expected, atol=ATOL):
    assert actual.shape == expected.shape
    diff = (actual.float() - expected.float()).abs().max().item()
    assert diff <= atol, f"max abs diff {diff:.3g} > {atol}"


def test_spectrogram_matches_official_stft(golden):
    for version in VERSIONS:
        inputs = golden["inputs"][f"s2_{version}"]
        _assert_close(spectrogram(inputs["refer_wav_32k"]), inputs["refer_spec"], atol=1e-5)


@pytest.mark.parametrize("version", VERSIONS)
def test_extract_latent_reproduces_official_codes_exactly(golden, models, version):
    model, inputs, outputs, _ = _case(golden, models, version)
    codes = model.extract_latent(inputs["ssl"])
    assert codes.dtype == torch.int64
    assert torch.equal(codes, outputs["extract_latent_codes"])


@pytest.mark.parametrize("version", VERSIONS)
def test_decode_without_noise_matches_official_waveform(golden, models, version):
    model, inputs, outputs, sv = _case(golden, models, version)
    refer = spectrogram(inputs["refer_wav_32k"])
    wav = model.decode(inputs["codes"], inputs["text"], [refer], noise_scale=0.0, sv_emb=sv)
    _assert_close(wav, outputs["wav_ns0"])


@pytest.mark.parametrize("version", VERSIONS)
def test_decode_intermediates_match_official(golden, models, version):
    model, inputs, outputs, sv = _case(golden, models, version)
    _, inter = model.decode(
        inputs["codes"], inputs["text"], [inputs["refer_spec"]], noise_scale=0.0, sv_emb=sv, return_intermediates=True
    )
    expected = outputs["intermediates_ns0"]
    for name in INTERMEDIATES:
        _assert_close(inter[name], expected[name])


@pytest.mark.parametrize("version", VERSIONS)
def test_reference_encoder_output_matches_official_before_sv_fusion(golden, models, version):
    model, inputs, outputs, _ = _case(golden, models, version)
    with torch.no_grad():
        ge = model.ref_enc(inputs["refer_spec"][:, :704])
    _assert_close(ge, outputs["intermediates_ns0"]["ge_ref_enc"])


@pytest.mark.parametrize("version", VERSIONS)
def test_decode_with_recorded_noise_matches_official(golden, models, version):
    model, inputs, outputs, sv = _case(golden, models, version)
    wav = model.decode(
        inputs["codes"], inputs["text"], [inputs["refer_spec"]], noise_scale=0.5, sv_emb=sv,
        noise=inputs["decode_noise_eps_ns0p5"],
    )
    _assert_close(wav, outputs["wav_ns0p5"])


@pytest.mark.parametrize("version", VERSIONS)
def test_decode_at_speed_1p25_matches_official(golden, models, version):
    model, inputs, outputs, sv = _case(golden, models, version)
    wav = model.decode(inputs["codes"], inputs["text"], [inputs["refer_spec"]], noise_scale=0.0, speed=1.25, sv_emb=sv)
    _assert_close(wav, outputs["wav_ns0_speed1p25"])


def test_decode_output_length_is_1280_samples_per_code(golden, models):
    model, inputs, _, _ = _case(golden, models, "v2")
    wav = model.decode(inputs["codes"], inputs["text"], [inputs["refer_spec"]], noise_scale=0.0)
    assert wav.shape == (1, 1, 1280 * inputs["codes"].shape[-1])
    assert model.samples_per_code == 1280 and model.sampling_rate == 32000


def test_two_identical_references_give_the_same_timbre_as_one(golden, models):
    model, inputs, _, _ = _case(golden, models, "v2")
    with torch.no_grad():
        one = model.timbre([inputs["refer_spec"]])
        two = model.timbre([inputs["refer_spec"], inputs["refer_spec"]])
    _assert_close(two, one, atol=1e-6)


def test_v2pro_decode_without_sv_emb_is_refused_with_instructions(golden, models):
    model, inputs, _, _ = _case(golden, models, "v2Pro")
    with pytest.raises(SoVITSError, match="sv_emb"):
        model.decode(inputs["codes"], inputs["text"], [inputs["refer_spec"]], noise_scale=0.0)


def test_wrong_noise_shape_is_refused(golden, models):
    model, inputs, _, _ = _case(golden, models, "v2")
    with pytest.raises(SoVITSError, match="noise must have shape"):
        model.decode(inputs["codes"], inputs["text"], [inputs["refer_spec"]], noise=torch.zeros(1, 8, 3))


@pytest.mark.parametrize("version", ["v2", "v2Pro", "v2ProPlus"])
def test_full_size_model_has_exactly_the_manifest_keys_and_shapes(gsv_dir, version):
    manifest = json.loads((gsv_dir / f"manifest_sovits_{version}.json").read_text())
    with torch.device("meta"):
        model = SoVITS(SoVITSConfig.from_official(manifest["config"], version=version))
    ours = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert ours == [(k, shape) for k, shape, _ in manifest["state_dict"]]
    assert sum(p.numel() for p in model.parameters()) == manifest["param_count"]
    no_q = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("enc_q."))
    assert no_q == manifest["param_count_excl_enc_q"]


def test_mrte_widths_default_to_official_when_config_has_no_mrte_key(golden):
    config = {k: v for k, v in golden["config"]["s2_v2"].items() if k != "mrte"}
    assert SoVITSConfig.from_official(config).mrte == MRTEConfig(192, 512, 192, 4)
    assert SoVITSConfig.from_official(golden["config"]["s2_v2"]).mrte == MRTEConfig(16, 32, 16, 4)


def test_mrte_hidden_width_must_equal_the_timbre_width():
    with pytest.raises(SoVITSError, match="MRTE hidden_size"):
        SoVITS(SoVITSConfig(gin_channels=32, mrte=MRTEConfig(16, 64, 16, 4)))


def test_unsupported_version_is_refused():
    with pytest.raises(SoVITSError, match="not supported"):
        SoVITSConfig(version="v3")


def _tiny_config(version: str = "v2") -> SoVITSConfig:
    gin = 32 if version == "v2" else 24
    return SoVITSConfig(
        version=version, inter_channels=8, hidden_channels=16, filter_channels=32, n_layers=2,
        resblock_kernel_sizes=(3,), resblock_dilation_sizes=((1, 3, 5),), upsample_initial_channel=32,
        gin_channels=gin, segment_size=4, mrte=MRTEConfig(16, 32 if version == "v2" else 512, 16, 4),
    )


@pytest.mark.parametrize("version", ["v2", "v2Pro"])
def test_training_forward_returns_the_vits_loss_terms_and_backpropagates(version):
    torch.manual_seed(0)
    model = SoVITS(_tiny_config(version)).train()
    b, frames = 2, 10
    spec = torch.rand(b, 1025, frames)
    lengths = torch.tensor([10, 8])
    sv = torch.randn(b, 20480) if version != "v2" else None
    out = model(torch.randn(b, 768, 2 * frames), spec, lengths, torch.randint(0, 732, (b, 7)), torch.tensor([7, 5]), sv)
    assert out["y_hat"].shape == (b, 1, 4 * 640)
    assert out["ids_slice"].shape == (b,) and bool((out["ids_slice"] + 4 <= lengths).all())
    for name in ("z", "z_p", "m_p", "logs_p", "m_q", "logs_q"):
        assert out[name].shape == (b, 8, frames)
    assert out["z_mask"].shape == (b, 1, frames) and out["z_mask"][1, 0, 8:].sum() == 0
    assert out["commit_loss"].dim() == 0
    loss = out["y_hat"].abs().mean() + (out["z_p"] - out["m_p"]).pow(2).mean()
    loss.backward()
    assert model.enc_q.pre.weight.grad is not None and model.enc_p.proj.weight.grad is not None
    assert model.ssl_proj.weight.grad is None  # frozen quantizer path


def test_flow_reverse_inverts_forward():
    torch.manual_seed(0)
    model = SoVITS(_tiny_config()).eval()
    for flow in model.flow.flows[::2]:
        torch.nn.init.normal_(flow.post.weight, std=0.1)
    z, mask, g = torch.randn(1, 8, 12), torch.ones(1, 1, 12), torch.randn(1, 32, 1)
    with torch.no_grad():
        _assert_close(model.flow(model.flow(z, mask, g=g), mask, g=g, reverse=True), z, atol=1e-5)


def test_bfloat16_model_keeps_exact_codes_and_a_close_waveform(gsv_dir, golden):
    model = load_sovits(gsv_dir / "golden_A_s2_v2Pro.pth", dtype=torch.bfloat16)
    inputs, outputs = golden["inputs"]["s2_v2Pro"], golden["outputs"]["s2_v2Pro"]
    assert torch.equal(model.extract_latent(inputs["ssl"]), outputs["extract_latent_codes"])
    wav = model.decode(
        inputs["codes"], inputs["text"], [inputs["refer_spec"]], noise_scale=0.0, sv_emb=[inputs["sv_emb"]]
    )
    assert wav.dtype == torch.bfloat16
    _assert_close(wav, outputs["wav_ns0"], atol=0.05 * outputs["wav_ns0"].abs().max().item())


def test_decoder_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    dec = SoVITS(_tiny_config()).dec.train()
    z, g = torch.randn(2, 8, 6), torch.randn(2, 32, 1)
    grads = []
    for recompute in (False, True):
        dec.zero_grad()
        dec.gradient_checkpointing = recompute
        dec(z, g).pow(2).mean().backward()
        grads.append([p.grad.clone() for p in dec.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
