"""GPT-SoVITS v2 "stage 1": the autoregressive text-to-semantic model, in one file.

The model reads phoneme ids plus BERT features of (prompt text + target text), then the semantic codes of
the prompt audio, and continues the code sequence for the target text until it predicts EOS.

    text   : phones (B, Lx) -> token embedding + bert_proj(bert)    -> + alpha_text  * pe[0..Lx)
    audio  : codes  (B, Ty) -> token embedding                       -> + alpha_audio * pe[0..Ty)
    x      = [text ; audio]                                         (B, Lx+Ty, C)
    x      = n_layer post-norm transformer blocks (fused qkv, ReLU FFN)
    logits = ar_predict_layer(x)                                    (B, Lx+Ty, vocab_size)

Attention mask ("inference mask"): a text position sees every text position and no audio; an audio position sees
every text position and the audio positions up to itself. Positional encodings restart at 0 for the audio stream.

Parameter names equal the official `Text2SemanticDecoder` state dict with the leading "model." removed, so official
.ckpt weights load directly (see `GPT.load_official_weights`). Decoding follows the official sampler exactly:
repetition penalty on every seen token (prompt included), top-p, temperature, top-k, softmax, exponential-race
sample; EOS is unavailable for the first 11 steps; stop on EOS, on `early_stop_num` or on a hard step limit.
The training loss is the official `forward_old`: summed cross-entropy of [codes..., EOS], predicted from the last
text position onwards.

Decoding (one token per step): the prompt is run once as a whole sequence ("prefill") into a preallocated
`KVCache`; each new token then goes through `Transformer.step`, one position per row, attending to the cache.
How the models run fast at inference (prefetched or int8 step weights, column-major weight storage) is not
here but in models/inference.py, which plugs its step in through `GPT.decoding_step`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol

import torch
import torch.nn as nn
import torch.utils.checkpoint
import torch.nn.functional as F
from torch import Tensor

from narrator.errors import NarratorError

BERT_DIM = 1024  # chinese-roberta-wwm-ext-large hidden size; fixed by the official bert_proj
MIN_TOKENS_BEFORE_EOS = 11  # the official decoder hides EOS for steps 0..10
MAX_DECODE_STEPS = 1500  # the official decoding loop runs at most this many steps


class GPTError(NarratorError):
    """A GPT (stage-1) config, weight file or input that cannot be used as given."""


# ----------------------------------------------------------------------------------------------------------------
# config


# The sections of the official s1 config (s1longer-v2.yaml) that the model itself does not use. They are written
# back by `to_official` so that the official loader and trainer accept a config we made from scratch.
_OFFICIAL_V2_TEMPLATE: dict[str, Any] = {
    "train": {
        "seed": 1234,
        "epochs": 20,
        "batch_size": 8,
        "save_every_n_epoch": 1,
        "precision": "16-mixed",
        "gradient_clip": 1.0,
    },
    "optimizer": {"lr": 0.01, "lr_init": 1e-05, "lr_end": 0.0001, "warmup_steps": 2000, "decay_steps": 40000},
    "data": {"max_eval_sample": 8, "max_sec": 54, "num_workers": 4, "pad_val": 1024},
    "model": {
        "vocab_size": 1025,
        "phoneme_vocab_size": 732,
        "embedding_dim": 512,
        "hidden_dim": 512,
        "head": 16,
        "linear_units": 2048,
        "n_layer": 24,
        "dropout": 0,
        "EOS": 1024,
        "random_bert": 0,
    },
    "inference": {"top_k": 15},
}

_REQUIRED_MODEL_KEYS = ("vocab_size", "phoneme_vocab_size", "embedding_dim", "hidden_dim", "head", "n_layer", "EOS")


@dataclass
class GPTConfig:
    """Sizes of the stage-1 model. Defaults are the official v2 pretrained model (77.6 M parameters)."""

    n_layer: int = 24
    n_head: int = 16
    n_embd: int = 512  # official embedding_dim == hidden_dim
    phoneme_vocab_size: int = 732  # v2 symbol table
    vocab_size: int = 1025  # 1024 semantic codes + EOS
    eos: int = 1024
    dropout: float = 0.0
    max_sec: int = 54  # data.max_sec: the official caller stops after 50 * max_sec new tokens
    # The official config dict as read (train/optimizer/data/inference sections, ignored model keys such as
    # linear_units), kept so that `to_official` round-trips `from_official`; the fields above override it.
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.n_layer < 1 or self.n_head < 1 or self.n_embd < 1:
            raise GPTError(f"GPTConfig needs positive sizes, got n_layer={self.n_layer} n_head={self.n_head} "
                           f"n_embd={self.n_embd}")
        if self.n_embd % self.n_head:
            raise GPTError(f"GPTConfig: n_embd={self.n_embd} is not divisible by n_head={self.n_head}; "
                           "pick a head count that divides the width")
        if self.eos != self.vocab_size - 1:
            raise GPTError(f"GPTConfig: EOS must be the last token (vocab_size-1={self.vocab_size - 1}), "
                           f"got {self.eos}; this is the layout of every official GPT-SoVITS checkpoint")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def d_ff(self) -> int:
        """FFN width. The official model always uses 4 * hidden (its `linear_units` setting is ignored)."""
        return 4 * self.n_embd

    @classmethod
    def from_official(cls, config: dict) -> "GPTConfig":
        """Read the "config" dict stored in an official stage-1 .ckpt (s1 yaml + extra keys)."""
        if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
            raise GPTError("not a GPT-SoVITS stage-1 config: expected a dict with a 'model' section "
                           "(pass checkpoint['config'] from the official .ckpt)")
        model = config["model"]
        missing = [k for k in _REQUIRED_MODEL_KEYS if k not in model]
        if missing:
            raise GPTError(f"GPT-SoVITS stage-1 config lacks model.{', model.'.join(missing)}; "
                           "re-export the checkpoint with the official trainer or fill these keys in")
        if model["embedding_dim"] != model["hidden_dim"]:
            raise GPTError(f"GPT config has embedding_dim={model['embedding_dim']} != hidden_dim="
                           f"{model['hidden_dim']}; the official model only works when they are equal")
        data = config.get("data") or {}
        return cls(
            n_layer=int(model["n_layer"]),
            n_head=int(model["head"]),
            n_embd=int(model["hidden_dim"]),
            phoneme_vocab_size=int(model["phoneme_vocab_size"]),
            vocab_size=int(model["vocab_size"]),
            eos=int(model["EOS"]),
            dropout=float(model.get("dropout", 0.0)),
            max_sec=int(data.get("max_sec", 54)),
            extra=copy.deepcopy(config),
        )

    def to_official(self) -> dict:
        """A config dict the official loader accepts; equals the dict given to `from_official` if there was one."""
        out = copy.deepcopy(self.extra) if self.extra else copy.deepcopy(_OFFICIAL_V2_TEMPLATE)
        model = out.setdefault("model", {})
        model.update(
            vocab_size=self.vocab_size,
            phoneme_vocab_size=self.phoneme_vocab_size,
            embedding_dim=self.n_embd,
            hidden_dim=self.n_embd,
            head=self.n_head,
            n_layer=self.n_layer,
            EOS=self.eos,
        )
        if model.get("dropout") != self.dropout:  # keep an int 0 as the official yaml writes it
            model["dropout"] = self.dropout
        if not self.extra:
            model["linear_units"] = self.d_ff
        data = out.setdefault("data", {})
        data["max_sec"] = self.max_sec
        data.setdefault("pad_val", self.eos)
        return out


# ----------------------------------------------------------------------------------------------------------------
# modules


class TokenEmbedding(nn.Module):
    """Ids (B, T) -> vectors (B, T, C). Wrapper only so the parameter is named `word_embeddings.weight`."""

    def __init__(self, vocab: int, dim: int):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, dim)

    def forward(self, ids: Tensor) -> Tensor:
        return self.word_embeddings(ids)


def sinusoid_table(positions: Tensor, dim: int) -> Tensor:
    """Standard sine/cosine encoding: positions (...,) -> (..., dim); sin on even channels, cos on odd, base 10000."""
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device)
                         * -(math.log(10000.0) / dim))
    angles = positions.to(torch.float32).unsqueeze(-1) * inv_freq
    pe = torch.zeros(*positions.shape, dim, dtype=torch.float32, device=positions.device)
    pe[..., 0::2] = torch.sin(angles)
    pe[..., 1::2] = torch.cos(angles)
    return pe


class SinePositionalEncoding(nn.Module):
    """x (B, T, C) -> x + alpha * pe[positions]. `alpha` is a learned scalar; the table is not a parameter."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.alpha = nn.Parameter(torch.ones(1))

    def encoding(self, positions: Tensor) -> Tensor:
        """alpha * pe for integer positions (...,) -> (..., C) in the parameter dtype."""
        return (self.alpha * sinusoid_table(positions, self.dim).to(self.alpha.dtype))

    def forward(self, x: Tensor, positions: Tensor | None = None) -> Tensor:
        if positions is None:
            positions = torch.arange(x.shape[1], device=x.device)
        return x + self.encoding(positions)


