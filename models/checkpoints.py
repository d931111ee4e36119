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
...) stops the load with a `CheckpointError` before it can run. The training loop's own checkpoints
(`read_training_state`) go through the same unpickler, which then also knows the numpy RNG state arrays.

Hostile sizes: before anything is inflated, the zip directory's declared (uncompressed) member sizes are summed
and checked against a bound (`MAX_WEIGHT_FILE_BYTES` for weight files, a bound from the model for training
checkpoints), so a small file that inflates to gigabytes is refused at once. Files are streamed, never read whole.

Integrity: files Narrator exports carry `"narrator_digest": "sha256:<hex>"` (`weights_digest` of the stored
tensors) as a fourth top-level entry, which the official loaders never look at; our loaders refuse a file whose
weights do not match it. Any file (ours or official) with NaN or infinite weights is refused, and so is exporting
such weights. Exports are reproducible: the same weights, config and info give the same bytes.
"""

from __future__ import annotations

import collections
import copy
import hashlib
import io
import os
import pickle
import struct
import types
import uuid
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Mapping

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

# The largest model we load: SoVITS v2ProPlus, 99,912,321 parameters + buffers including enc_q
# (../shared/gsv/ARCH.md section 3; the GPT has 77.6 M, v2 SoVITS 52.9 M).
_LARGEST_MODEL_ELEMENTS = 99_912_321
MAX_WEIGHT_FILE_BYTES = 2 * 4 * _LARGEST_MODEL_ELEMENTS + (64 << 20)
"""The most a weight file's zip members may declare uncompressed, in total, and the largest file we open: twice the
largest model stored in fp32 (official and Narrator files store fp16, a quarter of this) plus 64 MiB for the pickle
and config, about 0.81 GiB. Official v3/v4 files (~0.77 GB) stay under it and are refused by version, not size."""

DIGEST_KEY = "narrator_digest"  # the top-level container entry holding `weights_digest(weight)` in our exports


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


def _latin1_bytes(text: Any, encoding: str = "utf-8") -> bytes:
    """`_codecs.encode` as protocol-2 pickles use it for bytes objects: `encode(str, "latin1")`, nothing else."""
    if not isinstance(text, str) or encoding.replace("-", "").lower() != "latin1":
        raise _ForbiddenGlobal("_codecs", f"encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin-1")


def _training_state_globals() -> dict[tuple[str, str], Any]:
    """What the training loop's checkpoints add to a weight file's globals: the numpy RNG state
    (`np.random.get_state()`: an ndarray of uint32 words), pickled as ndarray / dtype / `_reconstruct` plus the bytes
    codec. Arrays are rebuilt only as plain `numpy.ndarray`s of bool/int/uint/float/complex dtype (no object arrays)."""
    import numpy as np

    reconstruct = np.zeros(1).__reduce__()[0]  # numpy.core / numpy._core .multiarray._reconstruct, per version

    def plain_array(subtype: Any, shape: Any, dtype: Any) -> Any:
        if subtype is not np.ndarray:
            raise _ForbiddenGlobal("numpy", f"_reconstruct({getattr(subtype, '__name__', type(subtype).__name__)})")
        return reconstruct(np.ndarray, shape, dtype)

    def plain_dtype(spec: Any, align: bool = False, copy: bool = False) -> Any:
        if not isinstance(spec, str):
            raise _ForbiddenGlobal("numpy", f"dtype({type(spec).__name__})")
        dtype = np.dtype(spec, bool(align), bool(copy))
        if dtype.hasobject or dtype.kind not in "biufc":
            raise _ForbiddenGlobal("numpy", f"dtype({spec!r})")
        return dtype

    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): plain_dtype,
                                           ("_codecs", "encode"): _latin1_bytes}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = plain_array
    return allowed


class _TrainingStateUnpickler(_RestrictedUnpickler):
    """The weight-file unpickler plus exactly the numpy RNG state the training loop writes."""

    _allowed = {**_allowed_globals(), **_training_state_globals()}


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
_TRAINING_STATE_PICKLE = types.SimpleNamespace(
    __name__="narrator_training_state_pickle", Unpickler=_TrainingStateUnpickler, load=_unsafe_load,
    Pickler=pickle.Pickler
)
_WRITER_PICKLE = types.SimpleNamespace(__name__="narrator_hparams_pickle", Pickler=_HParamsPickler)


# --------------------------------------------------------------------------------------------------------------
# reading containers
# --------------------------------------------------------------------------------------------------------------


class _Retagged(io.RawIOBase):
    """Read-only view of a version-tagged SoVITS file (b"05"/b"06" header) whose first two bytes read as b"PK",
    so torch and zipfile stream it from disk instead of from a patched copy in memory."""

    def __init__(self, raw: BinaryIO) -> None:
        super().__init__()
        self._raw = raw

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._raw.tell()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._raw.seek(offset, whence)

    def readinto(self, buffer: Any) -> int:
        start = self._raw.tell()
        count = self._raw.readinto(buffer)
        if count and start < 2:
            view = memoryview(buffer).cast("B")
            for i in range(start, min(2, start + count)):
                view[i - start] = b"PK"[i]
        return count or 0


def _gib(n: int) -> str:
    return f"{n / 2 ** 30:.2f} GiB"


def _check_zip_directory(stream: BinaryIO, p: Path, what: str, max_bytes: int, remedy: str | None) -> None:
    """Refuse a zip whose members declare more than `max_bytes` uncompressed in total, reading only the directory.

    The sum is over every entry of the central directory (duplicates included), which torch's reader (miniz) also
    uses to size its buffers; the directory must end where the end record says, so both readers see the same one."""
    try:
        with zipfile.ZipFile(stream) as archive:
            members = archive.infolist()
        stream.seek(0)
        end = zipfile._EndRecData(stream)  # the end-of-directory record zipfile used (ZIP64-aware)
        if end is None:
            raise zipfile.BadZipFile("no end record")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, struct.error):
        raise CheckpointError(
            f"{p} is damaged or incomplete (no readable zip directory; the file may be truncated); "
            f"{remedy or 'copy or download it again'}"
        ) from None
    directory_end = end[zipfile._ECD_OFFSET] + end[zipfile._ECD_SIZE]
    record = end[zipfile._ECD_LOCATION]
    if end[zipfile._ECD_SIGNATURE] == zipfile.stringEndArchive64:
        record -= zipfile.sizeEndCentDir64 + zipfile.sizeEndCentDir64Locator
    if directory_end != record:
        raise CheckpointError(
            f"refusing to load {p}: its zip directory is not where its end record says (data before or inside the "
            f"archive); torch never writes such files; {remedy or 'do not use this file'}"
        )
    declared = sum(member.file_size for member in members)
    if declared > max_bytes:
        raise CheckpointError(
            f"refusing to load {p}: its {len(members)} zip members declare {_gib(declared)} uncompressed, more than "
            f"a {what} of a supported size can hold ({_gib(max_bytes)}); the file is not such a checkpoint or was "
            f"made to exhaust memory (a zip bomb); {remedy or 'do not use this file'}"
        )


def _read_container(path: str | os.PathLike, what: str, *, max_bytes: int = MAX_WEIGHT_FILE_BYTES,
                    pickle_module: Any = _RESTRICTED_PICKLE, remedy: str | None = None,
                    tagged: bool = True) -> tuple[Any, bytes]:
    """Safely unpickle a torch zip container. Returns (object, first two bytes of the file).

    The file is streamed from disk. Before anything is inflated: the file may not exceed `max_bytes` bytes and its
    zip members may not declare more than `max_bytes` bytes uncompressed in total. `pickle_module` decides which
    globals the pickle may name (the weight-file set by default). `remedy` replaces the default advice at the end
    of every error message; `tagged=False` refuses SoVITS version headers (only "PK" files are accepted).
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{what} file {p} does not exist; check the path")
    with p.open("rb") as raw:
        head = raw.read(2)
        if head != b"PK" and (not tagged or head not in _HEADER_TAGS):
            if remedy:
                raise CheckpointError(f"{p} is not a {what} (it does not start like a torch zip file); {remedy}")
            raise CheckpointError(
                f"{p} is not a GPT-SoVITS checkpoint (it does not start like a torch zip file or a tagged "
                "SoVITS file); pass the .pth / .ckpt file written by GPT-SoVITS or Narrator"
            )
        size = os.fstat(raw.fileno()).st_size
        if size > max_bytes:
            raise CheckpointError(
                f"refusing to load {p}: the file is {_gib(size)}, more than a {what} can hold ({_gib(max_bytes)}); "
                f"it is not a checkpoint; {remedy or 'pass the right file'}"
            )
        stream: BinaryIO = raw if head == b"PK" else _Retagged(raw)  # type: ignore[assignment]
        _check_zip_directory(stream, p, what, max_bytes, remedy)
        stream.seek(0)
        try:
            obj = torch.load(stream, map_location="cpu", pickle_module=pickle_module, weights_only=False)
        except _ForbiddenGlobal as exc:
            raise _forbidden(p, what, exc, remedy) from None
        except CheckpointError:
            raise
        except Exception as exc:  # torch / zip / pickle errors on damaged data
            cause = exc.__context__ if isinstance(exc, pickle.UnpicklingError) and exc.__context__ else exc
            if isinstance(cause, _ForbiddenGlobal):
                raise _forbidden(p, what, cause, remedy) from None
            raise CheckpointError(
                f"{p} could not be read as a checkpoint ({type(exc).__name__}: {str(exc)[:200]}); the file is damaged "
                f"or truncated, {remedy or 'copy or download it again'}"
            ) from None
    return obj, head


