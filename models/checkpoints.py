"""Reading and writing the official GPT-SoVITS weight containers, safely.

SoVITS `.pth` (stage 2): `torch.save` zip of `OrderedDict(weight={key: fp16 tensor} (enc_q.* dropped),
config=<pickled utils.HParams>, info="<epoch>epoch_<step>iteration")`. v2Pro / v2ProPlus files have the first two
bytes of the zip ("PK") replaced by a version tag, b"05" / b"06".

GPT `.ckpt` (stage 1): `torch.save` zip of `OrderedDict(weight=OrderedDict("model.*" -> fp16), config=dict,
info="GPT-e<epoch>")`.

Security: checkpoints are pickles. We never let a checkpoint name arbitrary Python objects. Every global the
pickle asks for goes through `_RestrictedUnpickler.find_class`, which knows exactly: `collections.OrderedDict`,
torch's tensor/storage rebuild functions and storage types, and `utils.HParams`, which maps to our own inert
attribute bag `HParams` (no module named `utils` is imported or created). Anything else (os.system, builtins.eval,
...) stops the load with a `CheckpointError` before it can run.
"""

from __future__ import annotations

import collections
import copy
import io
import os
import pickle
import time
import types
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch

from models.sovits import SoVITS, SoVITSConfig, SoVITSError
from narrator.errors import NarratorError

# header tags of the official SoVITS containers (process_ckpt.py); "PK" = plain zip (v1/v2)
_HEADER_TAGS = {
    b"00": "v1",
    b"01": "v2",
    b"02": "v3",
    b"03": "v3-LoRA",
    b"04": "v4-LoRA",
    b"05": "v2Pro",
    b"06": "v2ProPlus",
}
_VERSION_TAGS = {"v2Pro": b"05", "v2ProPlus": b"06"}
_UNSUPPORTED_HINT = "Narrator supports GPT-SoVITS v2, v2Pro and v2ProPlus SoVITS weights only"


class CheckpointError(NarratorError):
    """A checkpoint file cannot be used: wrong kind, unsupported version, damaged, unsafe or mismatched."""


# --------------------------------------------------------------------------------------------------------------
# HParams stand-in and the restricted pickle module
# --------------------------------------------------------------------------------------------------------------


class HParams:
    """Inert attribute bag standing in for the official `utils.HParams` (nested dicts become nested HParams).

    It supports attribute and item access and converts to plain dicts with `to_dict()`. Pickled by our writer as
    the global `utils.HParams`, exactly like the official tools, so the official loaders read our files.
    """

    def __init__(self, **kwargs: Any) -> None:
        for key, value in kwargs.items():
            if isinstance(value, Mapping):
                value = HParams(**value)
            setattr(self, key, value)

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise CheckpointError("the checkpoint's config object is malformed (expected a dict of named settings)")
        self.__dict__.update(state)

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def __setitem__(self, key: str, value: Any) -> None:
        setattr(self, key, value)

    def __contains__(self, key: str) -> bool:
        return key in self.__dict__

    def __len__(self) -> int:
        return len(self.__dict__)

    def keys(self):
        return self.__dict__.keys()

    def items(self):
        return self.__dict__.items()

    def values(self):
        return self.__dict__.values()

    def get(self, key: str, default: Any = None) -> Any:
        return self.__dict__.get(key, default)

    def to_dict(self) -> dict[str, Any]:
        return {k: v.to_dict() if isinstance(v, HParams) else copy.deepcopy(v) for k, v in self.__dict__.items()}

    def __repr__(self) -> str:
        return f"HParams({self.__dict__!r})"


class _ForbiddenGlobal(Exception):
    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.module, self.name = module, name