class KVCache:
    """Keys and values of every layer for a batch, preallocated to `max_len` positions and written in place.

        k        (n_layer, B * n_head, head_dim, max_len)  keys stored transposed, so scores are one batched q @ k
        v        (n_layer, B * n_head, max_len, head_dim)
        key_bias (B * n_head, 1, max_len)  additive attention bias, 0 or -inf; None when no position is masked

        rows     (B,) long: the original batch index of each live row (`keep_rows` drops finished ones)

    The first `length` positions are valid. A decoding step writes one column and reads a prefix view, so a
    step costs no copy of the cache (torch.cat caches copy it every step). On CPU the cache is float32 whatever
    the weights' dtype: bfloat16 batched matmuls copy strided (prefix-view) operands, float32 ones read them
    in place, and the attention scores keep full precision.
    """

    def __init__(self, cfg: GPTConfig, batch: int, max_len: int, dtype: torch.dtype, device: torch.device,
                 key_bias: Tensor | None = None):
        bh = batch * cfg.n_head
        self.n_head = cfg.n_head
        self.k = torch.empty(cfg.n_layer, bh, cfg.head_dim, max_len, dtype=dtype, device=device)
        self.v = torch.empty(cfg.n_layer, bh, max_len, cfg.head_dim, dtype=dtype, device=device)
        # in the cache dtype: baddbmm adds it to scores of that dtype (0 and -inf are exact in bfloat16)
        self.key_bias = None if key_bias is None else key_bias.to(dtype).repeat_interleave(cfg.n_head, dim=0)
        self.rows = torch.arange(batch, device=device)
        self.no_bias = torch.zeros(1, 1, 1, dtype=dtype, device=device)  # placeholder operand when unmasked
        self.length = 0
        self.max_len = max_len
        self.layers = list(zip(self.k.unbind(0), self.v.unbind(0)))  # per-layer (keys, values) views

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Attention of one new position per row, in `layer`: q, k, v (B, n_head, head_dim) -> (B, n_head * head_dim).

        Stores k and v at position `length`, then attends over positions [0, length] (the cache and itself):
        softmax(q @ keys / sqrt(head_dim) + key_bias) @ values, as two batched matmuls (faster than
        scaled_dot_product_attention for a single query on CPU). The result has q's dtype. The caller advances
        `length` once every layer has attended.
        """
        b, h, hd = q.shape
        t = self.length
        keys, values = self.layers[layer]  # (B*H, hd, max_len), (B*H, max_len, hd)
        keys.select(2, t).copy_(k.reshape(b * h, hd))
        values.select(1, t).copy_(v.reshape(b * h, hd))
        keys, values = keys.narrow(2, 0, t + 1), values.narrow(1, 0, t + 1)
        query = q.reshape(b * h, 1, hd).to(keys.dtype)
        if self.key_bias is None:  # scores (B*H, 1, t+1)
            scores = torch.baddbmm(self.no_bias, query, keys, beta=0.0, alpha=hd ** -0.5)
        else:
            scores = torch.baddbmm(self.key_bias.narrow(2, 0, t + 1), query, keys, alpha=hd ** -0.5)
        return torch.bmm(scores.softmax(dim=-1), values).to(q.dtype).view(b, h * hd)

    def keep_rows(self, rows: Tensor) -> None:
        """Drop finished batch rows: rows (B',) are the indices to keep."""
        def select(t: Tensor, dim: int) -> Tensor:
            shape = t.shape
            grouped = t.view(*shape[:dim], -1, self.n_head, *shape[dim + 1:])
            return grouped.index_select(dim, rows).view(*shape[:dim], -1, *shape[dim + 1:])
        self.rows = self.rows.index_select(0, rows)
        self.k, self.v = select(self.k, 1), select(self.v, 1)
        self.layers = list(zip(self.k.unbind(0), self.v.unbind(0)))
        if self.key_bias is not None:
            self.key_bias = select(self.key_bias, 0)


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused input projection, (B, T, C) -> (B, T, C).

    Parameter names follow torch.nn.MultiheadAttention: in_proj_weight (3C, C) = [W_q ; W_k ; W_v],
    in_proj_bias (3C,), out_proj (C -> C).
    """

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        c = cfg.n_embd
        self.n_head = cfg.n_head
        self.head_dim = cfg.head_dim
        self.dropout = cfg.dropout
        self.in_proj_weight = nn.Parameter(nn.init.xavier_uniform_(torch.empty(3 * c, c)))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * c))
        self.out_proj = nn.Linear(c, c)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: Tensor, mask: Tensor | None, cache: KVCache | None = None, layer: int = 0) -> Tensor:
        """x (B, T, C); mask bool, True = may attend, broadcastable to (B, 1, T, T), or None.

        With a cache (which must be empty) the keys/values are also stored at positions [0, T) of `layer`.
        """
        b, t, c = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias).view(b, t, 3, self.n_head, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, T, hd)
        if cache is not None:
            keys, values = cache.layers[layer]
            keys[:, :, :t] = k.transpose(-1, -2).reshape(b * self.n_head, self.head_dim, t)
            values[:, :t] = v.reshape(b * self.n_head, t, self.head_dim)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)  # (B, H, T, hd)
        return self.out_proj(y.transpose(1, 2).reshape(b, t, c))

    def step(self, x: Tensor, cache: KVCache, layer: int) -> Tensor:
        """`forward` for one new position per row: x (B, C) -> (B, C), attending to `layer`'s cache and itself."""
        b, c = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).view(b, 3, self.n_head, self.head_dim).unbind(1)
        return self.out_proj(cache.attend(layer, q, k, v))


