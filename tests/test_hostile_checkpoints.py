"""Hostile and damaged checkpoint files: nothing runs, nothing inflates, nothing corrupt loads, exports are
reproducible, and registering the same exports again is a no-op that says so.

Every case is built from scratch in a temporary folder: tiny models (tests/tiny_training.py), tiny fine-tuning runs,
hand-made zip containers, and copies of the golden official files in ../shared/gsv.
"""

from __future__ import annotations

import builtins
import io
import json
import pickle
import resource
import struct
import sys
import time
import types
import zipfile
import zlib
from pathlib import Path

import pytest
import torch

import tests.test_register as reg
from components.finetune_gpt import finetune_gpt
from components.finetune_sovits import finetune_sovits
from components.training import TrainingError
from models.checkpoints import CheckpointError, load_gpt, load_sovits, save_gpt, save_sovits
from models.gpt import GPT, GPTConfig
from models.sovits import SoVITS, SoVITSConfig
from narrator.config import load_params
from narrator.storage import sha256_file
from tests.conftest import torch_threads
from tests.tiny_training import TINY_GPT, TINY_SOVITS, make_features

GIB = 1 << 30


# ---------------------------------------------------------------------------------------------------------------
# builders


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread is faster on a busy machine and keeps the floats reproducible."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def gpt_features(tmp_path_factory) -> Path:
    """A features folder of six examples for the tiny GPT (no audio needed)."""
    root = tmp_path_factory.mktemp("gptfeatures")
    entries = []
    g = torch.Generator().manual_seed(0)
    for i in range(6):
        n_phones, n_codes = 12 + i, 30 + 3 * i
        folder = root / "entries" / f"e{i}"
        folder.mkdir(parents=True)
        torch.save(torch.zeros(1024, n_phones, dtype=torch.float16), folder / "bert.pt")
        torch.save(torch.zeros(768, 2 * n_codes), folder / "hubert.pt")
        torch.save(torch.randint(0, 1024, (n_codes,), generator=g), folder / "semantic.pt")
        torch.save(torch.zeros(1025, 2 * n_codes), folder / "spec.pt")
        entries.append({"name": f"e{i}", "text": "x", "language": "en", "phones": ["a"] * n_phones,
                        "ids": torch.randint(0, 732, (n_phones,), generator=g).tolist(), "word2ph": [1] * n_phones,
                        "duration_s": n_codes / 25, "wav_32k": "", "hubert_frames": 2 * n_codes,
                        "semantic_frames": n_codes, "spec_frames": 2 * n_codes, "has_sv": False})
    (root / "manifest.json").write_text(json.dumps({"version": 1, "sovits_version": "v2", "models": {},
                                                    "entries": entries}))
    return root


@pytest.fixture(scope="module")
def sovits_features(tmp_path_factory) -> Path:
    """Two espeak-ng clips with the features the tiny SoVITS trains on."""
    return make_features(tmp_path_factory.mktemp("sovitsfeatures"), clips=2)


def _gpt_params(model=None, **finetune):
    settings = {"epochs": 2, "batch_size": 2, "accumulate_batches": 1, "lr": 3e-3, "lr_init": 1e-4, "lr_end": 1e-4,
                "warmup_steps": 2, "decay_steps": 100, "random_init": model or TINY_GPT, **finetune}
    return load_params(None, {"finetune_gpt": settings,
                              "training": {"device": "cpu", "checkpoint_every_steps": 2, "log_every_steps": 1,
                                           "mlflow_tracking_uri": None}})


def _sovits_params():
    return load_params(None, {"finetune_sovits": {"epochs": 1, "batch_size": 2, "random_init": TINY_SOVITS,
                                                  "random_init_discriminator_divisor": 16},
                              "training": {"device": "cpu", "mlflow_tracking_uri": None}})


def _tiny_sovits(version: str = "v2") -> SoVITS:
    from models.sovits import MRTEConfig

    settings = dict(TINY_SOVITS, version=version)
    if version != "v2":  # v2Pro: the MRTE hidden width must be 512 (ge_to512), gin 24 like the golden files
        settings.update(gin_channels=24, mrte=MRTEConfig(16, 512, 16, 4))
    else:
        settings["mrte"] = MRTEConfig(**settings["mrte"])
    torch.manual_seed(0)
    return SoVITS(SoVITSConfig(**settings)).eval()


