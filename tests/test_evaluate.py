"""`narrator evaluate` on a tiny voice (random tiny SoVITS + GPT, a tiny HuBERT) and espeak-ng narrator data: every
metric is measured and reported, the gates decide the verdict with readable reasons, a missing ASR model fails a
required WER gate (not_measured) and is a warning where the gate is not required, and the CLI exits 0 on pass and
2 on fail."""

from __future__ import annotations

import json

import numpy as np

import pytest
import torch

from components.evaluate import EVAL_SENTENCES, evaluate
from narrator.config import load_params
from tests.tiny_training import TINY_GPT, TINY_SOVITS, make_features


@pytest.fixture(scope="module")
def voice(tmp_path_factory):
    """(features_dir, sovits.pth, gpt.ckpt, hubert_dir): five 3-6 s segments, the last one held out."""
    from transformers import HubertConfig, HubertModel

    from models.checkpoints import save_gpt, save_sovits
    from models.gpt import GPT, GPTConfig
    from models.sovits import SoVITS, SoVITSConfig

    root = tmp_path_factory.mktemp("evalvoice")
    features = make_features(root / "features", clips=5, max_s=6.0, speed_wpm=140)
    manifest = json.loads((features / "manifest.json").read_text())
    manifest["entries"][-1]["split"] = "holdout"
    (features / "manifest.json").write_text(json.dumps(manifest))
    torch.manual_seed(0)
    sovits = save_sovits(SoVITS(SoVITSConfig(**TINY_SOVITS)), root / "sovits.pth")
    gpt = save_gpt(GPT(GPTConfig(**TINY_GPT)), root / "gpt.ckpt")
    HubertModel(HubertConfig(hidden_size=768, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                             conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
                ).save_pretrained(root / "hubert")
    return features, str(sovits), str(gpt), str(root / "hubert")


def _only(**gates):
    """These gates, every default gate disabled (params.yaml's gates merge with overrides)."""
    from narrator.config import EvaluateConfig

    return {**{name: None for name in EvaluateConfig().gates}, **gates}


def _params(voice, **evaluate_settings):
    settings = {"device": "cpu", "sentences_per_language": 1, **evaluate_settings}
    settings["gates"] = _only(**settings.get("gates", {}))
    return load_params(None, {"pretrained": {"hubert_dir": voice[3]}, "evaluate": settings,
                              "training": {"mlflow_tracking_uri": None}})


@pytest.fixture(scope="module")
def report(voice, tmp_path_factory):
    out = tmp_path_factory.mktemp("evalout")
    params = _params(voice, gates={"rtf": 1000.0, "speaker_similarity": 0.99, "wer": 0.1})
    return evaluate(voice[0], voice[1], voice[2], out, params), out


def test_every_metric_is_measured_on_holdout_and_sentences(report):
    result, _ = report
    assert [u.kind for u in result.utterances] == ["holdout", "sentence"]
    assert result.utterances[1].text == EVAL_SENTENCES["en"][0]
    for name in ("speaker_similarity", "mcd_db", "duration_outliers_share", "rtf", "first_audio_s",
                 "watermark_detected_share"):
        assert result.metrics[name] is not None, name
    assert -1.0 <= result.metrics["speaker_similarity"] <= 1.0 and result.metrics["mcd_db"] > 0


def test_a_failed_gate_fails_the_verdict_with_its_reason(report):
    result, out = report
    assert result.verdict["passed"] is False
    assert any(r.startswith("speaker_similarity") and "0.99" in r for r in result.verdict["reasons"])
    assert json.loads((out / "verdict.json").read_text())["passed"] is False


def test_without_an_asr_model_a_required_wer_gate_fails_as_not_measured_naming_the_setting(report):
    result, _ = report
    assert result.metrics["wer"] is None and any("ASR" in w for w in result.warnings)
    (wer,) = [c for c in result.verdict["checked"] if c["metric"] == "wer"]
    assert (wer["status"], wer["reason"], wer["required"]) == ("fail", "not_measured", True)
    (line,) = [r for r in result.verdict["reasons"] if r.startswith("wer ")]
    assert "not measured" in line and "evaluate.asr_model_dir" in line and "required: false" in line


def test_without_an_asr_model_a_wer_gate_not_required_is_skipped_and_reported(voice, tmp_path):
    result = evaluate(voice[0], voice[1], voice[2], tmp_path, _params(
        voice, gates={"rtf": 1000.0, "wer": {"threshold": 0.1, "required": False}}, sentences_per_language=0))
    assert result.verdict["passed"] is True
    (wer,) = [c for c in result.verdict["checked"] if c["metric"] == "wer"]
    assert (wer["status"], wer["reason"]) == ("skipped", "not_measured")
    assert any(r.startswith("wer skipped: not measured (not required") for r in result.verdict["reasons"])
    assert "skipped (not_measured)" in (tmp_path / "report.html").read_text()


def test_a_required_cer_gate_is_skipped_as_not_applicable_when_nothing_chinese_was_spoken(voice, tmp_path):
    result = evaluate(voice[0], voice[1], voice[2], tmp_path, _params(
        voice, gates={"rtf": 1000.0, "cer": 0.1}, sentences_per_language=0))
    assert result.verdict["passed"] is True
    (cer,) = [c for c in result.verdict["checked"] if c["metric"] == "cer"]
    assert (cer["status"], cer["reason"], cer["required"]) == ("skipped", "not_applicable", True)


def test_report_html_shows_gates_pairs_and_players(report):
    _, out = report
    page = (out / "report.html").read_text()
    assert "Metrics against the gates" in page and "<audio controls" in page and "data:image/png" in page
    assert "fail (not_measured)" in page and "&lt;= 0.100, required" in page
    assert (out / "samples" / "sentence-00.wav").exists()


def test_the_json_report_records_each_gate_status_and_reason(report):
    _, out = report
    checked = {c["metric"]: c for c in json.loads((out / "report.json").read_text())["verdict"]["checked"]}
    assert checked["wer"]["status"] == "fail" and checked["wer"]["reason"] == "not_measured"
    assert checked["rtf"]["status"] == "pass" and "reason" not in checked["rtf"]


def test_met_gates_pass(voice, tmp_path):
    result = evaluate(voice[0], voice[1], voice[2], tmp_path, _params(
        voice, gates={"rtf": 1000.0}, sentences_per_language=0))
    assert result.verdict["passed"] is True and result.verdict["reasons"] == []


def test_with_asr_the_words_are_checked(voice, tmp_path):
    from tests.tiny_whisper import build_tiny_whisper

    asr = build_tiny_whisper(tmp_path / "whisper")
    result = evaluate(voice[0], voice[1], voice[2], tmp_path / "out", _params(
        voice, asr_model_dir=str(asr), sentences_per_language=0, gates={"wer": 0.1}))
    assert result.metrics["wer"] is not None and result.utterances[0].asr_text is not None


def test_cli_exit_status_follows_the_verdict(voice, tmp_path, capsys):
    from cli.main import main

    common = ["evaluate", str(voice[0]), "--sovits", voice[1], "--gpt", voice[2], "--set", "evaluate.device=cpu",
              "--set", f"pretrained.hubert_dir={voice[3]}", "--set", "evaluate.sentences_per_language=0",
              "--set", "training.mlflow_tracking_uri=null"]
    gates = ", ".join(f"{name}: null" for name in _only())
    assert main(common + ["--out", str(tmp_path / "a"), "--set", f"evaluate.gates={{{gates}, rtf: 1000}}"]) == 0
    assert main(common + ["--out", str(tmp_path / "b"), "--set", f"evaluate.gates={{{gates}, rtf: 0.000001}}"]) == 2
    assert "rtf" in capsys.readouterr().err


def test_metrics_and_verdict_go_to_mlflow(voice, tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = load_params(None, {"pretrained": {"hubert_dir": voice[3]}, "training": {"mlflow_tracking_uri": uri},
                                "evaluate": {"device": "cpu", "sentences_per_language": 0, "gates": _only(rtf=1000)}})
    evaluate(voice[0], voice[1], voice[2], tmp_path / "out", params)
    client = mlflow.MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("narrator").experiment_id])
    assert {"speaker_similarity", "mcd_db", "rtf"} <= set(run.data.metrics) and run.data.tags["verdict"] == "passed"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"report.html", "verdict.json"}



def test_short_outputs_are_checked_for_the_watermark_within_the_joined_outputs():
    from components.evaluate import Utterance, _mark_and_check, _watermark_share

    rng = np.random.default_rng(0)
    key = bytes(range(32))
    utterances, marked = [], []
    for i, seconds in enumerate((1.5, 2.0, 1.8, 4.0)):
        u = Utterance("sentence", f"s{i}", "text", "en", seconds, 10, 0.1, 0.1)
        samples = (0.1 * rng.standard_normal(int(seconds * 32000))).astype(np.float32)
        marked.append(_mark_and_check(u, samples, 32000, key))
        utterances.append(u)
    assert [u.watermark_detected for u in utterances] == [None, None, None, True]
    assert _watermark_share(utterances, marked, key) == 1.0
    unmarked = [(rng.standard_normal(len(m)).astype(np.float32) * 0.1, sr) for m, sr in marked]
    assert _watermark_share(utterances, unmarked, key) == 0.5  # the joined check fails, the 4 s one stands