class Block(nn.Module):
    """Post-norm transformer layer, (B, T, C) -> (B, T, C):

        x = norm1(x + self_attn(x))
        x = norm2(x + linear2(relu(linear1(x))))      linear1: C -> 4C, linear2: 4C -> C
    """

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.self_attn = SelfAttention(cfg)
        self.linear1 = nn.Linear(cfg.n_embd, cfg.d_ff)
        self.linear2 = nn.Linear(cfg.d_ff, cfg.n_embd)
        self.norm1 = nn.LayerNorm(cfg.n_embd, eps=1e-5)
        self.norm2 = nn.LayerNorm(cfg.n_embd, eps=1e-5)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, mask: Tensor | None, cache: KVCache | None = None, layer: int = 0) -> Tensor:
        x = self.norm1(x + self.drop(self.self_attn(x, mask, cache, layer)))
        x = self.norm2(x + self.drop(self.linear2(self.drop(F.relu(self.linear1(x))))))
        return x

    def step(self, x: Tensor, cache: KVCache, layer: int) -> Tensor:
        """`forward` for one new position per row (decoding, no dropout): x (B, C) -> (B, C).

        Attends to `layer`'s cached positions and itself, and stores this position's key/value in the cache.
        """
        x = self.norm1(x + self.self_attn.step(x, cache, layer))
        return self.norm2(x + self.linear2(F.relu(self.linear1(x))))


