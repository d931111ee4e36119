"""The training loop shared by `narrator finetune-gpt` and `narrator finetune-sovits`.

A task (GPT or SoVITS) says how to make its batches and how to take one training step; this loop owns what is
the same for both: epochs, deterministic batch order, checkpoints every N steps with model, optimizer, scheduler
and RNG state, resuming from the last checkpoint after a kill (ending with the same weights as an uninterrupted
run, exactly, on CPU), throughput, sample audio, MLflow logging, mixed precision and several processes.

    run_dir/checkpoints/step-00000050.pt   {"task": task.state_dict(), "step", "epoch", "batch", "rng"}
    run_dir/samples/step-00000100.wav      what the model says at that step (tasks that can synthesize)

Several GPUs: the same command under `torchrun --nproc_per_node N` runs one process per device; `Distributed`
reads torchrun's environment, each process takes every N-th batch of the epoch, tasks wrap their models in
DistributedDataParallel (gradients are averaged), and only rank 0 writes checkpoints, samples and logs.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from narrator.errors import NarratorError
from narrator.log import get_logger

log = get_logger("training")
_CHECKPOINT = re.compile(r"step-(\d{8})\.pt$")


class TrainingError(NarratorError):
    """Training cannot start or continue."""


class TrainTask(Protocol):
    def batches(self, epoch: int) -> list[Any]:
        """The epoch's batches, in an order that depends only on the seed and `epoch`."""

    def train_step(self, batch: Any) -> dict[str, float]:
        """Forward, backward and (when due) optimizer step for one batch; returns metrics to log."""

    def end_epoch(self, epoch: int) -> None:
        """Per-epoch bookkeeping (schedulers that step per epoch)."""

    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs: model(s), optimizer(s), scheduler(s), counters."""

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    # optional: `write_sample(path: Path) -> None` writes a short synthesized wav (logged every K steps)


@dataclass
class LoopSettings:
    epochs: int
    checkpoint_every_steps: int = 50
    keep_checkpoints: int = 2
    log_every_steps: int = 10
    stop_after_steps: int | None = None  # stop early (after a checkpoint) — for tests and time-boxed runs
    sample_every_steps: int = 0  # 0: never; else call task.write_sample every N steps (rank 0)


@dataclass
class LoopResult:
    steps: int
    epochs: int
    resumed_from_step: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False


# --------------------------------------------------------------------------------------------------------------
# mixed precision
# --------------------------------------------------------------------------------------------------------------


class Precision:
    """Autocast and loss scaling for one run: "fp32", "bf16" (autocast, no scaler) or "fp16" (autocast + a
    GradScaler). "auto" picks bf16 on a GPU that supports it, fp16 on an older GPU and fp32 on the CPU.

    Use: `with precision.autocast(): loss = ...`; `precision.backward(loss)`; for each optimizer
    `precision.step(optimizer, params, clip)`; then once per iteration `precision.update()`.
    """

    def __init__(self, name: str, device: torch.device) -> None:
        if name == "auto":
            if device.type == "cuda":
                name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
            else:
                name = "fp32"
        if name not in ("fp32", "bf16", "fp16"):
            raise TrainingError(f"training.precision must be auto, fp32, bf16 or fp16, got {name!r}")
        if name == "fp16" and device.type != "cuda":
            raise TrainingError("fp16 training needs a CUDA GPU (it relies on loss scaling); use bf16 or fp32 on CPU")
        self.name, self.device = name, device
        self.dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
        self.scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None)

    def backward(self, loss: torch.Tensor, inputs: list[torch.Tensor] | None = None) -> None:
        """Backward of `loss` (scaled for fp16); `inputs` restricts which tensors receive gradients."""
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward(inputs=inputs)

    def step(self, optimizer: torch.optim.Optimizer, params, clip: float | None) -> float:
        """Unscale, clip (when `clip`), step; returns the gradient norm before clipping."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        norm = torch.nn.utils.clip_grad_norm_(list(params), clip if clip is not None else float("inf"))
        if self.scaler is not None:
            self.scaler.step(optimizer)
        else:
            optimizer.step()
        return float(norm)

    def update(self) -> None:
        if self.scaler is not None:
            self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "scaler": self.scaler.state_dict() if self.scaler is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


