"""`narrator finetune-sovits`: fine-tune the SoVITS synthesizer (stage 2) on a narrator's features.

The official stage-2 recipe (ARCH.md section 5) on the shared loop (components/training.py):

- generator loss = L1(mel(y), mel(y_hat)) * c_mel + KL * c_kl + feature matching + LSGAN adversarial + commitment;
- the multi-period + scale discriminator (models/discriminators.py) trained with the LSGAN loss, from the
  official discriminator file (pretrained.sovits_discriminator);
- the SSL projection and the quantizer frozen (the codes the GPT learns stay the base model's);
- AdamW (betas 0.8/0.99, eps 1e-9) at lr, the text embedding, text encoder and MRTE at lr * text_lr_weight;
  ExponentialLR per epoch;
- mixed precision, gradient accumulation, length-bucketed batches, optional gradient checkpointing, checkpoints
  with exact resume, DistributedDataParallel under torchrun, sample audio and metrics to MLflow.

The result is exported as an official SoVITS `.pth` (models/checkpoints.save_sovits) plus the discriminator, so a
later retraining starts where this one ended.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from components.features import load_entry, training_entries
from components.training import (Distributed, LoopSettings, Precision, TrainingError, auto_batch_size, finish,
                                 TrainingResult, length_buckets, mlflow_logger, record_export, run, run_summary,
                                 seed_everything)
from narrator.config import FinetuneSoVITSConfig, Params
from narrator.log import get_logger
from narrator.storage import fetch

log = get_logger("finetune_sovits")

TEXT_PARTS = ("enc_p.text_embedding.", "enc_p.encoder_text.", "enc_p.mrte.")  # trained at lr * text_lr_weight
FROZEN_PARTS = ("ssl_proj.", "quantizer.")


@dataclass
class SoVITSExample:
    name: str
    ssl: torch.Tensor  # (768, T50) HuBERT features
    spec: torch.Tensor  # (1025, T) linear spectrogram, T = samples // hop
    phones: torch.Tensor  # (L,) int64
    wav_32k: str  # the prepared 32 kHz segment (the decoder's target)
    sv: torch.Tensor | None  # (20480,) for v2Pro / v2ProPlus

    @property
    def frames(self) -> int:
        return int(self.spec.shape[-1])


def load_examples(features_dir: Path, version: str, min_frames: int) -> list[SoVITSExample]:
    """The manifest's entries as training examples; refuses features made for another SoVITS version."""
    manifest_file = features_dir / "manifest.json"
    if not manifest_file.exists():
        raise TrainingError(f"{manifest_file} not found; run `narrator features PREPARED_DIR --out {features_dir}`")
    manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    made_for = manifest.get("sovits_version", "v2")
    pro = version in ("v2Pro", "v2ProPlus")
    if pro != (made_for in ("v2Pro", "v2ProPlus")):
        raise TrainingError(f"{features_dir} was made for a {made_for} base but the model is {version}; re-run "
                            "`narrator features` with the same pretrained.sovits")
    examples = []
    for entry in training_entries(manifest):
        if entry.spec_frames < min_frames:
            log.warning("skipping %s: %d frames, shorter than the %d-frame training segment", entry.name,
                        entry.spec_frames, min_frames)
            continue
        wav = Path(entry.wav_32k)
        if not wav.exists() and not wav.is_absolute():
            wav = features_dir / wav
        if not wav.exists():
            raise TrainingError(f"{entry.name}: its 32 kHz audio {wav} is missing; the features folder must stay "
                                "next to the prepared folder it was made from (or re-run `narrator features`)")
        tensors = load_entry(features_dir, entry)
        examples.append(SoVITSExample(entry.name, tensors["hubert"].float(), tensors["spec"].float(),
                                      torch.tensor(entry.ids, dtype=torch.long), str(wav),
                                      tensors["sv"].float() if pro else None))
    if not examples:
        raise TrainingError(f"no usable examples in {manifest_file}")
    return examples


def _read_wav(path: str, samples: int) -> torch.Tensor:
    """The first `samples` samples of a mono 32 kHz wav (zero-padded) as `(samples,)` float32."""
    import soundfile

    data, _ = soundfile.read(path, dtype="float32", always_2d=True, frames=samples)
    out = np.zeros(samples, dtype=np.float32)
    out[:len(data)] = data[:, 0]
    return torch.from_numpy(out)