def _forbidden(p: Path, what: str, exc: _ForbiddenGlobal, remedy: str | None) -> CheckpointError:
    kind = "weight file" if remedy is None else what
    return CheckpointError(
        f"refusing to load {p}: its pickle asks for `{exc.module}.{exc.name}`, which a {kind} never needs "
        f"(the file may be malicious or is not a GPT-SoVITS checkpoint); {remedy or 'do not use this file'}"
    )


def read_training_state(path: str | os.PathLike, max_bytes: int, remedy: str) -> Any:
    """A training-loop checkpoint (`components.training`), through the restricted unpickler: tensors, plain
    containers, the optimizer / scheduler / scaler state dicts and the python / numpy / torch RNG states, nothing
    else. `max_bytes` bounds the file and its declared uncompressed size; `remedy` ends every error message."""
    obj, _ = _read_container(path, "training checkpoint", max_bytes=max_bytes, pickle_module=_TRAINING_STATE_PICKLE,
                             remedy=remedy, tagged=False)
    return obj


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


def weights_digest(weight: Mapping[str, torch.Tensor]) -> str:
    """"sha256:<64 hex>" of a container's weights exactly as stored: for each key in sorted order, the key, dtype
    and shape, then the tensor's bytes (C order, little-endian as torch stores them). Independent of the zip
    layout and of the order of the dict."""
    digest = hashlib.sha256()
    for key in sorted(weight, key=str):
        tensor = weight[key].detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{key}\0{tensor.dtype}\0{tuple(weight[key].shape)}\0".encode("utf-8"))
        digest.update(tensor.view(torch.uint8).numpy())
    return "sha256:" + digest.hexdigest()


