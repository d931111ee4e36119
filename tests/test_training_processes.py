"""The fine-tuning commands as real processes: two gloo processes under torchrun train one model in step
(DistributedDataParallel), and a run killed with SIGKILL resumes from its last checkpoint to the same weights as a
run that was never interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO_ROOT
from tests.tiny_training import TINY_GPT, TINY_SOVITS, make_features

CPU = ["--set", "training.device=cpu", "--set", "training.mlflow_tracking_uri=null"]
SOVITS = ["--set", f"finetune_sovits.random_init={json.dumps(TINY_SOVITS)}",
          "--set", "finetune_sovits.random_init_discriminator_divisor=16", "--set", "finetune_sovits.batch_size=1"]
GPT = ["--set", f"finetune_gpt.random_init={json.dumps(TINY_GPT)}", "--set", "finetune_gpt.batch_size=1",
       "--set", "finetune_gpt.accumulate_batches=1"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"}


def _narrator(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli", *args]


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "cli", *args]


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    return make_features(tmp_path_factory.mktemp("procfeatures"), clips=4)


@pytest.mark.parametrize("command,extra,result", [
    ("finetune-sovits", SOVITS + ["--set", "finetune_sovits.epochs=2"], "sovits.pth"),
    ("finetune-gpt", GPT + ["--set", "finetune_gpt.epochs=2"], "gpt.ckpt"),
])
def test_two_gloo_processes_train_one_model_in_step(features, tmp_path, command, extra, result):
    done = subprocess.run(_torchrun(command, str(features), "--out", str(tmp_path / "run"), *extra, *CPU),
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "result.json").read_text())
    # 4 examples, batch 1, 2 processes: 2 steps per epoch each; the ranks' weights are checked equal at the end
    assert summary["processes"] == 2 and summary["steps"] == 4
    assert (tmp_path / "run" / result).exists()


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from models.checkpoints import _read_container

    obj, _ = _read_container(path, "export")
    return obj["weight"]


def test_sigkilled_run_resumes_to_the_same_weights(features, tmp_path):
    args = [str(features), *GPT, "--set", "finetune_gpt.epochs=40", "--set", "training.checkpoint_every_steps=2",
            *CPU]
    straight = subprocess.run(_narrator("finetune-gpt", "--out", str(tmp_path / "straight"), *args), env=_env(),
                              capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr[-3000:]

    run_dir = tmp_path / "killed"
    victim = subprocess.Popen(_narrator("finetune-gpt", "--out", str(run_dir), *args), env=_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list((run_dir / "checkpoints").glob("step-0000000[4-9].pt")) and time.monotonic() < deadline:
        if victim.poll() is not None:
            pytest.fail("the run ended before it could be killed; make it longer")
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (run_dir / "gpt.ckpt").exists()

    resumed = subprocess.run(_narrator("finetune-gpt", "--out", str(run_dir), *args), env=_env(),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((run_dir / "result.json").read_text())
    assert summary["resumed_from_step"] >= 4 and summary["steps"] == 160
    a, b = _weights(tmp_path / "straight" / "gpt.ckpt"), _weights(run_dir / "gpt.ckpt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