def collate(examples: list[SoVITSExample], hop: int) -> dict[str, torch.Tensor]:
    """Right-padded batch: ssl (B, 768, T50), spec (B, 1025, T), spec_lengths (B,), phones (B, L),
    phone_lengths (B,), wav (B, 1, T * hop), and sv (B, 20480) when the examples have it."""
    b = len(examples)
    t = max(e.frames for e in examples)
    t50 = max(e.ssl.shape[-1] for e in examples)
    length = max(e.phones.numel() for e in examples)
    batch = {
        "ssl": torch.zeros(b, examples[0].ssl.shape[0], t50), "spec": torch.zeros(b, examples[0].spec.shape[0], t),
        "spec_lengths": torch.tensor([e.frames for e in examples]), "phones": torch.zeros(b, length, dtype=torch.long),
        "phone_lengths": torch.tensor([e.phones.numel() for e in examples]), "wav": torch.zeros(b, 1, t * hop),
    }
    for i, e in enumerate(examples):
        batch["ssl"][i, :, :e.ssl.shape[-1]] = e.ssl
        batch["spec"][i, :, :e.frames] = e.spec
        batch["phones"][i, :e.phones.numel()] = e.phones
        batch["wav"][i, 0, :e.frames * hop] = _read_wav(e.wav_32k, e.frames * hop)
    if examples[0].sv is not None:
        batch["sv"] = torch.stack([e.sv for e in examples])
    return batch


def parameter_groups(sovits: torch.nn.Module, cfg: FinetuneSoVITSConfig) -> list[dict[str, Any]]:
    """The official split: text parts at lr * text_lr_weight, the rest at lr; frozen parts left out."""
    text, rest = [], []
    for name, param in sovits.named_parameters():
        if name.startswith(FROZEN_PARTS):
            param.requires_grad_(False)
        elif name.startswith(TEXT_PARTS):
            text.append(param)
        else:
            rest.append(param)
    return [{"params": rest, "lr": cfg.lr, "initial_lr": cfg.lr},
            {"params": text, "lr": cfg.lr * cfg.text_lr_weight, "initial_lr": cfg.lr * cfg.text_lr_weight}]