class Transformer(nn.Module):
    """The stack of blocks (named `h.layers.N` like the official nn.TransformerEncoder). (B, T, C) -> (B, T, C)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.gradient_checkpointing = False  # training: recompute each block's activations in backward

    def forward(self, x: Tensor, mask: Tensor | None, cache: KVCache | None = None) -> Tensor:
        """Whole sequence; with a cache (empty on entry) also fills positions [0, T)."""
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled() and cache is None
        for i, block in enumerate(self.layers):
            if recompute:
                x = torch.utils.checkpoint.checkpoint(block, x, mask, None, i, use_reentrant=False)
            else:
                x = block(x, mask, cache, i)
        if cache is not None:
            cache.length = x.shape[1]
        return x

    def step(self, x: Tensor, cache: KVCache) -> Tensor:
        """One new position per row through every layer: x (B, C) -> (B, C); advances the cache by one."""
        for i, block in enumerate(self.layers):
            x = block.step(x, cache, i)
        cache.length += 1
        return x


class DecodingStep(Protocol):
    """Another implementation of `Transformer.step` for `generate` / `generate_batch`, set as `GPT.decoding_step`
    (models/inference.py provides them: the same step on prefetched float weights, on int8 weights, or with every
    shape fixed for CUDA graphs)."""

    name: str  # what the step runs, e.g. "int8"
    # the dtype the prompt's prefill may compute in (CPU autocast), or None: the model's own dtype
    prefill_dtype: torch.dtype | None

    def bind(self, model: "GPT") -> Callable[[Tensor, KVCache], Tensor]:
        """Called once per `generate_batch`: the per-token step x (B, C) -> (B, C) in the model dtype, which
        stores the new position's key/value in every layer and advances the cache by one, as `Transformer.step`."""
        ...


# ----------------------------------------------------------------------------------------------------------------
# masks


def inference_mask(n_text: int, n_audio: int, device: torch.device | None = None) -> Tensor:
    """(L, L) bool, True = may attend, L = n_text + n_audio.

    Text rows see all text columns and no audio; audio rows see all text columns and the audio columns up to
    their own position.
    """
    n = n_text + n_audio
    mask = torch.zeros(n, n, dtype=torch.bool, device=device)
    mask[:, :n_text] = True
    mask[n_text:, n_text:] = torch.ones(n_audio, n_audio, dtype=torch.bool, device=device).tril()
    return mask