def _tiny_gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**TINY_GPT)).eval()


class _RunsCode:
    """Unpickling this runs Python code that creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",))


def _deflate_bomb(declared: int) -> bytes:
    """A raw deflate stream that inflates to `declared` zero bytes (a multiple of 1 MiB) in ~1 KB per MiB.

    After a full flush the compressor starts afresh, so every 1 MiB block of zeros compresses to the same bytes:
    the stream is one block repeated, built in microseconds instead of compressing gigabytes."""
    chunk = 1 << 20
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(bytes(chunk)) + compressor.flush(zlib.Z_FULL_FLUSH)
    return block * (declared // chunk) + compressor.flush(zlib.Z_FINISH)


def _zip_container(path: Path, members: dict[str, tuple[bytes, int, int]], head: bytes = b"PK") -> Path:
    """Write a zip by hand: `members` maps name -> (stored bytes, method (0 stored / 8 deflated), declared
    uncompressed size). CRCs are left 0: the point is what the directory declares. `head` replaces the first
    two bytes (a SoVITS version tag)."""
    body, directory = io.BytesIO(), io.BytesIO()
    for name, (data, method, size) in members.items():
        offset = body.tell()
        raw = name.encode()
        body.write(struct.pack("<4s5H3I2H", b"PK\x03\x04", 20, 0, method, 0, 0x21, 0, len(data), size, len(raw), 0))
        body.write(raw + data)
        directory.write(struct.pack("<4s6H3I5H2I", b"PK\x01\x02", 20, 20, 0, method, 0, 0x21, 0, len(data), size,
                                    len(raw), 0, 0, 0, 0, 0, offset) + raw)
    cd = directory.getvalue()
    end = struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, len(members), len(members), len(cd), body.tell(), 0)
    data = body.getvalue() + cd + end
    path.write_bytes(head + data[2:])
    return path


def _zip_bomb(path: Path, declared: int = 2 * GIB, head: bytes = b"PK") -> Path:
    """A torch-looking container (~2 MB) whose data.pkl inflates to `declared` bytes of zeros."""
    return _zip_container(path, {"archive/data.pkl": (_deflate_bomb(declared), 8, declared),
                                 "archive/byteorder": (b"little", 0, 6), "archive/version": (b"3\n", 0, 2)}, head)


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _flip_storage_bytes(path: Path, count: int = 5000) -> int:
    """XOR the lowest bit of up to `count` bytes in the largest tensor storage of a torch container, in place.
    Flipping the low bit of fp16 mantissas keeps every value finite. Returns how many bytes were flipped."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(io.BytesIO(b"PK" + bytes(data[2:]))) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    name_len, extra_len = struct.unpack("<2H", data[info.header_offset + 26:info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    flipped = min(count, info.file_size)
    for i in range(start, start + flipped):
        data[i] ^= 0x01
    path.write_bytes(bytes(data))
    return flipped


def _official_copy_with(src: Path, dst: Path, key: str, value: float) -> Path:
    """A copy of an official-format file (no digest) with one weight element set to `value` (NaN, inf)."""
    from models.checkpoints import _WRITER_PICKLE, _read_container

    obj, head = _read_container(src, "golden")
    assert "narrator_digest" not in obj
    obj["weight"][key].view(-1)[0] = value
    buffer = io.BytesIO()
    torch.save(obj, buffer, pickle_module=_WRITER_PICKLE)
    dst.write_bytes(head + buffer.getvalue()[2:])
    return dst


# ---------------------------------------------------------------------------------------------------------------
# 1. training checkpoints are read through the restricted unpickler


@pytest.mark.parametrize("container", ["torch-zip", "bare-pickle"])
def test_planted_training_checkpoint_that_runs_code_is_refused_and_nothing_runs(gpt_features, tmp_path, container):
    marker = tmp_path / "pwned"
    planted = tmp_path / "run" / "checkpoints" / "step-00000005.pt"
    planted.parent.mkdir(parents=True)
    state = {"task": _RunsCode(marker), "step": 5, "epoch": 0, "batch": 5, "rng": {}}
    if container == "torch-zip":
        torch.save(state, planted)
    else:
        planted.write_bytes(pickle.dumps(state))
    with pytest.raises(TrainingError, match=r"step-00000005\.pt.*delete") as info:
        finetune_gpt(gpt_features, tmp_path / "run", _gpt_params())
    assert not marker.exists()
    assert "checkpoints" in str(info.value)


