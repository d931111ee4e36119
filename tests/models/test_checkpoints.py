"""Official GPT-SoVITS weight containers (models.checkpoints): reading, writing, and refusing bad files safely."""

from __future__ import annotations

import builtins
import io
import os
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from models.checkpoints import CheckpointError, load_gpt, load_sovits, save_gpt, save_sovits
from models.sovits import SoVITS, SoVITSConfig


def _pickle_records(path) -> dict[str, bytes]:
    """Zip records of a (possibly version-tagged) torch container, keyed without the archive folder name."""
    data = Path(path).read_bytes()
    with zipfile.ZipFile(io.BytesIO(b"PK" + data[2:])) as z:
        return {name.split("/", 1)[1]: z.read(name) for name in z.namelist()}


def _decode_ns0(model, golden, version):
    inputs = golden["inputs"][f"s2_{version}"]
    sv = [inputs["sv_emb"]] if "sv_emb" in inputs else None
    return model.decode(inputs["codes"], inputs["text"], [inputs["refer_spec"]], noise_scale=0.0, sv_emb=sv)


# ---------------------------------------------------------------------------------------------------------------
# SoVITS: reading and writing


@pytest.mark.parametrize("version", ["v2", "v2Pro"])
def test_load_sovits_detects_the_version(gsv_dir, version):
    model = load_sovits(gsv_dir / f"golden_A_s2_{version}.pth")
    assert isinstance(model, SoVITS)
    assert model.version == version
    assert not model.training
    assert model.info == "1epoch_10iteration"


@pytest.mark.parametrize("version", ["v2", "v2Pro"])
def test_load_sovits_weights_equal_the_official_state_dict_without_enc_q(gsv_dir, golden, version):
    model = load_sovits(gsv_dir / f"golden_A_s2_{version}.pth")
    ours = model.state_dict()
    for key, value in golden[f"state_dict_s2_{version}"].items():
        if not key.startswith("enc_q."):
            assert torch.equal(ours[key].half(), value), key