def _non_finite(weight: Mapping[str, torch.Tensor]) -> list[str]:
    """Keys of the floating-point tensors holding NaN or +-inf.

    One reduction per tensor (4x faster than an element-wise test on fp16): NaN and inf propagate into the sum,
    which is taken in a width it cannot overflow for fp16/bf16/fp32 weights; a non-finite sum is confirmed element by
    element (a float64 sum of huge values could overflow)."""
    bad = []
    for key, value in weight.items():
        if not value.is_floating_point():
            continue
        wide = torch.float32 if value.dtype == torch.float16 else torch.float64
        if not bool(torch.isfinite(value.sum(dtype=wide))) and not bool(torch.isfinite(value).all()):
            bad.append(str(key))
    return bad


def _check_weights(p: Path, obj: Mapping[str, Any], weight: Mapping[str, Any]) -> None:
    """Refuse non-tensor weights, weights that do not match the file's Narrator digest (when it has one) and NaN
    or infinite weights (any file)."""
    if not all(isinstance(v, torch.Tensor) for v in weight.values()):
        raise CheckpointError(f"{p}: 'weight' holds non-tensor values; the file is not a GPT-SoVITS weight file")
    # a tensor may view its stored bytes with any shape and strides (stride 0 repeats one value forever): bound what
    # the weights claim before hashing or scanning them
    for key, value in weight.items():
        if value.numel() * value.element_size() > value.untyped_storage().nbytes():
            raise CheckpointError(
                f"refusing to load {p}: weight {key} claims {tuple(value.shape)} values, more than the file stores for "
                "it; the file was crafted or is damaged; do not use this file"
            )
    claimed = sum(value.numel() * value.element_size() for value in weight.values())
    if claimed > MAX_WEIGHT_FILE_BYTES:
        raise CheckpointError(
            f"refusing to load {p}: its weights claim {_gib(claimed)}, more than any supported model holds "
            f"({_gib(MAX_WEIGHT_FILE_BYTES)}); the file was crafted or is damaged; do not use this file"
        )
    if DIGEST_KEY in obj:
        recorded = obj[DIGEST_KEY]
        if not isinstance(recorded, str) or not recorded.startswith("sha256:"):
            raise CheckpointError(
                f"{p}: its {DIGEST_KEY} entry is malformed ({type(recorded).__name__}), so its weights cannot be "
                "checked; the file was edited or is damaged: copy it again or export it again"
            )
        if weights_digest(weight) != recorded:
            raise CheckpointError(
                f"{p} is damaged: its weights do not match the digest ({DIGEST_KEY}) written when Narrator exported "
                "it, so bytes changed on disk or in transfer; copy it again from where it came from, or export it "
                "again"
            )
    bad = _non_finite(weight)
    if bad:
        raise CheckpointError(
            f"{p}: weights {format_keys(bad, 6)} hold NaN or infinite values; the file is damaged or comes from a "
            "training run that diverged; use another file"
        )


