"""The training loop shared by `narrator finetune-gpt` and `narrator finetune-sovits`.

A task (GPT or SoVITS) says how to make its batches and how to take one training step; this loop owns what is
the same for both: epochs, deterministic batch order, checkpoints every N steps with model, optimizer, scheduler
and RNG state, resuming from the last checkpoint after a kill (ending with the same weights as an uninterrupted
run, exactly, on CPU), throughput, and MLflow logging.

    run_dir/checkpoints/step-00000050.pt   {"task": task.state_dict(), "step", "epoch", "batch", "rng"}
"""

from __future__ import annotations

import os
import random
import re
import time
from dataclasses import dataclass, field
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


@dataclass
class LoopSettings:
    epochs: int
    checkpoint_every_steps: int = 50
    keep_checkpoints: int = 2
    log_every_steps: int = 10
    stop_after_steps: int | None = None  # stop early (after a checkpoint) — for tests and time-boxed runs


@dataclass
class LoopResult:
    steps: int
    epochs: int
    resumed_from_step: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False


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


def run(task: TrainTask, run_dir: str | Path, settings: LoopSettings, logger=None) -> LoopResult:
    """Train `task` for `settings.epochs`, resuming from the newest checkpoint in `run_dir` if there is one.

    `logger(metrics: dict, step: int)` receives the logged metrics (MLflow in production, a list in tests).
    """
    from tqdm import tqdm

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    step, start_epoch, start_batch, resumed = 0, 0, 0, 0
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is not None:
        try:
            state = torch.load(checkpoint, map_location="cpu", weights_only=False)  # our own file, written above
        except Exception as error:
            raise TrainingError(f"{checkpoint} cannot be read ({error}); delete it to resume from the one "
                                "before, or delete the run folder to start again") from None
        task.load_state_dict(state["task"])
        _set_rng_state(state["rng"])
        step, start_epoch, start_batch, resumed = state["step"], state["epoch"], state["batch"], state["step"]
        log.info("resuming from %s (step %d, epoch %d, batch %d)", checkpoint.name, step, start_epoch, start_batch)
    result = LoopResult(steps=step, epochs=settings.epochs, resumed_from_step=resumed, seconds=0.0)
    started = time.monotonic()
    window_start, window_steps = time.monotonic(), 0
    for epoch in range(start_epoch, settings.epochs):
        batches = task.batches(epoch)
        first = start_batch if epoch == start_epoch else 0
        for index in tqdm(range(first, len(batches)), desc=f"epoch {epoch + 1}/{settings.epochs}", unit="batch",
                          disable=None, leave=False):
            metrics = task.train_step(batches[index])
            step += 1
            window_steps += 1
            if step % settings.log_every_steps == 0 or index == len(batches) - 1:
                elapsed = time.monotonic() - window_start
                metrics = dict(metrics, steps_per_s=window_steps / max(elapsed, 1e-9), epoch=epoch)
                window_start, window_steps = time.monotonic(), 0
                result.history.append(dict(metrics, step=step))
                if logger is not None:
                    logger(metrics, step)
            next_epoch, next_batch = (epoch, index + 1) if index + 1 < len(batches) else (epoch + 1, 0)
            due = step % settings.checkpoint_every_steps == 0
            stop = settings.stop_after_steps is not None and step >= settings.stop_after_steps
            if next_batch == 0:
                task.end_epoch(epoch)
            if due or stop:
                _save_checkpoint(run_dir, task, step, next_epoch, next_batch, settings.keep_checkpoints)
            if stop:
                result.steps, result.stopped_early = step, True
                result.seconds = time.monotonic() - started
                return result
    _save_checkpoint(run_dir, task, step, settings.epochs, 0, settings.keep_checkpoints)
    result.steps, result.seconds = step, time.monotonic() - started
    return result


def mlflow_logger(tracking_uri: str, experiment: str, run_name: str, params: dict[str, Any]):
    """Start an MLflow run and return (log_fn, run) — log_fn(metrics, step) logs numeric metrics."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment)
    active = mlflow.start_run(run_name=run_name)
    mlflow.log_params({k: str(v)[:500] for k, v in params.items()})

    def log_fn(metrics: dict[str, float], step: int) -> None:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)

    return log_fn, active
