"""`narrator finetune-sovits` on a tiny SoVITS and espeak-ng speech: the losses fall, a stopped run resumes to the
same weights, the export opens with our loader and speaks, bad base files stop before training, MLflow gets the
metrics and the sample audio, and the official-format base files are the starting point when configured."""

from __future__ import annotations

import json

import pytest
import torch

from components.finetune_sovits import finetune_sovits
from components.training import TrainingError
from narrator.config import load_params
from tests.conftest import torch_threads
from tests.tiny_training import TINY_SOVITS, make_features

SAMPLE_EVERY_STEPS = 10
TRAINING = {"device": "cpu", "checkpoint_every_steps": 4, "log_every_steps": 1, "mlflow_tracking_uri": None,
            "sample_every_steps": 0}


def _params(training=None, pretrained=None, **finetune):
    settings = {"epochs": 2, "batch_size": 2, "lr": 2e-3, "random_init": TINY_SOVITS,
                "random_init_discriminator_divisor": 16, **finetune}
    return load_params(None, {"finetune_sovits": settings, "training": {**TRAINING, **(training or {})},
                              "pretrained": pretrained or {}})


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    return make_features(tmp_path_factory.mktemp("sovitsfeatures"), clips=4)


@pytest.fixture(autouse=True)
def _two_threads():
    with torch_threads(2):
        yield


@pytest.fixture(scope="module")
def trained(features, tmp_path_factory):
    """One fine-tuning run shared by the tests that only read its outcome: 15 epochs (30 steps) from the seeded
    random init, logging to MLflow with a sample every 10 steps. (result, run folder, tracking URI)"""
    root = tmp_path_factory.mktemp("sovits-trained")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with torch_threads(2):
        result = finetune_sovits(features, root / "run", _params(epochs=15, training={
            "mlflow_tracking_uri": uri, "sample_every_steps": SAMPLE_EVERY_STEPS}))
    return result, root / "run", uri


def test_mel_loss_falls_over_a_few_dozen_steps(trained):
    summary, _, _ = trained
    mel = [h["loss_mel"] for h in summary.history]
    assert summary.steps == 30 and len(mel) == 30
    assert sum(mel[-6:]) / 6 < 0.8 * sum(mel[:6]) / 6
    assert all(torch.isfinite(torch.tensor(h["loss_discriminator"])) for h in summary.history)