def _export_container(weight: Mapping[str, torch.Tensor], config: Any, info: str, digest: bool,
                      what: str) -> collections.OrderedDict:
    """The official container {weight, config, info}, plus our digest entry when `digest`; refuses NaN / inf."""
    bad = _non_finite(weight)
    if bad:
        raise CheckpointError(
            f"cannot export the {what}: weights {format_keys(bad, 6)} hold NaN or infinite values as stored in fp16 "
            "(values beyond +-65504 overflow); the training diverged: lower the learning rate or export an earlier "
            "checkpoint"
        )
    container = collections.OrderedDict(weight=weight, config=config, info=str(info))
    if digest:
        container[DIGEST_KEY] = weights_digest(weight)
    return container


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
    _check_weights(p, obj, weight)
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


def _atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write `path` through `write(file)`: into a new temporary file beside it, flushed to disk, then moved into
    place, so a kill leaves the previous file or the new one, never half of one.

    `torch.save` into an open file names the zip's folder "archive" (into a path it would use the path's stem,
    and the official tools' stem is a timestamp), and its zip entries carry a fixed date: the bytes depend only on
    what is written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp"
    try:
        with tmp.open("xb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_sovits(sovits: SoVITS, path: str | os.PathLike, info: str = "0epoch_0iteration", digest: bool = True) -> Path:
    """Write `sovits` the way the official `process_ckpt.savee` does: fp16 weights without enc_q.*, the config
    as a pickled `utils.HParams`, `info`, and for v2Pro / v2ProPlus the b"05" / b"06" header tag.

    With `digest` (the default) the container also holds `narrator_digest` (`weights_digest` of the fp16 weights),
    which `load_sovits` checks and the official loader ignores; `digest=False` writes exactly the official bytes.
    The same model, config and info always give the same bytes. NaN / infinite weights are refused."""
    if not isinstance(sovits, SoVITS):
        raise CheckpointError(f"save_sovits needs a models.sovits.SoVITS, got {type(sovits).__name__}")
    path = Path(path)
    hps = copy.deepcopy(sovits.hparams) if sovits.hparams else sovits_official_config(sovits.config)
    hps.setdefault("model", {})["version"] = sovits.version
    weight = {k: v.detach().to("cpu").half().contiguous() for k, v in sovits.state_dict().items() if "enc_q" not in k}
    container = _export_container(weight, _to_hparams(hps), info, digest, "SoVITS model")
    tag = _VERSION_TAGS.get(sovits.version)

    def write(file: BinaryIO) -> None:
        torch.save(container, file, pickle_module=_WRITER_PICKLE)
        if tag is not None:
            file.seek(0)
            file.write(tag)

    _atomic_write(path, write)
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
    _check_weights(p, obj, weight)
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


def save_gpt(gpt, path: str | os.PathLike, info: str = "GPT-e1", digest: bool = True) -> Path:
    """Write `gpt` as the official stage-1 trainer does: fp16 "model.*" weights, the config dict, `info`.

    With `digest` (the default) the container also holds `narrator_digest`, which `load_gpt` checks and the
    official loader ignores; `digest=False` writes exactly the official records. Reproducible; NaN / inf refused."""
    if not hasattr(gpt, "cfg") or not hasattr(gpt.cfg, "to_official"):
        raise CheckpointError(f"save_gpt needs a models.gpt.GPT, got {type(gpt).__name__}")
    path = Path(path)
    weight = collections.OrderedDict(
        ("model." + k, v.detach().to("cpu").half().contiguous()) for k, v in gpt.state_dict().items()
    )
    container = _export_container(weight, gpt.cfg.to_official(), info, digest, "GPT model")
    _atomic_write(path, lambda file: torch.save(container, file))
    return path