def lengths_to_mask(lengths: Tensor, max_len: int) -> Tensor:
    """(B,) lengths -> (B, max_len) bool, True on the first `length` positions of each row."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


# ----------------------------------------------------------------------------------------------------------------
# sampling


def sample_next(
    logits: Tensor,
    seen: Tensor,
    *,
    top_k: int | None,
    top_p: float | None,
    temperature: float,
    repetition_penalty: float,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    """One official sampling step for a batch: logits (B, V) float32, seen (B, V) bool (tokens already in y).

    Returns (sampled (B,), argmax of the penalised logits (B,)). Order: repetition penalty on seen tokens
    (negative logits x p, positive / p), top-p (always keep the best), / max(T, 1e-5), top-k (ties with the k-th
    kept), softmax, then argmax(probs / Exp(1) noise).
    """
    if repetition_penalty != 1.0:
        penalised = torch.where(logits < 0, logits * repetition_penalty, logits / repetition_penalty)
        logits = torch.where(seen, penalised, logits)
    best = logits.argmax(dim=-1)
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cum > top_p
        drop_sorted[:, 0] = False
        drop = drop_sorted.scatter(1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    logits = logits / max(temperature, 1e-5)
    if top_k is not None and top_k > 0:
        pivot = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < pivot, float("-inf"))
    probs = logits.softmax(dim=-1)
    noise = torch.empty_like(probs).exponential_(1.0, generator=generator)
    return (probs / noise).argmax(dim=-1), best


# ----------------------------------------------------------------------------------------------------------------
# the model


class GPT(nn.Module):
    """GPT-SoVITS v2 stage-1 text-to-semantic model (official `Text2SemanticDecoder`, inference + training loss)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.n_embd
        self.bert_proj = nn.Linear(BERT_DIM, c)
        self.ar_text_embedding = TokenEmbedding(cfg.phoneme_vocab_size, c)
        self.ar_text_position = SinePositionalEncoding(c)
        self.ar_audio_embedding = TokenEmbedding(cfg.vocab_size, c)
        self.ar_audio_position = SinePositionalEncoding(c)
        self.h = Transformer(cfg)
        self.ar_predict_layer = nn.Linear(c, cfg.vocab_size, bias=False)
        # The per-token step of `generate`: None runs `Transformer.step` on the modules above; models/inference.py
        # sets faster implementations of the same step (prefetched or int8 weights). Not part of the state dict.
        self.decoding_step: DecodingStep | None = None

    # ---- weights -----------------------------------------------------------------------------------------------

    def load_official_weights(self, weight: dict[str, Tensor]) -> None:
        """Load an official state dict (keys "model.*", any float dtype) strictly, converting to our dtype."""
        sd = {k[len("model."):] if k.startswith("model.") else k: v for k, v in weight.items()}
        ours = self.state_dict()
        missing = sorted(set(ours) - set(sd))
        unexpected = sorted(set(sd) - set(ours))
        wrong = sorted(k for k in set(ours) & set(sd) if tuple(ours[k].shape) != tuple(sd[k].shape))
        if missing or unexpected or wrong:
            detail = "; ".join(
                f"{name}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
                for name, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
                if keys
            )
            raise GPTError(f"GPT weights do not fit this config ({detail}); build GPTConfig.from_official from the "
                           "same checkpoint's 'config' dict")
        self.load_state_dict(sd)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def _dtype(self) -> torch.dtype:
        return self.bert_proj.weight.dtype

    @property
    def _device(self) -> torch.device:
        return self.bert_proj.weight.device

    # ---- inputs ------------------------------------------------------------------------------------------------

    def _check_text(self, phones: Tensor, bert: Tensor, what: str = "phones") -> None:
        if not isinstance(phones, Tensor) or phones.dim() != 2 or phones.dtype not in (torch.int64, torch.int32):
            raise GPTError(f"{what} must be an integer tensor (batch, n_phones); "
                           f"got {getattr(phones, 'shape', type(phones))}")
        if phones.shape[1] == 0:
            raise GPTError(f"{what} is empty: give at least one phoneme id (the prompt text and the target text)")
        if int(phones.min()) < 0 or int(phones.max()) >= self.cfg.phoneme_vocab_size:
            raise GPTError(f"{what} holds ids outside [0, {self.cfg.phoneme_vocab_size}); use the v2 symbol table "
                           "that matches this checkpoint")
        if not isinstance(bert, Tensor) or bert.dim() != 3 or tuple(bert.shape) != (phones.shape[0], BERT_DIM,
                                                                                   phones.shape[1]):
            raise GPTError(f"bert features must be (batch, {BERT_DIM}, n_phones) = ({phones.shape[0]}, {BERT_DIM}, "
                           f"{phones.shape[1]}) to match {what}; got {tuple(getattr(bert, 'shape', ()))}")

    def _check_codes(self, codes: Tensor | None, batch: int, what: str = "prompt", allow_eos: bool = False) -> Tensor:
        if codes is None:
            return torch.zeros(batch, 0, dtype=torch.int64, device=self._device)
        if not isinstance(codes, Tensor) or codes.dim() != 2 or codes.dtype not in (torch.int64, torch.int32):
            raise GPTError(f"{what} must be an integer tensor (batch, n_codes) of semantic codes; "
                           f"got {getattr(codes, 'shape', type(codes))}")
        if codes.shape[0] != batch:
            raise GPTError(f"{what} has batch {codes.shape[0]} but the text has batch {batch}")
        top = self.cfg.eos + int(allow_eos)
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= top):
            raise GPTError(f"{what} holds values outside [0, {top}); semantic codes come from the SoVITS model's "
                           "extract_latent")
        return codes.long()

    def text_input(self, phones: Tensor, bert: Tensor, positions: Tensor | None = None) -> Tensor:
        """phones (B, Lx), bert (B, 1024, Lx) -> (B, Lx, C): embedding + bert_proj + alpha * pe."""
        x = self.ar_text_embedding(phones.long()) + self.bert_proj(bert.transpose(1, 2).to(self._dtype))
        return self.ar_text_position(x, positions)

    def audio_input(self, codes: Tensor, start: int = 0) -> Tensor:
        """codes (B, T) -> (B, T, C): embedding + alpha * pe at positions start..start+T (audio restarts at 0)."""
        pos = torch.arange(start, start + codes.shape[1], device=codes.device)
        return self.ar_audio_position(self.ar_audio_embedding(codes.long()), pos)

    def input_embeddings(self, phones: Tensor, bert: Tensor, prompt: Tensor | None) -> Tensor:
        """The transformer input [text ; prompt]: (1, Lx), (1, 1024, Lx), (1, Ty) -> (1, Lx + Ty, C)."""
        self._check_text(phones, bert)
        prompt = self._check_codes(prompt, phones.shape[0])
        return torch.cat([self.text_input(phones, bert), self.audio_input(prompt)], dim=1)

    # ---- full-sequence passes ------------------------------------------------------------------------------------

    def logits(self, phones: Tensor, bert: Tensor, prompt: Tensor | None) -> Tensor:
        """Logits at every position under the inference mask: (1, Lx), (1, 1024, Lx), (1, Ty) -> (1, Lx+Ty, V)."""
        x = self.input_embeddings(phones, bert, prompt)
        mask = inference_mask(phones.shape[1], x.shape[1] - phones.shape[1], x.device)
        return self.ar_predict_layer(self.h(x, mask))

    def forward(self, phones: Tensor, bert: Tensor, codes: Tensor, phone_lens: Tensor | None = None,
                code_lens: Tensor | None = None) -> Tensor:
        """Teacher-forced pass of the official trainer over a padded batch.

        phones (B, Lx), bert (B, 1024, Lx), codes (B, Ty) (the audio *inputs*), optional true lengths (B,).
        Padded positions are excluded as keys. Returns logits at every position (B, Lx + Ty, V).
        """
        self._check_text(phones, bert)
        codes = self._check_codes(codes, phones.shape[0], "codes", allow_eos=True)
        b, lx = phones.shape
        ty = codes.shape[1]
        x = torch.cat([self.text_input(phones, bert), self.audio_input(codes)], dim=1)
        mask = inference_mask(lx, ty, x.device)[None, None]  # (1, 1, L, L)
        if phone_lens is not None or code_lens is not None:
            full = lambda n: torch.full((b,), n, dtype=torch.long, device=x.device)  # noqa: E731
            keys = torch.cat([lengths_to_mask(full(lx) if phone_lens is None else phone_lens.to(x.device), lx),
                              lengths_to_mask(full(ty) if code_lens is None else code_lens.to(x.device), ty)], dim=1)
            mask = mask & keys[:, None, None, :]
        return self.ar_predict_layer(self.h(x, mask))

    def training_loss(self, phones: Tensor, bert: Tensor, semantic: Tensor, phone_lens: Tensor | None = None,
                      semantic_lens: Tensor | None = None) -> Tensor:
        """Official stage-1 loss (`forward_old`): cross-entropy summed over the batch and positions.

        phones (B, Lx), bert (B, 1024, Lx), semantic (B, Ty) codes, optional true lengths (B,) -> scalar.
        Teacher forcing: the audio inputs are the Ty codes (padding replaced by EOS); the Ty + 1 outputs from the
        last text position onwards are scored against [codes..., EOS] (padding also targets EOS, as in the
        official trainer). With right-padded text the first code is predicted at position Lx - 1 of the padded
        batch, literally as the official slicing does (verified against the official loss for unpadded input only).
        """
        semantic = self._check_codes(semantic, phones.shape[0], "semantic targets")
        b, ty = semantic.shape
        if ty == 0:
            raise GPTError("semantic targets are empty: each training example needs at least one code")
        if semantic_lens is not None:
            semantic = semantic.masked_fill(~lengths_to_mask(semantic_lens.to(semantic.device), ty), self.cfg.eos)
        eos = torch.full((b, 1), self.cfg.eos, dtype=torch.long, device=semantic.device)
        targets = torch.cat([semantic, eos], dim=1)  # (B, Ty + 1)
        logits = self(phones, bert, semantic, phone_lens, semantic_lens)[:, phones.shape[1] - 1:]  # (B, Ty+1, V)
        return F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="sum")

    # ---- decoding ------------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def generate(self, phones: Tensor, bert: Tensor, prompt: Tensor | None, top_k: int | None = 15,
                 top_p: float | None = 1.0, temperature: float = 1.0, repetition_penalty: float = 1.35,
                 early_stop_num: int = -1, max_steps: int = MAX_DECODE_STEPS,
                 generator: torch.Generator | None = None, seed: int | None = None) -> Tensor:
        """Continue the prompt's codes for one sentence: (1, Lx), (1, 1024, Lx), (1, Ty) -> (1, n_new).

        Returns every new token, EOS removed. Stops on EOS: when the sample or the argmax of the penalised logits
        is EOS, and that step's sample is discarded either way (as the official decoder returns it); once more
        than `early_stop_num` tokens were made (-1: never); or after `max_steps` steps. Sampling uses
        `generator`, or a fresh one seeded with `seed`, or torch's global RNG. top_k=1 is deterministic.
        """
        if phones.dim() != 2 or phones.shape[0] != 1:
            raise GPTError("generate takes one sentence: phones of shape (1, n_phones); use generate_batch for more")
        return self.generate_batch([phones], [bert], prompt, top_k=top_k, top_p=top_p, temperature=temperature,
                                   repetition_penalty=repetition_penalty, early_stop_num=early_stop_num,
                                   max_steps=max_steps, generator=generator, seed=seed)[0]

    @torch.inference_mode()
    def generate_batch(self, phones: list[Tensor], bert: list[Tensor], prompt: Tensor | None, top_k: int | None = 15,
                       top_p: float | None = 1.0, temperature: float = 1.0, repetition_penalty: float = 1.35,
                       early_stop_num: int = -1, max_steps: int = MAX_DECODE_STEPS,
                       generator: torch.Generator | None = None, seed: int | None = None) -> list[Tensor]:
        """Decode several sentences that share one prompt, in one batch: list of (1, Lx_i), list of
        (1, 1024, Lx_i), (1, Ty) -> list of (1, n_new_i). Same rules as `generate`; with top_k=1 each result equals
        decoding that sentence alone.

        Layout per row: [left padding ; text_i ; prompt ; new tokens]. Text positions are counted from the first
        real phone and padding is masked out as a key, so each row computes what it would alone (padding rows
        compute throw-away values). Finished rows are dropped from the batch.
        """
        if not isinstance(phones, (list, tuple)) or not isinstance(bert, (list, tuple)) or len(phones) != len(bert):
            raise GPTError("generate_batch takes two lists of equal length: phones (1, n_i) and bert (1, 1024, n_i)")
        if not phones:
            return []
        results: list[Tensor | None] = [None] * len(phones)
        for _, _, _, finished in self._decode_steps(phones, bert, prompt, top_k, top_p, temperature,
                                                    repetition_penalty, early_stop_num, max_steps, generator, seed):
            for row, tokens in finished:
                results[row] = tokens
        return [r if r is not None else torch.zeros(1, 0, dtype=torch.long, device=self._device) for r in results]

    @torch.inference_mode()
    def generate_chunks(self, phones: Tensor, bert: Tensor, prompt: Tensor | None, first_chunk_tokens: int,
                        chunk_tokens: int, top_k: int | None = 15, top_p: float | None = 1.0,
                        temperature: float = 1.0, repetition_penalty: float = 1.35, early_stop_num: int = -1,
                        max_steps: int = MAX_DECODE_STEPS, generator: torch.Generator | None = None,
                        seed: int | None = None) -> Iterator[tuple[Tensor, bool]]:
        """`generate` for one sentence, handed out as it is made: yields `(tokens (1, k), last)`, the new tokens
        since the last chunk, first once `first_chunk_tokens` tokens are final, then every `chunk_tokens` more, and
        finally the rest with `last=True` (possibly `(1, 0)`). The chunks joined are exactly what `generate` returns
        for the same inputs and generator: the decoding steps and draws are the same, only handed out earlier (a
        step's token is final when that step does not stop on EOS, which the step itself decides)."""
        if phones.dim() != 2 or phones.shape[0] != 1:
            raise GPTError("generate_chunks takes one sentence: phones of shape (1, n_phones)")
        if first_chunk_tokens < 1 or chunk_tokens < 1:
            raise GPTError(f"chunk sizes must be at least 1 token, got first_chunk_tokens={first_chunk_tokens}, "
                           f"chunk_tokens={chunk_tokens}")
        sent, size = 0, first_chunk_tokens
        for step, _, out, finished in self._decode_steps([phones], [bert], prompt, top_k, top_p, temperature,
                                                         repetition_penalty, early_stop_num, max_steps, generator,
                                                         seed):
            if finished:
                tokens = finished[0][1]
                yield tokens[:, sent:], True
                return
            if step + 1 - sent >= size:
                yield out[:, sent:step + 1].clone(), False
                sent, size = step + 1, chunk_tokens

    def prefill(self, x: Tensor, mask: Tensor, cache: KVCache) -> Tensor:
        """The prompt's positions through every layer at once, filling `cache`: x (B, L, C), mask (L, L) or
        (B, 1, L, L) -> the last position's output (B, C) in the model's dtype. Computes in the decoding step's
        `prefill_dtype` when it names one (CPU autocast: the products in bfloat16), else in the model's dtype."""
        dtype = None if self.decoding_step is None else self.decoding_step.prefill_dtype
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
            return self.h(x, mask, cache)[:, -1].to(self._dtype)

    def _decode_steps(self, phones: list[Tensor], bert: list[Tensor], prompt: Tensor | None, top_k: int | None,
                      top_p: float | None, temperature: float, repetition_penalty: float, early_stop_num: int,
                      max_steps: int, generator: torch.Generator | None, seed: int | None
                      ) -> Iterator[tuple[int, Tensor, Tensor, list[tuple[int, Tensor]]]]:
        """The decoding loop of `generate_batch`, one yield per step: `(step, rows (B',), out (B', n_max),
        finished)`, where `rows` are the original indices of the rows still decoding before this step's drop,
        `out[:, :step + 1]` their tokens so far, and `finished` the `(row, tokens (1, n_i))` pairs that ended at
        this step (their results, EOS removed)."""
        for i, (p, b) in enumerate(zip(phones, bert)):
            self._check_text(p, b, f"phones[{i}]")
            if p.shape[0] != 1:
                raise GPTError(f"phones[{i}] must hold one sentence, shape (1, n_phones); got {tuple(p.shape)}")
        prompt = self._check_codes(prompt, 1)
        if max_steps < 1:
            raise GPTError(f"max_steps must be at least 1, got {max_steps}")
        if generator is None and seed is not None:
            generator = torch.Generator(device=self._device).manual_seed(seed)

        device, dtype, cfg = self._device, self._dtype, self.cfg
        n = len(phones)
        lens = [p.shape[1] for p in phones]
        lx, ty = max(lens), prompt.shape[1]
        n_max = max_steps if early_stop_num < 0 else min(max_steps, early_stop_num + 1)

        # prefill input (B, lx + ty, C), text left-padded so the prompt and the new tokens line up across rows
        ph = torch.zeros(n, lx, dtype=torch.long, device=device)
        be = torch.zeros(n, BERT_DIM, lx, dtype=dtype, device=device)
        for i, (p, b) in enumerate(zip(phones, bert)):
            ph[i, lx - lens[i]:] = p[0].to(device)
            be[i, :, lx - lens[i]:] = b[0].to(device, dtype)
        offsets = torch.tensor([lx - k for k in lens], device=device)
        text_pos = (torch.arange(lx, device=device)[None, :] - offsets[:, None]).clamp(min=0)
        x = torch.cat([self.text_input(ph, be, text_pos), self.audio_input(prompt.to(device).expand(n, -1))], dim=1)

        prefill_mask = inference_mask(lx, ty, device)  # (L, L)
        key_bias = None
        if any(k != lx for k in lens):  # mask the padding as keys; every row keeps a real text key
            real = torch.ones(n, lx + ty + n_max, dtype=torch.bool, device=device)
            real[:, :lx] = torch.arange(lx, device=device)[None, :] >= offsets[:, None]
            prefill_mask = (prefill_mask[None] & real[:, None, : lx + ty])[:, None]  # (B, 1, L, L)
            key_bias = torch.zeros(n, 1, real.shape[1], device=device).masked_fill(~real[:, None], float("-inf"))

        cache_dtype = torch.float32 if device.type == "cpu" else dtype  # see KVCache
        cache = KVCache(cfg, n, lx + ty + n_max, cache_dtype, device, key_bias)
        seen = torch.zeros(n, cfg.vocab_size, dtype=torch.bool, device=device)
        seen[:, prompt[0].to(device)] = True
        audio_pe = self.ar_audio_position.encoding(torch.arange(ty, ty + n_max, device=device))  # (n_max, C)

        rows = torch.arange(n, device=device)  # original index of each live row
        out = torch.empty(n, n_max, dtype=torch.long, device=device)
        token_step = self.h.step if self.decoding_step is None else self.decoding_step.bind(self)
        h = self.prefill(x, prefill_mask, cache)  # (B, C)
        for step in range(n_max):
            logits = self.ar_predict_layer(h).float()  # (B, V)
            if step < MIN_TOKENS_BEFORE_EOS:
                logits, seen_now = logits[:, :-1], seen[:, :-1]
            else:
                seen_now = seen
            token, best = sample_next(logits, seen_now, top_k=top_k, top_p=top_p, temperature=temperature,
                                      repetition_penalty=repetition_penalty, generator=generator)
            out[:, step] = token
            seen.scatter_(1, token[:, None], True)
            done = (token == cfg.eos) | (best == cfg.eos)
            if step + 1 == n_max:  # early_stop_num or the hard step limit
                done[:] = True
            finished: list[tuple[int, Tensor]] = []
            if bool(done.any()):  # hand finished rows back, drop them from the batch
                for j in done.nonzero()[:, 0].tolist():
                    by_eos = bool(token[j] == cfg.eos) or bool(best[j] == cfg.eos)
                    keep = step if by_eos else step + 1  # an EOS step's sample is never kept
                    finished.append((int(rows[j]), out[j, :keep].clone()[None]))
            yield step, rows, out, finished
            if finished:
                alive = (~done).nonzero()[:, 0]
                if len(alive) == 0:
                    break
                if len(alive) < len(rows):
                    rows, token, out, seen = rows[alive], token[alive], out[alive], seen[alive]
                    cache.keep_rows(alive)
            x = F.embedding(token, self.ar_audio_embedding.word_embeddings.weight) + audio_pe[step]  # (B, C)
            h = token_step(x, cache)  # (B, C)