# --------------------------------------------------------------------------------------------------------------
# several processes (torchrun)
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Distributed:
    """This process's place in a torchrun job (world_size 1 when run directly)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls) -> "Distributed":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        return cls(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))

    def device(self, preference: str) -> torch.device:
        """The device of this process: `preference` (auto/cpu/cuda[:N]); under torchrun, cuda:LOCAL_RANK."""
        from models.features import pick_device

        device = pick_device(preference)
        if self.enabled and device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        return device

    def start(self, device: torch.device) -> None:
        """Join the process group (gloo on CPU, nccl on GPUs); a no-op for one process."""
        import torch.distributed as dist

        if self.enabled and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    def wrap(self, module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """`module` inside DistributedDataParallel when several processes run, else unchanged."""
        if not self.enabled:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=False)

    def shard(self, batches: list[Any]) -> list[Any]:
        """This rank's batches: every world_size-th, the same count on every rank (a short tail is dropped)."""
        if not self.enabled:
            return batches
        if len(batches) < self.world_size:
            raise TrainingError(f"{len(batches)} batches per epoch cannot feed {self.world_size} processes; use a "
                                "smaller batch size or fewer processes")
        usable = len(batches) - len(batches) % self.world_size
        return batches[self.rank:usable:self.world_size]

    def check_same_weights(self, module: torch.nn.Module) -> None:
        """Raise if the processes ended with different weights (they must stay identical under DDP)."""
        if not self.enabled:
            return
        import torch.distributed as dist

        total = torch.stack([p.detach().double().sum() for p in module.parameters()]).sum().reshape(1)
        low, high = total.clone(), total.clone()
        dist.all_reduce(low, dist.ReduceOp.MIN)
        dist.all_reduce(high, dist.ReduceOp.MAX)
        if not torch.equal(low, high):
            raise TrainingError(f"the {self.world_size} processes ended with different weights ({float(low)} vs "
                                f"{float(high)}); this is a bug, please report it")

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def stop(self) -> None:
        import torch.distributed as dist

        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def auto_batch_size(requested: int | str, device: torch.device, cpu_default: int = 4) -> int:
    """`requested`, or for "auto" the official rule of one example per 2 GB of GPU memory (1..32), else
    `cpu_default` on the CPU."""
    if requested != "auto":
        return int(requested)
    if device.type == "cuda":
        total_gb = torch.cuda.get_device_properties(device).total_memory / 2 ** 30
        return int(max(1, min(32, total_gb // 2)))
    return cpu_default


def length_buckets(items: list[Any], length, batch_size: int, seed: int, epoch: int) -> list[list[Any]]:
    """Sort by `length(item)`, cut into batches of `batch_size` (similar lengths pad little), and shuffle the
    batch order with a generator seeded by (seed, epoch) — the same on every rank and after a resume."""
    ordered = sorted(items, key=lambda e: (length(e), getattr(e, "name", "")))
    chunks = [ordered[i:i + batch_size] for i in range(0, len(ordered), batch_size)]
    order = torch.randperm(len(chunks), generator=torch.Generator().manual_seed(seed * 1000 + epoch))
    return [chunks[i] for i in order.tolist()]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# Bound on a training checkpoint's size, uncompressed, from the task it resumes: the state the task holds before the
# first step (model(s), buffers) times 4, since the file adds at most AdamW's two moment buffers per parameter (3x in
# all), plus room for the RNG states, counters and the pickle itself. A file declaring more is refused unread.
STATE_SIZE_FACTOR = 4
STATE_SIZE_SLACK_BYTES = 64 << 20
_LOOP_ENTRIES = {"task": dict, "step": int, "epoch": int, "batch": int, "rng": dict}


def _tensor_bytes(obj: Any) -> int:
    """Bytes of all tensors in nested dicts / lists / tuples."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def load_checkpoint(checkpoint: Path, task: TrainTask) -> dict[str, Any]:
    """Restore `task` and the RNGs from `checkpoint` and return its loop counters (step, epoch, batch).

    The file goes through the same restricted unpickler as weight files (models.checkpoints.read_training_state):
    a pickle naming anything but tensors, plain containers and the optimizer / scheduler / RNG state is refused
    before it runs, and so is a file declaring more than the task's state could take. A file that is not a loop
    checkpoint, or one written for another model or other settings, is refused with what to delete."""
    from models.checkpoints import CheckpointError, read_training_state

    remedy = (f"delete {checkpoint.name} to resume from the checkpoint before it, or delete {checkpoint.parent} to "
              "start over")
    limit = STATE_SIZE_FACTOR * _tensor_bytes(task.state_dict()) + STATE_SIZE_SLACK_BYTES
    try:
        state = read_training_state(checkpoint, max_bytes=limit, remedy=remedy)
    except CheckpointError as error:
        raise TrainingError(str(error)) from None
    wrong = [key for key, kind in _LOOP_ENTRIES.items()
             if not isinstance(state, dict) or not isinstance(state.get(key), kind) or isinstance(state.get(key), bool)]
    if wrong or any(state[key] < 0 for key in ("step", "epoch", "batch")):
        raise TrainingError(f"{checkpoint} is not a training checkpoint written by this loop (missing or wrong "
                            f"entries: {', '.join(wrong) or 'negative counters'}); {remedy}")
    try:
        task.load_state_dict(state["task"])
        _set_rng_state(state["rng"])
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as error:
        detail = " ".join(str(error).split())[:300]
        raise TrainingError(f"{checkpoint} does not fit this run ({type(error).__name__}: {detail}): it was "
                            f"written for another model size or other settings; {remedy}") from None
    return {key: state[key] for key in ("step", "epoch", "batch")}


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = sorted(p for p in (run_dir / "checkpoints").glob("step-*.pt") if _CHECKPOINT.search(p.name))
    return found[-1] if found else None


def _save_checkpoint(run_dir: Path, task: TrainTask, step: int, epoch: int, batch: int, keep: int) -> Path:
    folder = run_dir / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{step:08d}.pt"
    tmp = path.with_suffix(".tmp")
    torch.save({"task": task.state_dict(), "step": step, "epoch": epoch, "batch": batch, "rng": _rng_state()}, tmp)
    os.replace(tmp, path)  # a kill during the write leaves the previous checkpoint intact
    for old in sorted(folder.glob("step-*.pt"))[:-keep]:
        old.unlink()
    return path


def run(task: TrainTask, run_dir: str | Path, settings: LoopSettings, logger=None,
        dist: Distributed | None = None) -> LoopResult:
    """Train `task` for `settings.epochs`, resuming from the newest checkpoint in `run_dir` if there is one.

    `logger(metrics: dict, step: int)` receives the logged metrics (MLflow in production, a list in tests); a
    `logger.log_artifact(path)` attribute, when present, receives the sample audio files.
    Under torchrun (`dist.enabled`) each process trains on its share of the batches; rank 0 writes.
    """
    dist = dist or Distributed()
    from tqdm import tqdm

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    step, start_epoch, start_batch, resumed = 0, 0, 0, 0
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, task)
        step, start_epoch, start_batch, resumed = state["step"], state["epoch"], state["batch"], state["step"]
        log.info("resuming from %s (step %d, epoch %d, batch %d)", checkpoint.name, step, start_epoch, start_batch)
    result = LoopResult(steps=step, epochs=settings.epochs, resumed_from_step=resumed, seconds=0.0)
    started = time.monotonic()
    window_start, window_steps = time.monotonic(), 0
    for epoch in range(start_epoch, settings.epochs):
        batches = dist.shard(task.batches(epoch))
        first = start_batch if epoch == start_epoch else 0
        for index in tqdm(range(first, len(batches)), desc=f"epoch {epoch + 1}/{settings.epochs}", unit="batch",
                          disable=None if dist.is_main else True, leave=False):
            metrics = task.train_step(batches[index])
            step += 1
            window_steps += 1
            if step % settings.log_every_steps == 0 or index == len(batches) - 1:
                elapsed = time.monotonic() - window_start
                metrics = dict(metrics, steps_per_s=window_steps / max(elapsed, 1e-9), epoch=epoch)
                window_start, window_steps = time.monotonic(), 0
                result.history.append(dict(metrics, step=step))
                if logger is not None and dist.is_main:
                    logger(metrics, step)
            if settings.sample_every_steps and step % settings.sample_every_steps == 0 and dist.is_main:
                _write_sample(task, run_dir, step, logger)
            next_epoch, next_batch = (epoch, index + 1) if index + 1 < len(batches) else (epoch + 1, 0)
            due = step % settings.checkpoint_every_steps == 0
            stop = settings.stop_after_steps is not None and step >= settings.stop_after_steps
            if next_batch == 0:
                task.end_epoch(epoch)
            if due or stop:
                if dist.is_main:
                    _save_checkpoint(run_dir, task, step, next_epoch, next_batch, settings.keep_checkpoints)
                dist.barrier()
            if stop:
                result.steps, result.stopped_early = step, True
                result.seconds = time.monotonic() - started
                return result
    if dist.is_main:
        _save_checkpoint(run_dir, task, step, settings.epochs, 0, settings.keep_checkpoints)
    dist.barrier()
    result.steps, result.seconds = step, time.monotonic() - started
    return result


def _write_sample(task: TrainTask, run_dir: Path, step: int, logger) -> None:
    write = getattr(task, "write_sample", None)
    if write is None:
        return
    path = run_dir / "samples" / f"step-{step:08d}.wav"
    path.parent.mkdir(parents=True, exist_ok=True)
    write(path)
    if logger is not None and hasattr(logger, "log_artifact"):
        logger.log_artifact(str(path))


def mlflow_logger(tracking_uri: str, experiment: str, run_name: str, params: dict[str, Any]):
    """Start an MLflow run and return (log_fn, run) — log_fn(metrics, step) logs numeric metrics."""
    import mlflow

    from narrator.tracking import use_experiment

    use_experiment(tracking_uri, experiment)
    active = mlflow.start_run(run_name=run_name)
    mlflow.log_params({k: str(v)[:500] for k, v in params.items()})

    def log_fn(metrics: dict[str, float], step: int) -> None:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)

    log_fn.log_artifact = lambda path: mlflow.log_artifact(path, "samples")  # type: ignore[attr-defined]
    return log_fn, active


@dataclass
class TrainingResult:
    """What a fine-tuning step returns and writes as result.json: the loop's counters, the run's setup, the logged
    history and (rank 0 of a finished run) the exported file with its sha256."""

    steps: int
    resumed_from_step: int
    stopped_early: bool
    seconds: float
    examples: int
    batch_size: int
    precision: str
    processes: int
    history: list[dict[str, float]]
    version: str | None = None  # the SoVITS version (v2, v2Pro, ...), for SoVITS runs
    checkpoint: str | None = None  # the exported official-format file
    sha256: str | None = None  # of `checkpoint`
    discriminator: str | None = None  # the SoVITS discriminator file, for SoVITS runs

    @property
    def exported(self) -> bool:
        return self.checkpoint is not None

    def to_dict(self) -> dict[str, Any]:
        """result.json's content (fields that do not apply are left out)."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def read(cls, run_dir: str | Path) -> "TrainingResult":
        """The result.json a fine-tuning step wrote into `run_dir`."""
        path = Path(run_dir) / "result.json"
        if not path.exists():
            raise TrainingError(f"{path} not found; run the fine-tuning step with --out {run_dir} first")
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def run_summary(result: LoopResult, *, examples: int, batch_size: int, precision: str, processes: int,
                version: str | None = None) -> TrainingResult:
    """The step's result from the loop's counters and the run's setup."""
    return TrainingResult(steps=result.steps, resumed_from_step=result.resumed_from_step,
                          stopped_early=result.stopped_early, seconds=round(result.seconds, 2), examples=examples,
                          batch_size=batch_size, precision=precision, processes=processes, history=result.history,
                          version=version)


def record_export(summary: TrainingResult, exported: Path, tag: str, mlflow_run) -> None:
    """Add the exported file and its sha256 to `summary`; with an MLflow run, log the file and tag the hash."""
    from narrator.storage import sha256_file

    summary.checkpoint, summary.sha256 = str(exported), sha256_file(exported)
    if mlflow_run is not None:
        import mlflow

        mlflow.log_artifact(str(exported))
        mlflow.set_tag(tag, summary.sha256)


def finish(out_dir: Path, summary: TrainingResult | None, mlflow_run, dist: Distributed) -> None:
    """Write result.json (rank 0), end the MLflow run, leave the process group. Safe to call after an error
    (summary None)."""
    try:
        if summary is not None and dist.is_main:
            (out_dir / "result.json").write_text(json.dumps(summary.to_dict(), indent=1), encoding="utf-8")
    finally:
        if mlflow_run is not None:
            import mlflow

            mlflow.end_run()
        dist.stop()