class SoVITSTask:
    """The SoVITS fine-tuning task for the shared loop: one discriminator and one generator update per step."""

    def __init__(self, sovits, discriminator, examples: list[SoVITSExample], cfg: FinetuneSoVITSConfig,
                 batch_size: int, seed: int, device: torch.device, precision: Precision,
                 dist: Distributed | None = None) -> None:
        from models.audio import mel_filterbank

        self.dist = dist or Distributed()
        self.sovits, self.discriminator = sovits.to(device).train(), discriminator.to(device).train()
        self.examples, self.cfg, self.batch_size, self.seed, self.device = examples, cfg, batch_size, seed, device
        self.precision = precision
        self.hop = sovits.config.hop_length
        self.segment_frames = sovits.config.segment_size
        self.mel_basis = mel_filterbank(sovits.config.sampling_rate, device=device)
        self.optimizer_g = torch.optim.AdamW(parameter_groups(sovits, cfg), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
        self.optimizer_d = torch.optim.AdamW(discriminator.parameters(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
        self.scheduler_g = torch.optim.lr_scheduler.ExponentialLR(self.optimizer_g, cfg.lr_decay)
        self.scheduler_d = torch.optim.lr_scheduler.ExponentialLR(self.optimizer_d, cfg.lr_decay)
        self.generator = self.dist.wrap(self.sovits, device)
        self.disc = self.dist.wrap(self.discriminator, device)
        self.trainable = [p for p in sovits.parameters() if p.requires_grad]
        self.micro = 0

    def batches(self, epoch: int) -> list[list[SoVITSExample]]:
        return length_buckets(self.examples, lambda e: e.frames, self.batch_size, self.seed, epoch)

    def train_step(self, batch: list[SoVITSExample]) -> dict[str, float]:
        """One official stage-2 iteration: generator forward, discriminator update on the detached output, then
        the generator update against the updated discriminator (with accumulation, updates every N batches)."""
        from models.audio import mel_spectrogram, spec_to_mel
        from models.discriminators import discriminator_loss, feature_matching_loss, generator_adversarial_loss
        from models.sovits import kl_loss, slice_segments

        data = {k: v.to(self.device) for k, v in collate(batch, self.hop).items()}
        accumulate = self.cfg.accumulate_batches
        due = self.micro + 1 >= accumulate
        metrics: dict[str, float] = {}
        with self.precision.autocast():
            out = self.generator(data["ssl"], data["spec"], data["spec_lengths"], data["phones"],
                                 data["phone_lengths"], data.get("sv"))
        y_hat = out["y_hat"].float()
        y = slice_segments(data["wav"], out["ids_slice"] * self.hop, self.segment_frames * self.hop)

        with self.precision.autocast():
            real, fake, _, _ = self.disc(y, y_hat.detach())
        loss_d = discriminator_loss(real, fake)
        self.precision.backward(loss_d / accumulate)
        if due:
            metrics["grad_norm_d"] = self.precision.step(self.optimizer_d, self.discriminator.parameters(),
                                                         self.cfg.grad_clip)
            self.optimizer_d.zero_grad(set_to_none=True)

        mel = slice_segments(spec_to_mel(data["spec"], self.mel_basis), out["ids_slice"], self.segment_frames)
        mel_hat = mel_spectrogram(y_hat.squeeze(1), basis=self.mel_basis)
        with self.precision.autocast():  # the bare discriminator: its gradients here are not wanted (nor synced)
            _, fake, real_maps, fake_maps = self.discriminator(y, y_hat)
        losses = {
            "mel": F.l1_loss(mel_hat, mel) * self.cfg.c_mel,
            "kl": kl_loss(out["z_p"].float(), out["logs_q"].float(), out["m_p"].float(), out["logs_p"].float(),
                          out["z_mask"].float()) * self.cfg.c_kl,
            "feature_matching": feature_matching_loss(real_maps, fake_maps),
            "adversarial": generator_adversarial_loss(fake),
            "commit": out["commit_loss"].float(),
        }
        losses["generator"] = sum(losses.values())
        self.precision.backward(losses["generator"] / accumulate, inputs=self.trainable)
        self.micro += 1
        if due:
            metrics["grad_norm_g"] = self.precision.step(self.optimizer_g, self.trainable, self.cfg.grad_clip)
            self.optimizer_g.zero_grad(set_to_none=True)
            self.precision.update()
            self.micro = 0
        losses["discriminator"] = loss_d
        metrics.update({f"loss_{k}": float(v.detach()) for k, v in losses.items()})
        metrics["lr"] = self.optimizer_g.param_groups[0]["lr"]
        metrics["samples"] = float(len(batch))
        return metrics

    def end_epoch(self, epoch: int) -> None:
        self.scheduler_g.step()
        self.scheduler_d.step()

    @torch.no_grad()
    def write_sample(self, path: Path) -> None:
        """Resynthesize the first (shortest-named) example from its own codes and phones, with itself as the
        timbre reference, and write it as a 32 kHz wav."""
        from narrator.audiofile import write_wav

        example = min(self.examples, key=lambda e: e.name)
        model = self.sovits
        was_training = model.training
        model.eval()
        with torch.random.fork_rng(devices=[]):  # the sample's noise must not shift the training's random stream
            torch.manual_seed(0)
            codes = model.extract_latent(example.ssl[None].to(self.device))
            wav = model.decode(codes, example.phones[None].to(self.device), example.spec[None].to(self.device),
                               sv_emb=None if example.sv is None else example.sv[None].to(self.device),
                               noise_scale=0.5)
        model.train(was_training)
        write_wav(path, wav[0].float().cpu().numpy(), model.config.sampling_rate)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.sovits.state_dict(), "discriminator": self.discriminator.state_dict(),
                "optimizer_g": self.optimizer_g.state_dict(), "optimizer_d": self.optimizer_d.state_dict(),
                "scheduler_g": self.scheduler_g.state_dict(), "scheduler_d": self.scheduler_d.state_dict(),
                "precision": self.precision.state_dict(), "micro": self.micro}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sovits.load_state_dict(state["generator"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.optimizer_g.load_state_dict(state["optimizer_g"])
        self.optimizer_d.load_state_dict(state["optimizer_d"])
        self.scheduler_g.load_state_dict(state["scheduler_g"])
        self.scheduler_d.load_state_dict(state["scheduler_d"])
        self.precision.load_state_dict(state["precision"])
        self.micro = state["micro"]


def base_models(params: Params):
    """(generator, discriminator) to start from: the official base files named in params.yaml, or random
    weights of finetune_sovits.random_init sizes. Every file is read and checked before training starts."""
    from models.checkpoints import load_sovits
    from models.discriminators import DiscriminatorConfig, MultiPeriodDiscriminator, load_discriminator
    from models.sovits import SoVITS, SoVITSConfig

    cfg, pretrained = params.finetune_sovits, params.pretrained
    if cfg.random_init is not None:
        torch.manual_seed(params.training.seed)
        sovits = SoVITS(SoVITSConfig(**cfg.random_init))
        layout = DiscriminatorConfig.for_version(sovits.version, cfg.random_init_discriminator_divisor)
        return sovits, MultiPeriodDiscriminator(layout)
    if not pretrained.sovits:
        raise TrainingError("set pretrained.sovits in params.yaml to the official SoVITS base (e.g. "
                            "gsv-v2final-pretrained/s2G2333k.pth), or finetune_sovits.random_init for a small model "
                            "from scratch")
    sovits = load_sovits(fetch(pretrained.sovits, params.storage, "pretrained.sovits")).float()
    if not sovits.has_posterior:
        log.warning("%s has no posterior encoder (enc_q): it is an exported voice, not a base model; enc_q starts "
                    "from random weights. Fine-tune from the official s2G file for the official results",
                    pretrained.sovits)
    if not pretrained.sovits_discriminator:
        log.warning("pretrained.sovits_discriminator is not set: the discriminator starts from random weights "
                    "(set it to s2D2333k.pth / s2Dv2Pro.pth for the official recipe)")
        return sovits, MultiPeriodDiscriminator(DiscriminatorConfig.for_version(sovits.version))
    discriminator = load_discriminator(fetch(pretrained.sovits_discriminator, params.storage,
                                             "pretrained.sovits_discriminator"))
    expected = DiscriminatorConfig.for_version(sovits.version).periods
    if tuple(discriminator.config.periods) != tuple(expected):
        raise TrainingError(f"{pretrained.sovits_discriminator} is a discriminator with periods "
                            f"{tuple(discriminator.config.periods)} but the {sovits.version} generator trains with "
                            f"{tuple(expected)}; use the discriminator file of the same version")
    return sovits, discriminator.float()


def finetune_sovits(features_dir: str | Path, out_dir: str | Path, params: Params,
                    stop_after_steps: int | None = None, logger=None) -> TrainingResult:
    """Fine-tune SoVITS on `features_dir` (the output of `narrator features`); resumable in `out_dir`.

    Returns the result (also written to out_dir/result.json) with the exported `sovits.pth` and its sha256.
    Under torchrun, every process runs this function; rank 0 writes the files.
    """
    from models.checkpoints import save_sovits

    features_dir, out_dir = Path(features_dir), Path(out_dir)
    cfg, train = params.finetune_sovits, params.training
    dist = Distributed.from_environment()
    device = dist.device(train.device)
    seed_everything(train.seed)
    sovits, discriminator = base_models(params)  # built (and base files validated) before any training starts
    sovits.gradient_checkpointing = train.gradient_checkpointing
    examples = load_examples(features_dir, sovits.version, sovits.config.segment_size)
    dist.start(device)
    seed_everything(train.seed + dist.rank)  # each process its own dropout and segment draws
    precision = Precision(train.precision, device)
    batch_size = auto_batch_size(cfg.batch_size, device)
    task = SoVITSTask(sovits, discriminator, examples, cfg, batch_size, train.seed, device, precision, dist)
    mlflow_run = None
    if logger is None and train.mlflow_tracking_uri and dist.is_main:
        logger, mlflow_run = mlflow_logger(
            train.mlflow_tracking_uri, train.mlflow_experiment, "finetune-sovits",
            {**cfg.model_dump(), "examples": len(examples), "device": str(device), "batch_size": batch_size,
             "precision": precision.name, "processes": dist.world_size, "version": sovits.version})
    summary = None
    try:
        result = run(task, out_dir, LoopSettings(
            epochs=cfg.epochs, checkpoint_every_steps=train.checkpoint_every_steps,
            keep_checkpoints=train.keep_checkpoints, log_every_steps=train.log_every_steps,
            stop_after_steps=stop_after_steps, sample_every_steps=train.sample_every_steps), logger, dist)
        dist.check_same_weights(task.sovits)
        summary = run_summary(result, examples=len(examples), batch_size=batch_size, precision=precision.name,
                              processes=dist.world_size, version=sovits.version)
        if not result.stopped_early and dist.is_main:
            exported = save_sovits(task.sovits.cpu().eval(), out_dir / "sovits.pth",
                                   info=f"{cfg.epochs}epoch_{result.steps}iteration")
            disc_file = out_dir / "sovits_discriminator.pth"
            torch.save({"model": task.discriminator.cpu().state_dict()}, disc_file)
            record_export(summary, exported, "sovits_sha256", mlflow_run)
            summary.discriminator = str(disc_file)
        return summary
    finally:
        finish(out_dir, summary, mlflow_run, dist)
