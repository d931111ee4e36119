"""`narrator finetune-gpt`: fine-tune the text-to-semantic GPT on a narrator's features.

Teacher-forced cross-entropy on the semantic tokens (the official stage-1 loss, summed), length-bucketed batches,
gradient accumulation, a warm-up then cosine learning-rate schedule, on the shared loop (components/training.py):
checkpoints every N steps, exact resume, MLflow. The result is exported as an official GPT `.ckpt`.

Mixed precision (training.precision), gradient checkpointing, and DistributedDataParallel under torchrun come from
the shared loop's helpers. Difference from the official recipe, on purpose for now: AdamW instead of ScaledAdam
(so the peak learning rate is AdamW-sized).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from components.features import load_entry, training_entries
from components.training import (Distributed, LoopSettings, Precision, TrainingError, auto_batch_size, finish,
                                 TrainingResult, length_buckets, mlflow_logger, record_export, run, run_summary,
                                 seed_everything)
from narrator.config import FinetuneGPTConfig, Params
from narrator.log import get_logger
from narrator.storage import fetch

log = get_logger("finetune_gpt")


@dataclass
class GPTExample:
    name: str
    phones: torch.Tensor  # (Lx,) int64
    bert: torch.Tensor  # (1024, Lx) float32
    semantic: torch.Tensor  # (Ty,) int64


def load_examples(features_dir: Path, max_codes: int) -> list[GPTExample]:
    manifest_file = features_dir / "manifest.json"
    if not manifest_file.exists():
        raise TrainingError(f"{manifest_file} not found; run `narrator features PREPARED_DIR --out {features_dir}`")
    manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    examples = []
    for entry in training_entries(manifest):
        tensors = load_entry(features_dir, entry)
        if tensors["semantic"].numel() == 0 or tensors["semantic"].numel() > max_codes:
            log.warning("skipping %s: %d semantic tokens (limit %d)", entry.name, tensors["semantic"].numel(), max_codes)
            continue
        examples.append(GPTExample(entry.name, torch.tensor(entry.ids, dtype=torch.long),
                                   tensors["bert"].float(), tensors["semantic"].long()))
    if not examples:
        raise TrainingError(f"no usable examples in {manifest_file}")
    return examples


def collate(examples: list[GPTExample]) -> dict[str, torch.Tensor]:
    """Right-padded batch: phones (B, Lx), bert (B, 1024, Lx), semantic (B, Ty) and their lengths (B,)."""
    lx = max(e.phones.numel() for e in examples)
    ty = max(e.semantic.numel() for e in examples)
    b = len(examples)
    phones = torch.zeros(b, lx, dtype=torch.long)
    bert = torch.zeros(b, examples[0].bert.shape[0], lx)
    semantic = torch.zeros(b, ty, dtype=torch.long)
    for i, e in enumerate(examples):
        phones[i, :e.phones.numel()] = e.phones
        bert[i, :, :e.phones.numel()] = e.bert
        semantic[i, :e.semantic.numel()] = e.semantic
    return {"phones": phones, "bert": bert, "semantic": semantic,
            "phone_lens": torch.tensor([e.phones.numel() for e in examples]),
            "semantic_lens": torch.tensor([e.semantic.numel() for e in examples])}


def warmup_cosine(step: int, cfg: FinetuneGPTConfig) -> float:
    """Learning-rate multiplier (of cfg.lr): linear warm-up from lr_init, cosine decay to lr_end."""
    if step < cfg.warmup_steps:
        return (cfg.lr_init + (cfg.lr - cfg.lr_init) * step / max(cfg.warmup_steps, 1)) / cfg.lr
    progress = min(1.0, (step - cfg.warmup_steps) / max(cfg.decay_steps, 1))
    return (cfg.lr_end + 0.5 * (cfg.lr - cfg.lr_end) * (1 + math.cos(math.pi * progress))) / cfg.lr


class _LossModule(torch.nn.Module):
    """The GPT with `training_loss` as its forward, so DistributedDataParallel sees (and syncs) the pass."""

    def __init__(self, gpt) -> None:
        super().__init__()
        self.gpt = gpt

    def forward(self, phones, bert, semantic, phone_lens, semantic_lens) -> torch.Tensor:
        return self.gpt.training_loss(phones, bert, semantic, phone_lens, semantic_lens)


class GPTTask:
    """The GPT fine-tuning task for the shared loop."""

    def __init__(self, gpt, examples: list[GPTExample], cfg: FinetuneGPTConfig, seed: int, device: torch.device,
                 batch_size: int | None = None, precision: Precision | None = None,
                 dist: Distributed | None = None) -> None:
        self.gpt, self.examples, self.cfg, self.seed, self.device = gpt.to(device).train(), examples, cfg, seed, device
        self.batch_size = batch_size or auto_batch_size(cfg.batch_size, device)
        self.precision = precision or Precision("fp32", device)
        self.loss = (dist or Distributed()).wrap(_LossModule(self.gpt), device)
        self.optimizer = torch.optim.AdamW(self.gpt.parameters(), lr=cfg.lr, betas=(0.9, 0.95),
                                           weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: warmup_cosine(s, cfg))
        self.micro = 0  # batches since the last optimizer step

    def batches(self, epoch: int) -> list[list[GPTExample]]:
        """Length-bucketed: sorted by token count, cut into batches, batch order shuffled per epoch."""
        return length_buckets(self.examples, lambda e: e.semantic.numel(), self.batch_size, self.seed, epoch)

    def train_step(self, batch: list[GPTExample]) -> dict[str, float]:
        data = {k: v.to(self.device) for k, v in collate(batch).items()}
        with self.precision.autocast():
            loss = self.loss(data["phones"], data["bert"], data["semantic"], data["phone_lens"],
                             data["semantic_lens"])
        tokens = float(data["semantic_lens"].sum() + len(batch))
        self.precision.backward(loss / self.cfg.accumulate_batches)
        self.micro += 1
        if self.micro >= self.cfg.accumulate_batches:
            self.precision.step(self.optimizer, self.gpt.parameters(), self.cfg.grad_clip)
            self.optimizer.zero_grad(set_to_none=True)
            self.precision.update()
            self.scheduler.step()
            self.micro = 0
        return {"loss_per_token": float(loss.detach()) / tokens, "lr": self.optimizer.param_groups[0]["lr"],
                "samples": float(len(batch)), "tokens": tokens}

    def end_epoch(self, epoch: int) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.gpt.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "precision": self.precision.state_dict(),
                "micro": self.micro}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gpt.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.precision.load_state_dict(state.get("precision", {}))
        self.micro = state["micro"]


def base_gpt(params: Params):
    """The starting model: the official base checkpoint from pretrained.gpt, or random weights of
    finetune_gpt.random_init sizes (tests and the demo)."""
    from models.checkpoints import load_gpt
    from models.gpt import GPT, GPTConfig

    cfg = params.finetune_gpt
    if cfg.random_init is not None:
        torch.manual_seed(params.training.seed)
        return GPT(GPTConfig(**cfg.random_init))
    if not params.pretrained.gpt:
        raise TrainingError("set pretrained.gpt in params.yaml to the official GPT base checkpoint (e.g. "
                            "s1bert25hz-5kh-longer-epoch=12-step=369668.ckpt), or finetune_gpt.random_init for a "
                            "small model from scratch")
    return load_gpt(fetch(params.pretrained.gpt, params.storage, "pretrained.gpt"))


def finetune_gpt(features_dir: str | Path, out_dir: str | Path, params: Params, stop_after_steps: int | None = None,
                 logger=None) -> TrainingResult:
    """Fine-tune the GPT on `features_dir` (the output of `narrator features`); resumable in `out_dir`.

    Returns the result (also written to out_dir/result.json) with the exported checkpoint and its sha256.
    """
    from models.checkpoints import save_gpt

    features_dir, out_dir = Path(features_dir), Path(out_dir)
    cfg, train = params.finetune_gpt, params.training
    dist = Distributed.from_environment()
    device = dist.device(train.device)
    seed_everything(train.seed)
    gpt = base_gpt(params)  # built (and a base file validated) before any training starts
    gpt.h.gradient_checkpointing = train.gradient_checkpointing
    examples = load_examples(features_dir, max_codes=50 * gpt.cfg.max_sec)
    dist.start(device)
    seed_everything(train.seed + dist.rank)
    precision = Precision(train.precision, device)
    batch_size = auto_batch_size(cfg.batch_size, device)
    task = GPTTask(gpt, examples, cfg, train.seed, device, batch_size, precision, dist)
    mlflow_run = None
    if logger is None and train.mlflow_tracking_uri and dist.is_main:
        logger, mlflow_run = mlflow_logger(
            train.mlflow_tracking_uri, train.mlflow_experiment, "finetune-gpt",
            {**cfg.model_dump(), "examples": len(examples), "device": str(device), "batch_size": batch_size,
             "precision": precision.name, "processes": dist.world_size})
    summary = None
    try:
        result = run(task, out_dir, LoopSettings(epochs=cfg.epochs, checkpoint_every_steps=train.checkpoint_every_steps,
                                                 keep_checkpoints=train.keep_checkpoints,
                                                 log_every_steps=train.log_every_steps,
                                                 stop_after_steps=stop_after_steps), logger, dist)
        dist.check_same_weights(task.gpt)
        summary = run_summary(result, examples=len(examples), batch_size=batch_size, precision=precision.name,
                              processes=dist.world_size)
        if not result.stopped_early and dist.is_main:
            exported = save_gpt(task.gpt.cpu().eval(), out_dir / "gpt.ckpt", info=f"GPT-e{cfg.epochs}")
            record_export(summary, exported, "gpt_sha256", mlflow_run)
        return summary
    finally:
        finish(out_dir, summary, mlflow_run, dist)