def _allowed_globals() -> dict[tuple[str, str], Any]:
    import torch._utils as tu

    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): tu._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): tu._rebuild_parameter,
        ("utils", "HParams"): HParams,
        ("torch", "Size"): torch.Size,
    }
    for name in ("Half", "Float", "Double", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool"):
        storage = f"{name}Storage"
        if hasattr(torch, storage):
            allowed[("torch", storage)] = getattr(torch, storage)
    for dtype in ("float16", "float32", "float64", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool"):
        allowed[("torch", dtype)] = getattr(torch, dtype)
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals a weight container needs; everything else is refused."""

    _allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise _ForbiddenGlobal(module, name) from None


def _unsafe_load(*args: Any, **kwargs: Any) -> Any:
    raise _ForbiddenGlobal("<legacy torch format>", "load")


_HPARAMS_GLOBAL = b"c" + b"utils\nHParams\n"  # protocol-2 GLOBAL opcode, as the official pickles contain


class _HParamsPickler(pickle._Pickler):  # the pure-Python pickler lets us name our class as `utils.HParams`
    def save_global(self, obj: Any, name: str | None = None) -> None:
        if obj is HParams:
            self.write(_HPARAMS_GLOBAL)
            self.memoize(obj)
            return
        super().save_global(obj, name)


# module-like objects handed to torch.load / torch.save as `pickle_module`
_RESTRICTED_PICKLE = types.SimpleNamespace(
    __name__="narrator_restricted_pickle", Unpickler=_RestrictedUnpickler, load=_unsafe_load, Pickler=pickle.Pickler
)
_WRITER_PICKLE = types.SimpleNamespace(__name__="narrator_hparams_pickle", Pickler=_HParamsPickler)


# --------------------------------------------------------------------------------------------------------------
# reading containers
# --------------------------------------------------------------------------------------------------------------


def _read_container(path: str | os.PathLike, what: str) -> tuple[Any, bytes]:
    """Safely unpickle a torch zip container. Returns (object, first two bytes of the file)."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{what} file {p} does not exist; check the path")
    data = p.read_bytes()
    head = data[:2]
    if head != b"PK":
        if head not in _HEADER_TAGS:
            raise CheckpointError(
                f"{p} is not a GPT-SoVITS checkpoint (it does not start like a torch zip file or a tagged "
                "SoVITS file); pass the .pth / .ckpt file written by GPT-SoVITS or Narrator"
            )
        data = b"PK" + data[2:]
    buffer = io.BytesIO(data)
    if not zipfile.is_zipfile(buffer):
        raise CheckpointError(
            f"{p} is damaged or incomplete (no readable zip directory; the file may be truncated); "
            "copy or download it again"
        )
    buffer.seek(0)
    try:
        obj = torch.load(buffer, map_location="cpu", pickle_module=_RESTRICTED_PICKLE, weights_only=False)
    except _ForbiddenGlobal as exc:
        raise CheckpointError(
            f"refusing to load {p}: its pickle asks for `{exc.module}.{exc.name}`, which a weight file never needs "
            "(the file may be malicious or is not a GPT-SoVITS checkpoint); do not use this file"
        ) from None
    except CheckpointError:
        raise
    except Exception as exc:  # torch / zip / pickle errors on damaged data
        cause = exc.__context__ if isinstance(exc, pickle.UnpicklingError) and exc.__context__ else exc
        if isinstance(cause, _ForbiddenGlobal):
            raise CheckpointError(
                f"refusing to load {p}: its pickle asks for `{cause.module}.{cause.name}`, which a weight file never "
                "needs (the file may be malicious or is not a GPT-SoVITS checkpoint); do not use this file"
            ) from None
        raise CheckpointError(
            f"{p} could not be read as a checkpoint ({type(exc).__name__}: {str(exc)[:200]}); the file is damaged "
            "or truncated, copy or download it again"
        ) from None
    return obj, head


def _as_plain(obj: Any) -> Any:
    if isinstance(obj, HParams):
        return obj.to_dict()
    if isinstance(obj, Mapping):
        return {k: _as_plain(v) for k, v in obj.items()}
    return obj


def format_keys(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def state_dict_problems(expected: Mapping[str, torch.Tensor], actual: Mapping[str, Any], *,
                        optional: tuple[str, ...] = (), shown_prefix: str = "") -> list[str]:
    """How a state dict differs from what a model expects: missing keys (other than those under an `optional`
    prefix), unexpected keys and wrong shapes, each as one readable line. Empty when it fits."""
    missing = [k for k in expected if k not in actual and not k.startswith(optional or ("\0",))]
    unexpected = [k for k in actual if k not in expected]
    wrong = [f"{shown_prefix}{k} {tuple(actual[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in actual and tuple(actual[k].shape) != tuple(v.shape)]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} key(s): {format_keys([shown_prefix + k for k in missing])}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} key(s): {format_keys([shown_prefix + k for k in unexpected])}")
    if wrong:
        problems.append(f"wrong shapes ({len(wrong)}): {format_keys(wrong, 6)}")
    return problems


def _looks_like_gpt(obj: Mapping[str, Any]) -> bool:
    weight = obj.get("weight")
    config = obj.get("config")
    if isinstance(weight, Mapping) and weight and all(str(k).startswith("model.") for k in weight):
        return True
    model = config.get("model") if isinstance(config, dict) else None
    return isinstance(model, dict) and "phoneme_vocab_size" in model


def _looks_like_sovits(obj: Mapping[str, Any]) -> bool:
    weight = obj.get("weight")
    if isinstance(obj.get("config"), HParams):
        return True
    return isinstance(weight, Mapping) and any(str(k).startswith(("enc_p.", "dec.", "flow.")) for k in weight)


# --------------------------------------------------------------------------------------------------------------
# SoVITS
# --------------------------------------------------------------------------------------------------------------


def _detect_sovits_version(weight: Mapping[str, torch.Tensor], config: dict, head: bytes, path: Path) -> str:
    tag = _HEADER_TAGS.get(head) if head != b"PK" else None
    keys = list(weight)
    if tag in ("v1", "v3", "v3-LoRA", "v4-LoRA"):
        raise CheckpointError(f"{path} is a GPT-SoVITS {tag} SoVITS file; {_UNSUPPORTED_HINT}")
    if any("lora" in k.lower() for k in keys):
        raise CheckpointError(f"{path} holds LoRA weights (v3/v4 fine-tune); {_UNSUPPORTED_HINT}")
    model_version = str((config.get("model") or {}).get("version", "") or "")
    if any(k.startswith(("cfm.", "bridge.", "wavenet.")) for k in keys) or model_version in ("v3", "v4"):
        raise CheckpointError(f"{path} is a GPT-SoVITS v3/v4 SoVITS file; {_UNSUPPORTED_HINT}")
    emb = weight.get("enc_p.text_embedding.weight")
    if emb is None:
        raise CheckpointError(
            f"{path} has no enc_p.text_embedding.weight, so it is not a GPT-SoVITS SoVITS (stage 2) weight file"
        )
    if emb.shape[0] == 322 or model_version == "v1":
        raise CheckpointError(f"{path} is a GPT-SoVITS v1 SoVITS file (322-symbol table); {_UNSUPPORTED_HINT}")
    has_sv = "sv_emb.weight" in weight
    if tag in ("v2Pro", "v2ProPlus"):
        if not has_sv:
            raise CheckpointError(f"{path} is tagged {tag} but has no sv_emb weights; the file is inconsistent")
        return tag
    if has_sv:
        ups0 = weight.get("dec.ups.0.weight_v")
        plus = model_version == "v2ProPlus" or (ups0 is not None and ups0.shape[-1] == 20)
        return "v2ProPlus" if plus else "v2Pro"
    return "v2"


def load_sovits(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    fast: bool = True,
) -> SoVITS:
    """Load an official (or Narrator-written) SoVITS `.pth` into `models.sovits.SoVITS`, in eval mode.

    `.version` is "v2", "v2Pro" or "v2ProPlus". v1, v3/v4 and LoRA files are refused. The posterior encoder
    `enc_q` is absent from fine-tuned files and is then left at its initial values (only training uses it).
    `fast=True` prepares the fast inference path (`models.inference.prepare_sovits`: cached weight-norm weights,
    channels-last decoder); call `prepare_sovits` again after moving the model to another dtype/device.
    """
    p = Path(path)
    obj, head = _read_container(p, "SoVITS")
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{p} is not a SoVITS weight file (top level is {type(obj).__name__}, not a dict)")
    if _looks_like_gpt(obj):
        raise CheckpointError(
            f"{p} is a GPT (stage 1, text-to-semantic) checkpoint, not SoVITS weights; load it with load_gpt / "
            "pass it as the GPT model"
        )
    if "weight" not in obj and "model" in obj and "optimizer" in obj:
        raise CheckpointError(
            f"{p} is a SoVITS training-state checkpoint (G_*.pth with optimizer state), not an exported weight file; "
            "use the exported .pth from the weights folder"
        )
    weight, config = obj.get("weight"), obj.get("config")
    if not isinstance(weight, Mapping) or config is None:
        raise CheckpointError(
            f"{p} lacks the 'weight' and 'config' entries of a GPT-SoVITS SoVITS file; pass an exported .pth"
        )
    if not all(isinstance(v, torch.Tensor) for v in weight.values()):
        raise CheckpointError(f"{p}: 'weight' holds non-tensor values; the file is not a SoVITS weight file")
    hps = _as_plain(config)
    if not isinstance(hps, dict) or not isinstance(hps.get("model"), dict):
        raise CheckpointError(f"{p}: the config has no 'model' section; the file is not a SoVITS weight file")
    version = _detect_sovits_version(weight, hps, head, p)
    try:
        cfg = SoVITSConfig.from_official(hps, version=version)
        model = SoVITS(cfg)
    except (SoVITSError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{p}: its config cannot build a {version} SoVITS model ({exc})") from None

    problems = state_dict_problems(model.state_dict(), weight, optional=("enc_q.",))
    if problems:
        raise CheckpointError(
            f"{p} does not match a {version} SoVITS model built from its own config ({'; '.join(problems)}); "
            "the file is damaged or was edited"
        )
    model.load_state_dict(dict(weight), strict=False)
    model.hparams = hps
    model.info = obj.get("info")
    model.has_posterior = any(k.startswith("enc_q.") for k in weight)
    model.to(device=device, dtype=dtype)
    model.eval()
    if fast:
        from models.inference import prepare_sovits

        prepare_sovits(model)
    return model


def _to_hparams(config: Mapping[str, Any]) -> HParams:
    return HParams(**copy.deepcopy(dict(config)))


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{time.time()}.pth"  # the official tools save to "<time>.pth", then move
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_sovits(sovits: SoVITS, path: str | os.PathLike, info: str = "0epoch_0iteration") -> Path:
    """Write `sovits` the way the official `process_ckpt.savee` does: fp16 weights without enc_q.*, the config
    as a pickled `utils.HParams`, `info`, and for v2Pro / v2ProPlus the b"05" / b"06" header tag."""
    if not isinstance(sovits, SoVITS):
        raise CheckpointError(f"save_sovits needs a models.sovits.SoVITS, got {type(sovits).__name__}")
    path = Path(path)
    hps = copy.deepcopy(sovits.hparams) if sovits.hparams else sovits_official_config(sovits.config)
    hps.setdefault("model", {})["version"] = sovits.version
    weight = {k: v.detach().to("cpu").half().contiguous() for k, v in sovits.state_dict().items() if "enc_q" not in k}
    container = collections.OrderedDict(weight=weight, config=_to_hparams(hps), info=str(info))
    tag = _VERSION_TAGS.get(sovits.version)
    if tag is None:
        _atomic_write(path, lambda tmp: torch.save(container, tmp, pickle_module=_WRITER_PICKLE))
    else:
        buffer = io.BytesIO()
        torch.save(container, buffer, pickle_module=_WRITER_PICKLE)
        data = tag + buffer.getvalue()[2:]
        _atomic_write(path, lambda tmp: tmp.write_bytes(data))
    return path


def sovits_official_config(cfg: SoVITSConfig) -> dict[str, Any]:
    """The official s2 config dict (train/data/model sections) describing `cfg`, for models built from scratch."""
    hop = cfg.hop_length
    out: dict[str, Any] = {
        "train": {
            "log_interval": 100, "eval_interval": 500, "seed": 1234, "epochs": 100, "learning_rate": 0.0001,
            "betas": [0.8, 0.99], "eps": 1e-09, "batch_size": 32, "fp16_run": True, "lr_decay": 0.999875,
            "segment_size": cfg.segment_size * hop, "init_lr_ratio": 1, "warmup_epochs": 0, "c_mel": 45,
            "c_kl": 1.0, "text_low_lr_rate": 0.4, "grad_ckpt": False,
        },
        "data": {
            "max_wav_value": 32768.0, "sampling_rate": cfg.sampling_rate, "filter_length": (cfg.spec_channels - 1) * 2,
            "hop_length": hop, "win_length": (cfg.spec_channels - 1) * 2, "n_mel_channels": 128, "mel_fmin": 0.0,
            "mel_fmax": None, "add_blank": True, "n_speakers": 300, "cleaned_text": True,
        },
        "model": {
            "inter_channels": cfg.inter_channels, "hidden_channels": cfg.hidden_channels,
            "filter_channels": cfg.filter_channels, "n_heads": cfg.n_heads, "n_layers": cfg.n_layers,
            "kernel_size": cfg.kernel_size, "p_dropout": cfg.p_dropout, "resblock": "1",
            "resblock_kernel_sizes": list(cfg.resblock_kernel_sizes),
            "resblock_dilation_sizes": [list(d) for d in cfg.resblock_dilation_sizes],
            "upsample_rates": list(cfg.upsample_rates), "upsample_initial_channel": cfg.upsample_initial_channel,
            "upsample_kernel_sizes": list(cfg.upsample_kernel_sizes), "n_layers_q": 3, "use_spectral_norm": False,
            "gin_channels": cfg.gin_channels, "semantic_frame_rate": cfg.semantic_frame_rate,
            "freeze_quantizer": cfg.freeze_quantizer, "version": cfg.version,
        },
        "s2_ckpt_dir": "logs/s2/big2k1",
        "content_module": "cnhubert",
    }
    default_mrte = SoVITSConfig().mrte
    if cfg.mrte != default_mrte:
        out["mrte"] = {
            "content_enc_channels": cfg.mrte.content_enc_channels, "hidden_size": cfg.mrte.hidden_size,
            "out_channels": cfg.mrte.out_channels, "n_heads": cfg.mrte.n_heads,
        }
    return out


# --------------------------------------------------------------------------------------------------------------
# GPT
# --------------------------------------------------------------------------------------------------------------


def load_gpt(path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """Load an official GPT-SoVITS stage-1 `.ckpt` into `models.gpt.GPT` (eval mode)."""
    from models.gpt import GPT, GPTConfig

    p = Path(path)
    obj, head = _read_container(p, "GPT")
    if head != b"PK":
        raise CheckpointError(
            f"{p} carries a SoVITS version tag ({head!r}), so it is SoVITS weights, not a GPT checkpoint; "
            "load it with load_sovits"
        )
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{p} is not a GPT checkpoint (top level is {type(obj).__name__}, not a dict)")
    if _looks_like_sovits(obj):
        raise CheckpointError(
            f"{p} is SoVITS (stage 2, synthesizer) weights, not a GPT checkpoint; load it with load_sovits / "
            "pass it as the SoVITS model"
        )
    weight, config = obj.get("weight"), obj.get("config")
    if "state_dict" in obj and weight is None:
        raise CheckpointError(
            f"{p} is a Lightning training-state checkpoint, not an exported GPT weight file; use the exported "
            ".ckpt from the GPT weights folder"
        )
    if not isinstance(weight, Mapping) or not isinstance(config, dict):
        raise CheckpointError(f"{p} lacks the 'weight' and 'config' entries of a GPT-SoVITS stage-1 checkpoint")
    try:
        cfg = GPTConfig.from_official(config)
        gpt = GPT(cfg)
    except NarratorError as exc:
        raise CheckpointError(f"{p}: {exc}") from None
    sd = {k[len("model."):] if str(k).startswith("model.") else k: v for k, v in weight.items()}
    problems = state_dict_problems(gpt.state_dict(), sd, shown_prefix="model.")
    if problems:
        raise CheckpointError(
            f"{p} does not match the GPT model its own config describes ({'; '.join(problems)}); the file is damaged "
            "or was edited"
        )
    gpt.load_state_dict(sd)
    gpt.info = obj.get("info")
    gpt.to(device=device, dtype=dtype)
    gpt.eval()
    return gpt


def save_gpt(gpt, path: str | os.PathLike, info: str = "GPT-e1") -> Path:
    """Write `gpt` as the official stage-1 trainer does: fp16 "model.*" weights, the config dict, `info`."""
    if not hasattr(gpt, "cfg") or not hasattr(gpt.cfg, "to_official"):
        raise CheckpointError(f"save_gpt needs a models.gpt.GPT, got {type(gpt).__name__}")
    path = Path(path)
    weight = collections.OrderedDict(
        ("model." + k, v.detach().to("cpu").half().contiguous()) for k, v in gpt.state_dict().items()
    )
    container = collections.OrderedDict(weight=weight, config=gpt.cfg.to_official(), info=str(info))
    _atomic_write(path, lambda tmp: torch.save(container, tmp))
    return path