def test_stopped_run_resumes_to_the_same_weights(features, tmp_path):
    from models.checkpoints import _read_container

    params = _params(epochs=3)
    finetune_sovits(features, tmp_path / "straight", params)
    stopped = finetune_sovits(features, tmp_path / "resumed", params, stop_after_steps=3)
    assert stopped.stopped_early and stopped.steps == 3
    resumed = finetune_sovits(features, tmp_path / "resumed", params)
    assert resumed.resumed_from_step == 3 and resumed.steps == 6
    for name in ("sovits.pth", "sovits_discriminator.pth"):
        a, _ = _read_container(tmp_path / "straight" / name, name)
        b, _ = _read_container(tmp_path / "resumed" / name, name)
        a, b = a.get("weight", a.get("model")), b.get("weight", b.get("model"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_export_opens_with_our_loader_and_synthesizes(features, trained):
    from components.features import FeatureEntry, load_entry
    from models.checkpoints import load_sovits
    from narrator.storage import sha256_file

    summary, _, _ = trained
    assert summary.sha256 == sha256_file(summary.checkpoint)
    sovits = load_sovits(summary.checkpoint).float().eval()
    assert sovits.info == f"15epoch_{summary.steps}iteration"
    entry = FeatureEntry(**json.loads((features / "manifest.json").read_text())["entries"][0])
    tensors = load_entry(features, entry)
    codes = sovits.extract_latent(tensors["hubert"][None])
    wav = sovits.decode(codes, torch.tensor([entry.ids]), tensors["spec"][None])
    assert wav.shape == (1, 1, codes.shape[-1] * 1280) and torch.isfinite(wav).all()


def test_frozen_quantizer_and_projection_do_not_move(trained):
    from models.checkpoints import load_sovits
    from models.sovits import SoVITS, SoVITSConfig

    summary, _, _ = trained
    torch.manual_seed(1234)  # the seed random_init uses
    start = SoVITS(SoVITSConfig(**TINY_SOVITS)).half().float().state_dict()
    end = load_sovits(summary.checkpoint).float().state_dict()
    frozen = [k for k in start if k.startswith(("ssl_proj.", "quantizer."))]
    assert frozen and all(torch.equal(start[k], end[k]) for k in frozen)
    assert not torch.equal(start["dec.conv_pre.weight"], end["dec.conv_pre.weight"])


def test_text_parts_learn_at_the_lower_rate(features, tmp_path):
    from components.finetune_sovits import parameter_groups
    from models.sovits import SoVITS, SoVITSConfig

    groups = parameter_groups(SoVITS(SoVITSConfig(**TINY_SOVITS)), _params(lr=1e-4).finetune_sovits)
    assert groups[0]["lr"] == pytest.approx(1e-4) and groups[1]["lr"] == pytest.approx(0.4e-4)
    assert len(groups[1]["params"]) > 0


def test_bf16_autocast_trains_on_cpu(features, tmp_path):
    summary = finetune_sovits(features, tmp_path / "run", _params(epochs=1, training={"precision": "bf16"}))
    assert summary.precision == "bf16"
    assert all(torch.isfinite(torch.tensor(h["loss_generator"])) for h in summary.history)


def test_fp16_on_cpu_is_refused_with_advice(features, tmp_path):
    with pytest.raises(TrainingError, match="bf16 or fp32"):
        finetune_sovits(features, tmp_path / "run", _params(training={"precision": "fp16"}))


def test_gradient_checkpointing_and_accumulation_run(features, tmp_path):
    summary = finetune_sovits(features, tmp_path / "run", _params(
        epochs=1, accumulate_batches=2, training={"gradient_checkpointing": True}))
    assert summary.steps == 2 and "grad_norm_g" in summary.history[-1]


def test_official_format_base_files_are_the_starting_point(features, tmp_path, gsv_dir):
    from models.discriminators import DiscriminatorConfig, MultiPeriodDiscriminator

    discriminator = tmp_path / "s2D.pth"
    torch.save({"model": MultiPeriodDiscriminator(DiscriminatorConfig.v2(channel_divisor=16)).state_dict()},
               discriminator)
    params = _params(epochs=1, random_init=None,
                     pretrained={"sovits": str(gsv_dir / "golden_A_s2_v2.pth"),
                                 "sovits_discriminator": str(discriminator)})
    summary = finetune_sovits(features, tmp_path / "run", params)
    assert summary.version == "v2" and summary.steps == 2


def test_corrupt_base_checkpoint_fails_before_training(features, tmp_path):
    from models.checkpoints import CheckpointError

    bad = tmp_path / "s2G.pth"
    bad.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError):
        finetune_sovits(features, tmp_path / "run", _params(random_init=None, pretrained={"sovits": str(bad)}))
    assert not (tmp_path / "run").exists()


def test_discriminator_of_another_version_is_refused_before_training(features, tmp_path, gsv_dir):
    from models.discriminators import DiscriminatorConfig, MultiPeriodDiscriminator

    pro = tmp_path / "s2Dv2Pro.pth"
    torch.save({"model": MultiPeriodDiscriminator(DiscriminatorConfig.v2pro(channel_divisor=16)).state_dict()}, pro)
    params = _params(random_init=None, pretrained={"sovits": str(gsv_dir / "golden_A_s2_v2.pth"),
                                                   "sovits_discriminator": str(pro)})
    with pytest.raises(TrainingError, match="same version"):
        finetune_sovits(features, tmp_path / "run", params)
    assert not (tmp_path / "run").exists()


def test_missing_base_checkpoint_names_the_setting(features, tmp_path):
    with pytest.raises(TrainingError, match="pretrained.sovits"):
        finetune_sovits(features, tmp_path / "run", _params(random_init=None))


def test_features_of_a_pro_base_are_refused_for_a_v2_model(features, tmp_path):
    import shutil

    copy = tmp_path / "features"
    shutil.copytree(features, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "sovits_version": "v2Pro"}))
    with pytest.raises(TrainingError, match="re-run `narrator features`"):
        finetune_sovits(copy, tmp_path / "run", _params())


def test_metrics_and_sample_audio_are_logged_to_mlflow(trained):
    import mlflow

    summary, run_dir, uri = trained
    every = SAMPLE_EVERY_STEPS
    samples = [f"samples/step-{step:08d}.wav" for step in range(every, summary.steps + 1, every)]
    assert all((run_dir / sample).exists() for sample in samples)
    client = mlflow.MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("narrator").experiment_id])
    assert {"loss_mel", "loss_kl", "loss_feature_matching", "loss_adversarial", "loss_discriminator", "lr",
            "steps_per_s"} <= set(run.data.metrics)
    assert len(run.data.tags["sovits_sha256"]) == 64
    assert [a.path for a in client.list_artifacts(run.info.run_id, "samples")] == samples


def test_cli_fine_tunes_and_prints_the_export(features, tmp_path, capsys):
    from cli.main import main

    code = main(["finetune-sovits", str(features), "--out", str(tmp_path / "run"),
                 "--set", "finetune_sovits.epochs=1", "--set", "finetune_sovits.batch_size=2",
                 "--set", f"finetune_sovits.random_init={json.dumps(TINY_SOVITS)}",
                 "--set", "finetune_sovits.random_init_discriminator_divisor=16",
                 "--set", "training.device=cpu", "--set", "training.mlflow_tracking_uri=null"])
    assert code == 0
    assert "SoVITS fine-tuned: 2 steps" in capsys.readouterr().out
    assert (tmp_path / "run" / "sovits.pth").exists()


def test_held_out_segments_are_not_trained_on(features, tmp_path):
    import shutil

    copy = tmp_path / "features"
    shutil.copytree(features, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["entries"][0]["split"] = "holdout"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    summary = finetune_sovits(copy, tmp_path / "run", _params(epochs=1, batch_size=1))
    assert summary.examples == 3 and summary.steps == 3
