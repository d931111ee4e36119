"""`narrator finetune-gpt` on a tiny GPT: the loss falls, a killed run resumes to the same weights, the export
opens with our loader, a bad base checkpoint stops before training, MLflow gets the metrics."""

from __future__ import annotations

import json

import pytest
import torch

from components.finetune_gpt import finetune_gpt
from narrator.config import load_params

TINY = {"n_layer": 2, "n_head": 2, "n_embd": 32}


def _params(tmp_path, **finetune):
    settings = {"epochs": 12, "batch_size": 2, "accumulate_batches": 1, "lr": 3e-3, "lr_init": 1e-4, "lr_end": 1e-4,
                "warmup_steps": 2, "decay_steps": 100, "random_init": TINY, **finetune}
    return load_params(None, {"finetune_gpt": settings,
                              "training": {"device": "cpu", "checkpoint_every_steps": 5, "log_every_steps": 1,
                                           "mlflow_tracking_uri": None}})


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    """Six examples whose codes follow a learnable pattern (each code is the previous + 7 mod 1024)."""
    root = tmp_path_factory.mktemp("gptfeatures")
    entries = []
    g = torch.Generator().manual_seed(0)
    for i in range(6):
        n_phones, n_codes = 12 + i, 30 + 3 * i
        ids = torch.randint(0, 732, (n_phones,), generator=g)
        start = int(torch.randint(0, 1024, (1,), generator=g))
        semantic = (start + 7 * torch.arange(n_codes)) % 1024
        folder = root / "entries" / f"e{i}"
        folder.mkdir(parents=True)
        torch.save(torch.zeros(1024, n_phones, dtype=torch.float16), folder / "bert.pt")
        torch.save(torch.zeros(768, 2 * n_codes), folder / "hubert.pt")
        torch.save(semantic.long(), folder / "semantic.pt")
        torch.save(torch.zeros(1025, 2 * n_codes), folder / "spec.pt")
        entries.append({"name": f"e{i}", "text": "x", "language": "en", "phones": ["a"] * n_phones,
                        "ids": ids.tolist(), "word2ph": [1] * n_phones, "duration_s": n_codes / 25,
                        "wav_32k": "", "hubert_frames": 2 * n_codes, "semantic_frames": n_codes,
                        "spec_frames": 2 * n_codes, "has_sv": False})
    (root / "manifest.json").write_text(json.dumps({"version": 1, "sovits_version": "v2", "models": {},
                                                    "entries": entries}))
    return root


def test_loss_falls_over_a_few_dozen_steps(features, tmp_path):
    summary = finetune_gpt(features, tmp_path / "run", _params(tmp_path))
    losses = [h["loss_per_token"] for h in summary.history]
    assert summary.steps == 36 and len(losses) == 36
    assert sum(losses[-6:]) / 6 < 0.6 * sum(losses[:6]) / 6


def test_killed_run_resumes_to_the_same_weights(features, tmp_path):
    params = _params(tmp_path, epochs=4)
    finetune_gpt(features, tmp_path / "straight", params)
    stopped = finetune_gpt(features, tmp_path / "resumed", params, stop_after_steps=7)
    assert stopped.stopped_early and stopped.steps == 7
    resumed = finetune_gpt(features, tmp_path / "resumed", params)
    assert resumed.resumed_from_step == 7 and resumed.steps == 12
    a = torch.load(tmp_path / "straight" / "gpt.ckpt", weights_only=True)["weight"]
    b = torch.load(tmp_path / "resumed" / "gpt.ckpt", weights_only=True)["weight"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_export_opens_with_our_loader_and_generates(features, tmp_path):
    from models.checkpoints import load_gpt

    summary = finetune_gpt(features, tmp_path / "run", _params(tmp_path, epochs=2))
    gpt = load_gpt(summary.checkpoint)
    tokens = gpt.generate(torch.randint(0, 732, (1, 10)), torch.zeros(1, 1024, 10), torch.tensor([[5, 12]]),
                          top_k=1, early_stop_num=5)
    assert tokens.shape[0] == 1 and 1 <= tokens.shape[1] <= 6
    assert len(summary.sha256) == 64


def test_corrupt_base_checkpoint_fails_before_training(features, tmp_path):
    from models.checkpoints import CheckpointError

    bad = tmp_path / "base.ckpt"
    bad.write_bytes(b"PK\x03\x04 truncated")
    params = load_params(None, {"pretrained": {"gpt": str(bad)}, "training": {"mlflow_tracking_uri": None}})
    with pytest.raises(CheckpointError):
        finetune_gpt(features, tmp_path / "run", params)
    assert not (tmp_path / "run").exists()


def test_missing_base_checkpoint_names_the_setting(features, tmp_path):
    from components.training import TrainingError

    with pytest.raises(TrainingError, match="pretrained.gpt"):
        finetune_gpt(features, tmp_path / "run", load_params(None, {"training": {"mlflow_tracking_uri": None}}))


def test_metrics_and_export_are_logged_to_mlflow(features, tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = _params(tmp_path, epochs=1)
    params = load_params(None, {**params.model_dump(by_alias=True), "training": {
        **params.training.model_dump(), "mlflow_tracking_uri": uri}})
    finetune_gpt(features, tmp_path / "run", params)
    client = mlflow.MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("narrator").experiment_id])
    assert "loss_per_token" in run.data.metrics and run.data.params["epochs"] == "1"
    assert len(run.data.tags["gpt_sha256"]) == 64
