"""v2Pro speaker-verification front end (models.sv, models.audio_sv) against the official golden data
(shared/gsv/SV.md, golden_sv.pt, golden_sv_eres2netv2_small.ckpt, manifest_sv_eres2netv2.json)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from models.audio_sv import (
    kaldi_fbank,
    kaldi_mel_banks,
    num_fbank_frames,
    povey_window,
    resample_32k_to_16k,
    sinc_resample_kernel,
)
from models.sv import (
    ERes2NetV2,
    SVCheckpointError,
    SVConfig,
    SVError,
    load_sv,
    sv_embedding,
)
from narrator.errors import NarratorError

RESAMPLE_ATOL = 1e-6
REL = 1e-4  # max abs diff relative to the golden tensor's largest magnitude
STAGES = ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "layer3_ds", "fuse34"]
SMALL_CKPT = "golden_sv_eres2netv2_small.ckpt"


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, rel: float = REL) -> None:
    assert actual.shape == expected.shape
    scale = max(1.0, expected.abs().max().item())
    diff = (actual.float() - expected.float()).abs().max().item()
    assert diff <= rel * scale, f"max abs diff {diff:.3g} > {rel} x {scale:.3g}"


@pytest.fixture(scope="module")
def golden(gsv_dir):
    return torch.load(gsv_dir / "golden_sv.pt", weights_only=False)


@pytest.fixture(scope="module")
def manifest(gsv_dir):
    return json.loads((gsv_dir / "manifest_sv_eres2netv2.json").read_text())


@pytest.fixture(scope="module")
def small_model(gsv_dir):
    return load_sv(gsv_dir / SMALL_CKPT)


@pytest.fixture(scope="module")
def small_state_dict(gsv_dir):
    return torch.load(gsv_dir / SMALL_CKPT, weights_only=True)


@pytest.fixture(scope="module")
def full_size_meta_model(manifest):
    """The full-size network on the meta device: shapes and keys without allocating 53 M parameters."""
    with torch.device("meta"):
        return ERes2NetV2(SVConfig.from_official_kwargs(manifest["effective_kwargs"])).eval()


# ---------------------------------------------------------------------------------------------------------------
# 32 kHz -> 16 kHz resampling
# ---------------------------------------------------------------------------------------------------------------


def test_resample_kernel_is_the_28_tap_hann_sinc_of_the_golden(golden):
    kernel, width = sinc_resample_kernel(32000, 16000)
    assert width == 13
    assert kernel.dtype == torch.float32
    assert_close_rel(kernel, golden["resample"]["kernel"], rel=1e-7)


def test_resample_halves_a_32k_waveform_like_the_golden(golden):
    out = resample_32k_to_16k(golden["resample"]["wav_speech32k"].unsqueeze(0))
    expected = golden["resample"]["wav_speech32k_to16k"]
    assert out.shape == (1, 48000)
    assert (out - expected).abs().max().item() <= RESAMPLE_ATOL


def test_resample_of_an_odd_length_keeps_ceil_half_the_samples(golden):
    out = resample_32k_to_16k(golden["resample"]["wav_noise32k_odd"].unsqueeze(0))
    expected = golden["resample"]["wav_noise32k_odd_to16k"]
    assert out.shape == (1, 16001)
    assert (out - expected).abs().max().item() <= RESAMPLE_ATOL


def test_resample_treats_batch_rows_independently(golden):
    wav = golden["resample"]["wav_speech32k"][:32001]
    batch = torch.stack([wav, -0.5 * wav])
    out = resample_32k_to_16k(batch)
    assert out.shape == (2, 16001)
    assert torch.allclose(out[1], -0.5 * resample_32k_to_16k(wav), atol=1e-7)


# ---------------------------------------------------------------------------------------------------------------
# Kaldi-style filter bank
# ---------------------------------------------------------------------------------------------------------------


def test_povey_window_matches_golden(golden):
    assert_close_rel(povey_window(), golden["fbank"]["povey_window_400"], rel=1e-6)


def test_mel_banks_match_golden_80_by_256(golden):
    assert_close_rel(kaldi_mel_banks(), golden["fbank"]["mel_banks_80x256"], rel=1e-6)


@pytest.mark.parametrize("n_samples, n_frames", [(48000, 298), (21920, 135), (400, 1), (559, 1), (560, 2), (399, 0)])
def test_fbank_frame_count_snips_edges(n_samples, n_frames):
    assert num_fbank_frames(n_samples) == n_frames


@pytest.mark.parametrize("name", ["speech", "noise"])
def test_fbank_matches_golden(golden, name):
    fb = golden["fbank"]
    assert_close_rel(kaldi_fbank(fb[f"wav_{name}16k"]), fb[f"fbank_{name}"])


def test_fbank_of_a_batch_stacks_the_rows(golden):
    assert_close_rel(kaldi_fbank(golden["inputs"]["batch_wav16k"]), golden["inputs"]["feat_batch"])


def test_fbank_of_the_resampled_32k_speech_matches_golden(golden):
    rs = golden["resample"]
    assert_close_rel(kaldi_fbank(resample_32k_to_16k(rs["wav_speech32k"])), rs["fbank_speech32k_to16k"])


def test_fbank_refuses_audio_shorter_than_one_frame():
    with pytest.raises(ValueError, match="at least 400 samples"):
        kaldi_fbank(torch.zeros(399))


# ---------------------------------------------------------------------------------------------------------------
# reduced model (m_channels 8) against the official outputs
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def noise_stages(small_model, golden):
    with torch.no_grad():
        return small_model.stage_outputs(golden["inputs"]["feat_noise"])


def test_config_is_inferred_from_the_reduced_checkpoint(small_model, golden):
    cfg = small_model.config
    kwargs = golden["model"]["kwargs"]
    assert (cfg.m_channels, cfg.base_width, cfg.scale, cfg.expansion) == (
        kwargs["m_channels"],
        kwargs["baseWidth"],
        kwargs["scale"],
        kwargs["expansion"],
    )
    assert cfg.stage_widths == (3, 6, 12, 24)
    assert cfg.embedding_dim == 2560
    assert sum(p.numel() for p in small_model.parameters()) == golden["model"]["describe"]["param_count"]


def test_loaded_model_is_float32_in_eval_mode(small_model):
    assert not small_model.training
    assert {p.dtype for p in small_model.parameters()} == {torch.float32}


@pytest.mark.parametrize("stage", STAGES)
def test_stage_output_matches_golden(noise_stages, golden, stage):
    assert_close_rel(noise_stages[stage], golden["outputs"]["intermediates_noise"][stage])


def test_block_relu_saturates_at_20(noise_stages):
    layer3 = noise_stages["layer3"]
    assert layer3.max().item() == 20.0
    assert (layer3 == 20.0).float().mean().item() > 0.05


def test_stem_relu_is_not_clamped(small_model):
    image = torch.full((1, 1, 8, 8), 1000.0)
    with torch.no_grad():
        assert small_model.stem(image).max().item() > 20.0


@pytest.mark.parametrize("name", ["speech", "noise"])
def test_forward3_matches_golden(small_model, golden, name):
    with torch.no_grad():
        out = small_model.forward3(golden["inputs"][f"feat_{name}"])
    assert_close_rel(out, golden["outputs"][f"forward3_{name}"])


def test_forward3_of_a_batch_matches_golden(small_model, golden):
    with torch.no_grad():
        out = small_model.forward3(golden["inputs"]["feat_batch"])
    assert_close_rel(out, golden["outputs"]["forward3_batch"])


@pytest.mark.parametrize("name", ["speech", "noise"])
def test_embedding_head_matches_golden(small_model, golden, name):
    with torch.no_grad():
        out = small_model(golden["inputs"][f"feat_{name}"])
    assert_close_rel(out, golden["outputs"][f"forward_{name}"])


def test_forward3_leaves_the_input_untouched(small_model):
    feat = torch.randn(1, 16, 80, generator=torch.Generator().manual_seed(0))
    before = feat.clone()
    with torch.no_grad():
        small_model.forward3(feat)
    assert torch.equal(feat, before)


def test_sv_embedding_runs_the_full_32k_chain(small_model, golden):
    out = sv_embedding(golden["resample"]["wav_speech32k"].unsqueeze(0), small_model)
    assert_close_rel(out, golden["outputs"]["forward3_chain_speech32k"])


def test_sv_embedding_refuses_audio_too_short_for_one_frame(small_model):
    with pytest.raises(SVError, match="too short"):
        sv_embedding(torch.zeros(1, 700), small_model)


# ---------------------------------------------------------------------------------------------------------------
# full-size model against the manifest
# ---------------------------------------------------------------------------------------------------------------


def test_full_size_model_has_exactly_the_manifest_keys_and_shapes(full_size_meta_model, manifest):
    ours = {k: list(v.shape) for k, v in full_size_meta_model.state_dict().items()}
    expected = {k: v["shape"] for k, v in manifest["state_dict"].items()}
    assert len(ours) == manifest["state_dict_entries"] == 1001
    assert sorted(set(ours) - set(expected)) == []
    assert sorted(set(expected) - set(ours)) == []
    assert {k: s for k, s in ours.items() if s != expected[k]} == {}


def test_full_size_state_dict_dtypes_match_manifest(full_size_meta_model, manifest):
    for key, tensor in full_size_meta_model.state_dict().items():
        assert str(tensor.dtype).removeprefix("torch.") == manifest["state_dict"][key]["dtype"], key


def test_full_size_parameter_counts_match_manifest(full_size_meta_model, manifest):
    total = sum(p.numel() for p in full_size_meta_model.parameters())
    seg_1 = sum(p.numel() for p in full_size_meta_model.seg_1.parameters())
    buffers = sum(b.numel() for b in full_size_meta_model.buffers())
    assert total == manifest["parameter_count"]
    assert seg_1 == manifest["parameter_count_seg_1_only"]
    assert total - seg_1 == manifest["parameter_count_used_by_forward3"]
    assert buffers == manifest["buffer_count"]


def test_full_size_derived_sizes_match_manifest(manifest):
    cfg = SVConfig.from_official_kwargs(manifest["effective_kwargs"])
    derived = manifest["derived"]
    assert list(cfg.stage_widths) == derived["block_width_per_stage"]
    assert list(cfg.stage_out_channels) == derived["stage_out_channels"]
    assert cfg.embedding_dim == derived["forward3_dim"] == 20480


def test_full_size_stage_shapes_match_manifest(full_size_meta_model, manifest):
    feat = torch.empty(1, 298, 80, device="meta")
    measured = manifest["measured_stage_shapes_forward3"]["input_feat_1x298x80"]
    shapes = {k: list(v.shape) for k, v in full_size_meta_model.stage_outputs(feat).items()}
    shapes["forward3"] = list(full_size_meta_model.forward3(feat).shape)
    assert shapes == measured


# ---------------------------------------------------------------------------------------------------------------
# bad checkpoints
# ---------------------------------------------------------------------------------------------------------------


def test_missing_checkpoint_is_a_narrator_error(tmp_path):
    with pytest.raises(SVCheckpointError, match="not found") as info:
        load_sv(tmp_path / "nope.ckpt")
    assert isinstance(info.value, NarratorError)


def test_checkpoint_with_wrong_keys_lists_missing_and_extra(tmp_path, small_state_dict):
    sd = dict(small_state_dict)
    del sd["fuse34.local_att.0.bias"]
    sd["layer9.0.conv1.weight"] = torch.zeros(1)
    path = tmp_path / "bad_keys.ckpt"
    torch.save(sd, path)
    with pytest.raises(SVCheckpointError) as info:
        load_sv(path)
    message = str(info.value)
    assert "missing 1 key(s): fuse34.local_att.0.bias" in message
    assert "unexpected 1 key(s): layer9.0.conv1.weight" in message


def test_checkpoint_with_a_wrong_shape_names_the_key(tmp_path, small_state_dict):
    sd = dict(small_state_dict)
    sd["seg_1.bias"] = torch.zeros(7, dtype=torch.float16)
    path = tmp_path / "bad_shape.ckpt"
    torch.save(sd, path)
    with pytest.raises(SVCheckpointError, match=r"wrong shapes \(1\): seg_1.bias \(7,\)"):
        load_sv(path)


def test_explicit_config_that_does_not_fit_is_refused(gsv_dir):
    with pytest.raises(SVCheckpointError, match="does not fit"):
        load_sv(gsv_dir / SMALL_CKPT, config=SVConfig(m_channels=16))


def test_sovits_style_checkpoint_is_not_an_sv_checkpoint(tmp_path):
    path = tmp_path / "s2.pth"
    torch.save({"weight": {"enc_p.ssl_proj.weight": torch.zeros(2)}, "config": {}, "info": "x"}, path)
    with pytest.raises(SVCheckpointError, match="not an sv .*SoVITS"):
        load_sv(path)


def test_unrelated_state_dict_is_not_an_sv_checkpoint(tmp_path):
    path = tmp_path / "linear.ckpt"
    torch.save(torch.nn.Linear(2, 3).state_dict(), path)
    with pytest.raises(SVCheckpointError, match="not an sv"):
        load_sv(path)


def test_file_that_is_not_a_torch_checkpoint_is_refused(tmp_path):
    path = tmp_path / "garbage.ckpt"
    path.write_bytes(b"definitely not a zip or pickle")
    with pytest.raises(SVCheckpointError, match="cannot read sv checkpoint"):
        load_sv(path)


def test_loader_casts_fp16_weights_exactly(small_model, small_state_dict):
    weight = small_state_dict["layer3_ds.weight"]
    assert weight.dtype == torch.float16
    assert torch.equal(small_model.layer3_ds.weight.detach(), weight.float())
    assert math.isclose(small_model.bn1.eps, 1e-5)