def test_training_checkpoint_without_the_loop_entries_is_refused_with_advice(gpt_features, tmp_path):
    planted = tmp_path / "run" / "checkpoints" / "step-00000003.pt"
    planted.parent.mkdir(parents=True)
    torch.save({"step": 3, "weights": torch.zeros(2)}, planted)
    with pytest.raises(TrainingError, match=r"step-00000003\.pt.*not a training checkpoint.*delete"):
        finetune_gpt(gpt_features, tmp_path / "run", _gpt_params())


def test_training_checkpoint_of_another_model_size_is_refused_with_advice(gpt_features, tmp_path):
    stopped = finetune_gpt(gpt_features, tmp_path / "run", _gpt_params(), stop_after_steps=2)
    assert stopped.stopped_early
    bigger = dict(TINY_GPT, n_embd=48)
    with pytest.raises(TrainingError, match=r"step-00000002\.pt.*does not fit.*delete .*checkpoints"):
        finetune_gpt(gpt_features, tmp_path / "run", _gpt_params(model=bigger))


def test_stopped_and_resumed_sovits_run_resumes_through_the_restricted_loader(sovits_features, tmp_path):
    """The SoVITS state (two models, two AdamW, two ExponentialLR, scaler, RNGs) passes the restricted unpickler."""
    from models.checkpoints import _read_container

    params = _sovits_params()
    params = load_params(None, {**params.model_dump(by_alias=True, mode="json"),
                                "finetune_sovits": {**params.finetune_sovits.model_dump(mode="json"), "epochs": 2,
                                                    "batch_size": 1}})
    straight = finetune_sovits(sovits_features, tmp_path / "straight", params)
    finetune_sovits(sovits_features, tmp_path / "resumed", params, stop_after_steps=1)
    resumed = finetune_sovits(sovits_features, tmp_path / "resumed", params)
    assert resumed.resumed_from_step == 1 and resumed.steps == straight.steps == 4
    a, b = (_read_container(run / "sovits.pth", "export")[0]["weight"] for run in (tmp_path / "straight",
                                                                                   tmp_path / "resumed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------------------------
# 2. zip bombs: declared sizes are checked before anything is inflated


@pytest.mark.parametrize("loader,head", [(load_sovits, b"PK"), (load_sovits, b"05"), (load_gpt, b"PK")],
                         ids=["sovits", "sovits-v2Pro-tag", "gpt"])
def test_small_file_that_inflates_to_gigabytes_is_refused_before_inflating(tmp_path, loader, head):
    bomb = _zip_bomb(tmp_path / "bomb.pth", 2 * GIB, head)
    assert bomb.stat().st_size < 4 << 20
    peak, started = _peak_rss_bytes(), time.monotonic()
    with pytest.raises(CheckpointError, match=r"bomb\.pth.*uncompressed") as info:
        loader(bomb)
    assert time.monotonic() - started < 2.0
    assert _peak_rss_bytes() - peak < 256 << 20
    assert "GiB" in str(info.value)


def test_training_checkpoint_that_inflates_to_gigabytes_is_refused_before_inflating(gpt_features, tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    planted = _zip_bomb(tmp_path / "run" / "checkpoints" / "step-00000004.pt", 2 * GIB)
    peak, started = _peak_rss_bytes(), time.monotonic()
    with pytest.raises(TrainingError, match=r"step-00000004\.pt.*uncompressed.*delete"):
        finetune_gpt(gpt_features, tmp_path / "run", _gpt_params())
    assert time.monotonic() - started < 5.0
    assert _peak_rss_bytes() - peak < 256 << 20
    assert planted.exists()  # refused, not deleted: the user decides


def test_huge_file_is_refused_without_being_read_into_memory(tmp_path):
    huge = tmp_path / "huge.pth"
    with huge.open("wb") as f:  # sparse: 3 GiB on paper, nothing on disk
        f.write(b"PK\x03\x04")
        f.truncate(3 * GIB)
    peak, started = _peak_rss_bytes(), time.monotonic()
    with pytest.raises(CheckpointError, match=r"huge\.pth"):
        load_sovits(huge)
    assert time.monotonic() - started < 2.0
    assert _peak_rss_bytes() - peak < 256 << 20


# ---------------------------------------------------------------------------------------------------------------
# 3. silent weight corruption


def test_flipped_bytes_in_an_exported_sovits_file_are_refused(tmp_path):
    path = save_sovits(_tiny_sovits(), tmp_path / "voice.pth")
    load_sovits(path)  # intact: loads
    assert _flip_storage_bytes(path) > 100
    with pytest.raises(CheckpointError, match=r"voice\.pth.*digest"):
        load_sovits(path)


def test_flipped_bytes_in_an_exported_gpt_file_are_refused(tmp_path):
    path = save_gpt(_tiny_gpt(), tmp_path / "voice.ckpt")
    load_gpt(path)
    assert _flip_storage_bytes(path) > 100
    with pytest.raises(CheckpointError, match=r"voice\.ckpt.*digest"):
        load_gpt(path)


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("golden,key,loader", [
    ("golden_A_s2_v2.pth", "dec.conv_pre.weight", load_sovits),
    ("golden_A_s2_v2Pro.pth", "enc_p.text_embedding.weight", load_sovits),
    ("golden_A_s1.ckpt", "model.ar_predict_layer.weight", load_gpt),
], ids=["sovits-v2", "sovits-v2Pro", "gpt"])
def test_official_format_file_with_non_finite_weights_is_refused(gsv_dir, tmp_path, golden, key, loader, value):
    bad = _official_copy_with(gsv_dir / golden, tmp_path / f"bad-{golden}", key, value)
    with pytest.raises(CheckpointError, match=rf"bad-{golden}.*{key}.*(NaN|infinite)"):
        loader(bad)


@pytest.mark.parametrize("golden,loader", [("golden_A_s2_v2.pth", load_sovits), ("golden_A_s2_v2Pro.pth", load_sovits),
                                           ("golden_A_s1.ckpt", load_gpt)])
def test_official_files_without_a_digest_still_load(gsv_dir, golden, loader):
    from models.checkpoints import _read_container

    assert "narrator_digest" not in _read_container(gsv_dir / golden, "golden")[0]
    assert not loader(gsv_dir / golden).training


@pytest.mark.parametrize("copies", [1, 3000], ids=["one-huge-view", "many-full-views"])
def test_weights_that_view_their_few_stored_bytes_as_terabytes_are_refused_at_once(gsv_dir, tmp_path, copies):
    """A stride-0 tensor repeats one stored value: 2**40 values from 2 bytes. Scanning or hashing it would never end;
    so would thousands of keys viewing one large stored tensor."""
    from models.checkpoints import _WRITER_PICKLE, _read_container

    obj, head = _read_container(gsv_dir / "golden_A_s2_v2.pth", "golden")
    if copies == 1:
        obj["weight"]["dec.conv_pre.weight"] = torch.zeros(1, dtype=torch.float16).expand(2 ** 40)
    else:
        shared = torch.zeros(2 ** 19, dtype=torch.float16)  # 1 MiB stored once, 3000 keys view all of it: 2.9 GiB
        obj["weight"].update({f"dec.extra{i}": shared for i in range(copies)})
    buffer = io.BytesIO()
    torch.save(obj, buffer, pickle_module=_WRITER_PICKLE)
    (tmp_path / "views.pth").write_bytes(buffer.getvalue())
    started = time.monotonic()
    with pytest.raises(CheckpointError, match=r"views\.pth.*(claims|claim) "):
        load_sovits(tmp_path / "views.pth")
    assert time.monotonic() - started < 5.0


def test_exporting_a_model_with_non_finite_weights_is_refused(tmp_path):
    model = _tiny_sovits()
    with torch.no_grad():
        model.dec.conv_pre.weight[0, 0, 0] = float("nan")
    with pytest.raises(CheckpointError, match=r"dec\.conv_pre\.weight.*NaN"):
        save_sovits(model, tmp_path / "diverged.pth")
    assert not (tmp_path / "diverged.pth").exists()
    gpt = _tiny_gpt()
    with torch.no_grad():
        next(gpt.parameters()).view(-1)[0] = 1e6  # finite in fp32, infinite once stored as fp16
    with pytest.raises(CheckpointError, match="infinite"):
        save_gpt(gpt, tmp_path / "diverged.ckpt")
    assert list(tmp_path.iterdir()) == []


def test_exports_carry_a_digest_that_the_official_loaders_ignore(tmp_path, monkeypatch):
    """The official code reads dict_s2["weight"/"config"/"info"] (unpickling with a `utils.HParams` class) and
    dict_s1["weight"/"config"]; an extra top-level entry is never looked at."""
    sovits = save_sovits(_tiny_sovits("v2Pro"), tmp_path / "voice.pth")
    gpt = save_gpt(_tiny_gpt(), tmp_path / "voice.ckpt")

    official_utils = types.ModuleType("utils")
    official_utils.HParams = type("HParams", (), {})  # the official class: an attribute bag
    monkeypatch.setitem(sys.modules, "utils", official_utils)
    data = sovits.read_bytes()
    assert data[:2] == b"05"
    dict_s2 = torch.load(io.BytesIO(b"PK" + data[2:]), map_location="cpu", weights_only=False)
    assert str(dict_s2["narrator_digest"]).startswith("sha256:")
    assert dict_s2["config"].model.version == "v2Pro" and dict_s2["info"] == "0epoch_0iteration"
    assert set(dict_s2["weight"]) == {k for k in _tiny_sovits("v2Pro").state_dict() if "enc_q" not in k}

    dict_s1 = torch.load(gpt, map_location="cpu", weights_only=True)  # plain torch can read ours safely
    assert str(dict_s1["narrator_digest"]).startswith("sha256:")
    assert dict_s1["config"]["model"]["n_layer"] == TINY_GPT["n_layer"]
    assert all(k.startswith("model.") for k in dict_s1["weight"])


def test_exports_equal_the_official_records_plus_the_digest_entry(gsv_dir, tmp_path):
    from models.checkpoints import _read_container

    official = gsv_dir / "golden_A_s2_v2Pro.pth"
    save_sovits(load_sovits(official), tmp_path / "ours.pth", info="1epoch_10iteration")
    ours, theirs = _read_container(tmp_path / "ours.pth", "ours")[0], _read_container(official, "official")[0]
    assert list(ours) == [*theirs, "narrator_digest"]
    assert ours["info"] == theirs["info"] and ours["config"].to_dict() == theirs["config"].to_dict()
    assert all(torch.equal(ours["weight"][k], v) for k, v in theirs["weight"].items())


def test_tampered_digest_entry_is_refused(tmp_path):
    from models.checkpoints import _read_container

    path = save_gpt(_tiny_gpt(), tmp_path / "voice.ckpt")
    obj, _ = _read_container(path, "ours")
    obj["narrator_digest"] = {"not": "a digest"}
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match=r"voice\.ckpt.*digest"):
        load_gpt(path)


# ---------------------------------------------------------------------------------------------------------------
# 4. reproducible exports


@pytest.mark.parametrize("version", ["v2", "v2Pro"])
def test_saving_the_same_sovits_twice_gives_identical_bytes(tmp_path, version):
    model = _tiny_sovits(version)
    a = save_sovits(model, tmp_path / "a" / "sovits.pth")
    time.sleep(0.01)  # the old writer named the archive after time.time()
    b = save_sovits(model, tmp_path / "b" / "sovits.pth")
    assert a.read_bytes() == b.read_bytes()
    with zipfile.ZipFile(io.BytesIO(b"PK" + a.read_bytes()[2:])) as z:
        assert {i.filename.split("/")[0] for i in z.infolist()} == {"archive"}
        assert {i.date_time for i in z.infolist()} == {z.infolist()[0].date_time}
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["sovits.pth"]  # no temporary file left


def test_saving_the_same_gpt_twice_gives_identical_bytes(tmp_path):
    model = _tiny_gpt()
    a = save_gpt(model, tmp_path / "a" / "gpt.ckpt")
    time.sleep(0.01)
    b = save_gpt(model, tmp_path / "b" / "gpt.ckpt")
    assert a.read_bytes() == b.read_bytes()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["gpt.ckpt"]


def test_stopped_and_resumed_gpt_run_exports_the_same_bytes_as_an_uninterrupted_one(gpt_features, tmp_path):
    params = _gpt_params(epochs=3)
    straight = finetune_gpt(gpt_features, tmp_path / "straight", params)
    finetune_gpt(gpt_features, tmp_path / "resumed", params, stop_after_steps=3)
    resumed = finetune_gpt(gpt_features, tmp_path / "resumed", params)
    assert resumed.resumed_from_step == 3 and resumed.steps == straight.steps == 9
    assert resumed.sha256 == straight.sha256 == sha256_file(tmp_path / "resumed" / "gpt.ckpt")


def test_fine_tuning_the_gpt_twice_gives_identical_files(gpt_features, tmp_path):
    first = finetune_gpt(gpt_features, tmp_path / "one", _gpt_params())
    second = finetune_gpt(gpt_features, tmp_path / "two", _gpt_params())
    assert first.sha256 == second.sha256
    assert sha256_file(tmp_path / "one" / "gpt.ckpt") == sha256_file(tmp_path / "two" / "gpt.ckpt")


def test_fine_tuning_sovits_twice_gives_identical_files(sovits_features, tmp_path):
    first = finetune_sovits(sovits_features, tmp_path / "one", _sovits_params())
    second = finetune_sovits(sovits_features, tmp_path / "two", _sovits_params())
    assert first.sha256 == second.sha256


# ---------------------------------------------------------------------------------------------------------------
# 5. registering byte-identical exports again


def test_registering_identical_exports_of_a_second_fine_tuning_run_is_a_noop_that_says_so(
        gpt_features, sovits_features, tmp_path, capsys, monkeypatch):
    from mlflow import MlflowClient

    from cli.main import main

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).create_experiment(reg.EXPERIMENT, artifact_location=(tmp_path / "art").as_uri())
    reg._validated(tmp_path / "validated")
    reg._prepared(tmp_path / "prepared")
    reg._features(tmp_path / "features")
    runs = {}
    for run in ("one", "two"):  # the whole fine-tuning done twice with the same data and settings
        runs[run] = (finetune_sovits(sovits_features, tmp_path / run / "sovits", _sovits_params()),
                     finetune_gpt(gpt_features, tmp_path / run / "gpt", _gpt_params()))
    assert [r.sha256 for r in runs["one"]] == [r.sha256 for r in runs["two"]]
    settings = ["--set", f"registry.tracking_uri={uri}", "--set", f"training.mlflow_tracking_uri={uri}",
                "--set", f"training.mlflow_experiment={reg.EXPERIMENT}",
                "--set", f"registry.audit_log={tmp_path / 'audit.jsonl'}"]
    watermark = str(reg.watermark_folder(tmp_path / "watermark"))

    def register(run: str, evaluation: Path) -> tuple[dict, str]:
        code = main(["register", "alice", "--validated", str(tmp_path / "validated"), "--prepared",
                     str(tmp_path / "prepared"), "--features", str(tmp_path / "features"),
                     "--sovits", str(tmp_path / run / "sovits"), "--gpt", str(tmp_path / run / "gpt"),
                     "--evaluation", str(evaluation), "--watermark", watermark, *settings])
        assert code == 0
        out = capsys.readouterr()
        return json.loads(out.out), out.err

    first, said = register("one", reg.evaluation(tmp_path / "ev", "one", 0.86))
    assert first["version"] == 1 and "nothing new" not in said
    # the second run is evaluated again: same quality, but the timing metrics (rtf, first audio) differ
    again = reg.evaluation(tmp_path / "ev", "two", 0.86)
    report = json.loads((again / "report.json").read_text())
    report["metrics"].update(rtf=0.31, first_audio_s=0.27)
    (again / "report.json").write_text(json.dumps(report))
    second, said = register("two", again)

    assert second["version"] == 1 and second["new_version"] is False
    assert "nothing new registered" in said and "narrator-alice version 1" in said
    versions = MlflowClient(tracking_uri=uri, registry_uri=uri).search_model_versions("name='narrator-alice'")
    assert [int(v.version) for v in versions] == [1]
    assert [json.loads(line)["event"] for line in (tmp_path / "audit.jsonl").read_text().splitlines()] == [
        "registered", "promoted"]