def test_load_sovits_honours_device_and_dtype(gsv_dir):
    model = load_sovits(gsv_dir / "golden_A_s2_v2.pth", device="cpu", dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.quantizer.vq.layers[0]._codebook.embed.dtype == torch.bfloat16


def test_save_sovits_v2pro_reproduces_the_official_file_byte_for_byte(gsv_dir, tmp_path):
    official = gsv_dir / "golden_A_s2_v2Pro.pth"
    save_sovits(load_sovits(official), tmp_path / "out.pth", info="1epoch_10iteration", digest=False)
    assert (tmp_path / "out.pth").read_bytes() == official.read_bytes()


def test_save_sovits_v2_writes_the_official_records(gsv_dir, tmp_path):
    official = gsv_dir / "golden_A_s2_v2.pth"
    save_sovits(load_sovits(official), tmp_path / "out.pth", info="1epoch_10iteration", digest=False)
    assert (tmp_path / "out.pth").read_bytes()[:2] == b"PK"
    assert _pickle_records(tmp_path / "out.pth") == _pickle_records(official)


def test_saved_config_is_a_pickled_utils_hparams(gsv_dir, tmp_path):
    save_sovits(load_sovits(gsv_dir / "golden_A_s2_v2.pth"), tmp_path / "out.pth")
    pkl = _pickle_records(tmp_path / "out.pth")["data.pkl"]
    assert b"cutils\nHParams\n" in pkl
    assert b"enc_q." not in pkl


@pytest.mark.parametrize("version", ["v2", "v2Pro"])
def test_round_trip_keeps_outputs_and_version(gsv_dir, golden, tmp_path, version):
    original = load_sovits(gsv_dir / f"golden_A_s2_{version}.pth")
    save_sovits(original, tmp_path / "rt.pth", info="3epoch_42iteration")
    reloaded = load_sovits(tmp_path / "rt.pth")
    assert reloaded.version == version and reloaded.info == "3epoch_42iteration"
    assert (tmp_path / "rt.pth").read_bytes()[:2] == (b"05" if version == "v2Pro" else b"PK")
    assert torch.equal(_decode_ns0(reloaded, golden, version), _decode_ns0(original, golden, version))


def _tiny(version: str) -> SoVITS:
    from models.sovits import MRTEConfig

    gin = 32 if version == "v2" else 24
    cfg = SoVITSConfig(
        version=version, inter_channels=8, hidden_channels=16, filter_channels=32, n_layers=2,
        resblock_kernel_sizes=(3,), resblock_dilation_sizes=((1, 3, 5),), upsample_initial_channel=32,
        upsample_kernel_sizes=(20 if version == "v2ProPlus" else 16, 16, 8, 2, 2), gin_channels=gin,
        mrte=MRTEConfig(16, 32 if version == "v2" else 512, 16, 4),
    )
    torch.manual_seed(0)
    return SoVITS(cfg).eval()


@pytest.mark.parametrize("version,tag", [("v2", b"PK"), ("v2Pro", b"05"), ("v2ProPlus", b"06")])
def test_model_built_from_scratch_saves_with_the_version_header_and_reloads(tmp_path, version, tag):
    model = _tiny(version)
    save_sovits(model, tmp_path / "new.pth")
    assert (tmp_path / "new.pth").read_bytes()[:2] == tag
    reloaded = load_sovits(tmp_path / "new.pth")
    assert reloaded.version == version
    assert reloaded.config.mrte == model.config.mrte
    for key, value in model.state_dict().items():
        if not key.startswith("enc_q."):
            assert torch.equal(reloaded.state_dict()[key], value.half().float()), key


def test_loading_never_creates_a_utils_module(gsv_dir):
    before = sys.modules.get("utils")
    load_sovits(gsv_dir / "golden_A_s2_v2.pth")
    assert sys.modules.get("utils") is before


# ---------------------------------------------------------------------------------------------------------------
# SoVITS: bad files


def test_gpt_checkpoint_given_as_sovits_is_refused(gsv_dir):
    with pytest.raises(CheckpointError, match="GPT .*load_gpt"):
        load_sovits(gsv_dir / "golden_A_s1.ckpt")


def test_truncated_file_is_refused(gsv_dir, tmp_path):
    data = (gsv_dir / "golden_A_s2_v2.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_sovits(tmp_path / "cut.pth")


def test_random_bytes_are_refused(tmp_path):
    (tmp_path / "noise.pth").write_bytes(bytes(range(256)) * 40)
    with pytest.raises(CheckpointError, match="not a GPT-SoVITS checkpoint"):
        load_sovits(tmp_path / "noise.pth")


def test_missing_file_is_reported_with_its_path(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_sovits(tmp_path / "absent.pth")


class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Evals:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("payload", [_RunsShell, _Evals])
@pytest.mark.parametrize("loader", [load_sovits, load_gpt])
def test_pickle_that_tries_to_run_code_is_refused_and_nothing_runs(tmp_path, payload, loader):
    marker = tmp_path / "pwned"
    torch.save({"weight": {}, "config": payload(marker), "info": "x"}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="refusing to load"):
        loader(tmp_path / "evil.pth")
    assert not marker.exists()


def test_code_running_pickle_behind_a_v2pro_header_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    buffer = io.BytesIO()
    torch.save({"weight": {}, "config": _RunsShell(marker), "info": "x"}, buffer)
    (tmp_path / "evil.pth").write_bytes(b"05" + buffer.getvalue()[2:])
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_sovits(tmp_path / "evil.pth")
    assert not marker.exists()


@pytest.mark.parametrize("tag,name", [(b"00", "v1"), (b"02", "v3"), (b"03", "v3-LoRA"), (b"04", "v4-LoRA")])
def test_unsupported_version_headers_are_refused(gsv_dir, tmp_path, tag, name):
    data = (gsv_dir / "golden_A_s2_v2.pth").read_bytes()
    (tmp_path / "other.pth").write_bytes(tag + data[2:])
    with pytest.raises(CheckpointError, match=f"{name} SoVITS file; .*supports GPT-SoVITS v2, v2Pro and v2ProPlus"):
        load_sovits(tmp_path / "other.pth")


def test_v1_weights_with_the_322_symbol_table_are_refused(tmp_path):
    model = _tiny("v2")
    model.enc_p.text_embedding = torch.nn.Embedding(322, 16)
    save_sovits(model, tmp_path / "v1.pth")
    with pytest.raises(CheckpointError, match="v1"):
        load_sovits(tmp_path / "v1.pth")


@pytest.mark.parametrize("key,match", [("lora_A", "LoRA"), ("cfm_marker", None)])
def test_lora_and_v3_v4_weights_are_refused(tmp_path, key, match):
    model = _tiny("v2")
    if match is None:  # v3/v4 SoVITS files carry a conditional flow-matching module "cfm.*"
        model.cfm = torch.nn.Linear(1, 1)
        match = "v3/v4"
    else:
        model.register_buffer(key, torch.zeros(1))
    save_sovits(model, tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match=match):
        load_sovits(tmp_path / "x.pth")


def test_missing_and_extra_keys_are_listed(tmp_path):
    model = _tiny("v2")
    model.flow.flows[0].post.bias = None
    model.register_buffer("stray_tensor", torch.zeros(1))
    save_sovits(model, tmp_path / "edited.pth")
    with pytest.raises(CheckpointError) as info:
        load_sovits(tmp_path / "edited.pth")
    message = str(info.value)
    assert "missing 1 key(s): flow.flows.0.post.bias" in message
    assert "unexpected 1 key(s): stray_tensor" in message


# ---------------------------------------------------------------------------------------------------------------
# GPT containers


def test_load_gpt_reads_the_official_stage1_checkpoint(gsv_dir, golden):
    gpt = load_gpt(gsv_dir / "golden_A_s1.ckpt")
    assert not gpt.training and gpt.info == "GPT-e1"
    ours = gpt.state_dict()
    for key, value in golden["state_dict_s1"].items():
        assert torch.equal(ours[key[len("model."):]].half(), value), key


def test_save_gpt_writes_the_official_records(gsv_dir, tmp_path):
    official = gsv_dir / "golden_A_s1.ckpt"
    save_gpt(load_gpt(official), tmp_path / "gpt.ckpt", info="GPT-e1", digest=False)
    assert _pickle_records(tmp_path / "gpt.ckpt") == _pickle_records(official)


def test_gpt_round_trip_keeps_weights_and_info(gsv_dir, tmp_path):
    gpt = load_gpt(gsv_dir / "golden_A_s1.ckpt")
    save_gpt(gpt, tmp_path / "gpt.ckpt", info="GPT-e7")
    again = load_gpt(tmp_path / "gpt.ckpt")
    assert again.info == "GPT-e7"
    assert all(torch.equal(a, b) for a, b in zip(gpt.state_dict().values(), again.state_dict().values()))


@pytest.mark.parametrize("name", ["golden_A_s2_v2.pth", "golden_A_s2_v2Pro.pth"])
def test_sovits_weights_given_as_gpt_are_refused(gsv_dir, name):
    with pytest.raises(CheckpointError, match="SoVITS .*load_sovits"):
        load_gpt(gsv_dir / name)


def test_truncated_gpt_checkpoint_is_refused(gsv_dir, tmp_path):
    data = (gsv_dir / "golden_A_s1.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[:1000])
    with pytest.raises(CheckpointError, match="truncated"):
        load_gpt(tmp_path / "cut.ckpt")


def test_gpt_checkpoint_with_missing_weights_is_listed(gsv_dir, tmp_path):
    gpt = load_gpt(gsv_dir / "golden_A_s1.ckpt")
    gpt.register_buffer("stray", torch.zeros(1))
    save_gpt(gpt, tmp_path / "gpt.ckpt")
    with pytest.raises(CheckpointError, match="unexpected 1 key\\(s\\): model.stray"):
        load_gpt(tmp_path / "gpt.ckpt")
