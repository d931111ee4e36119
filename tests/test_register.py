"""`narrator register`/`approve`/`lineage`: a voice becomes a model version in a sqlite MLflow registry with its
whole lineage as tags; the champion alias moves only to a version that passed its gates and beats the champion
(or on approval under the manual policy); every move is in a hash-chained audit log; each (voice, version) has a
stable 32-bit watermark payload.

The step outputs are tiny stand-ins written with the steps' own report types, so their JSON has the real format.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from components.register import RegistryError, approve, dataset_tags, lineage, params_yaml, register
from components.watermark import WatermarkCheck
from narrator.audit import AuditError
from narrator.audit import verify as verify_audit_log
from narrator.config import load_params
from narrator.registry import format_payload, lookup_payload, payload_for
from narrator.storage import sha256_file

EXPERIMENT = "narrator-test"
CONSENT_HASH = "sha256:" + "c0" * 32
GATES = {"speaker_similarity": 0.75, "wer": 0.10}


@dataclass(frozen=True)
class Steps:
    """The folders the pipeline steps wrote for one narrator, plus the registry they log to."""

    root: Path
    uri: str
    validated: Path
    prepared: Path
    features: Path
    sovits: Path
    gpt: Path
    base_gpt: Path  # a stand-in official GPT checkpoint (pretrained.gpt)
    finetune_run_ids: dict[str, str]  # tag -> the fake fine-tuning run that carries it


def _validated(out: Path) -> None:
    from components.validate import ValidationReport
    from narrator.config import ValidateConfig

    consent = {"speaker": "Alice Example", "organisation": "Acme Audio", "date": "2025-01-15",
               "scope": "audiobook narration", "file": "consent.yaml", "recording_path": "consent.wav",
               "duration_s": 6.2, "speaker_similarity": 0.91}
    report = ValidationReport(source="recordings/alice", out_dir=str(out), verdict="accepted", dataset_reasons=[],
                              messages=[], totals={"clips": 2, "accepted": 2, "warning": 0, "rejected": 0},
                              consent=consent, consent_hash=CONSENT_HASH, clips=[],
                              thresholds=ValidateConfig().model_dump(mode="json"), created_at="2025-01-16T10:00:00Z",
                              elapsed_s=1.0)
    out.mkdir(parents=True)
    (out / "report.json").write_text(report.to_json(), encoding="utf-8")


def _prepared(out: Path) -> None:
    from components.prepare import PreparedSegment, PrepareReport
    from narrator.audiofile import write_wav

    segments = []
    for index, (text, split) in enumerate([("Hello there.", "train"), ("Good night.", "holdout")]):
        name = f"clip{index:02d}_000"
        tone = np.sin(np.arange(3200) * (index + 1) * 0.05).astype(np.float32) * 0.1
        wav32 = write_wav(out / "wav32k" / f"{name}.wav", tone, 32000)
        wav16 = write_wav(out / "wav16k" / f"{name}.wav", tone[::2], 16000)
        segments.append(PreparedSegment(name=name, source=f"clip{index:02d}.wav", start_s=0.0, end_s=0.1,
                                        duration_s=2.5, text=text, language="en", wav_32k=str(wav32),
                                        wav_16k=str(wav16), split=split))
    report = PrepareReport(validated_dir="validated", out_dir=str(out), segments=segments, total_duration_s=5.0,
                           settings_hash="0123456789ab")
    (out / "prepare.json").write_text(report.to_json(), encoding="utf-8")


def _features(out: Path) -> None:
    from components.features import FeaturesManifest

    out.mkdir(parents=True)
    (out / "manifest.json").write_text(FeaturesManifest(version=1, sovits_version="v2", models={}).to_json())
    (out / "voice.json").write_text(json.dumps({"model": "resemblyzer-ge2e-256", "segments": 2,
                                                "embedding": [0.0625] * 256}), encoding="utf-8")


def _finetuned(out: Path, file_name: str, tag: str):
    from components.training import LoopResult, record_export, run_summary

    out.mkdir(parents=True)
    exported = out / file_name
    exported.write_bytes(f"weights of {file_name}".encode())
    summary = run_summary(LoopResult(steps=8, epochs=1, resumed_from_step=0, seconds=3.0), examples=2, batch_size=1,
                          precision="fp32", processes=1)
    record_export(summary, exported, tag, None)
    (out / "result.json").write_text(json.dumps(summary.to_dict(), indent=1), encoding="utf-8")
    return summary


def evaluation(root: Path, name: str, speaker_similarity: float) -> Path:
    """An evaluation folder as `narrator evaluate` writes it, gated by GATES."""
    from components.evaluate import EvaluationReport
    from narrator.metrics import Gate, evaluate_gates

    metrics = {"speaker_similarity": speaker_similarity, "wer": 0.04, "cer": None, "mcd_db": 6.1,
               "f0_rmse_cents": 120.0, "f0_correlation": 0.8, "duration_outliers_share": 0.0, "rtf": 0.3,
               "first_audio_s": 0.2, "watermark_detected_share": None}
    verdict = evaluate_gates(metrics, [Gate(m, ">=" if m == "speaker_similarity" else "<=", t)
                                       for m, t in GATES.items()])
    report = EvaluationReport(voice={"sovits": "sovits.pth", "gpt": "gpt.ckpt", "speaker_model": "ge2e",
                                     "asr_model": ""}, reference="clip00_000", metrics=metrics,
                              verdict={"passed": verdict.passed, "reasons": list(verdict.reasons),
                                       "checked": list(verdict.checked)},
                              utterances=[], warnings=[], seconds=1.0)
    out = root / name
    out.mkdir(parents=True)
    (out / "report.json").write_text(report.to_json(), encoding="utf-8")
    (out / "verdict.json").write_text(json.dumps(report.verdict, indent=1), encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def steps(tmp_path_factory) -> Steps:
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("register")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    _validated(root / "validated")
    _prepared(root / "prepared")
    _features(root / "features")
    sovits = _finetuned(root / "sovits", "sovits.pth", "sovits_sha256")
    gpt = _finetuned(root / "gpt", "gpt.ckpt", "gpt_sha256")
    base_gpt = root / "base-gpt.ckpt"
    base_gpt.write_bytes(b"the official GPT")
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment(EXPERIMENT, artifact_location=(root / "artifacts").as_uri())
    run_ids = {}
    for tag, summary, run_name in (("sovits_sha256", sovits, "finetune-sovits"), ("gpt_sha256", gpt, "finetune-gpt")):
        run_ids[tag] = client.create_run(experiment, run_name=run_name, tags={tag: summary.sha256}).info.run_id
    return Steps(root, uri, root / "validated", root / "prepared", root / "features", root / "sovits", root / "gpt",
                 base_gpt, run_ids)


def make_params(steps: Steps, tmp_path: Path, pretrained: dict | None = None, **registry):
    """Params logging to the test registry, with an audit log per test and these registry settings."""
    return load_params(None, {"registry": {"tracking_uri": steps.uri, "audit_log": str(tmp_path / "audit.jsonl"),
                                           **registry},
                              "training": {"mlflow_tracking_uri": steps.uri, "mlflow_experiment": EXPERIMENT},
                              "pretrained": pretrained or {}})


# what `narrator watermark check` found for the voice
PASSED_CHECK = WatermarkCheck(payload="4e415252", speech_s=10.4, sample_rate_hz=32000, excerpt_3s_detected=True,
                              excerpt_3s_score=9.1, detected=True, payload_read="4e415252", score=14.2, passed=True)


def watermark_folder(root: Path, check: WatermarkCheck = PASSED_CHECK) -> Path:
    """A watermark check folder as `narrator watermark check` writes it."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "watermark.json").write_text(check.to_json(), encoding="utf-8")
    return root


def register_voice(voice: str, steps: Steps, evaluation_dir: Path, params, watermark: WatermarkCheck = PASSED_CHECK):
    return register(voice, validated_dir=steps.validated, prepared_dir=steps.prepared, features_dir=steps.features,
                    sovits_dir=steps.sovits, gpt_dir=steps.gpt, evaluation_dir=evaluation_dir, watermark=watermark,
                    params=params)


def _client(steps: Steps):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=steps.uri, registry_uri=steps.uri)


def _audit(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]


def test_registration_records_every_lineage_tag(steps, tmp_path):
    params = make_params(steps, tmp_path, pretrained={"gpt": str(steps.base_gpt)})
    done = register_voice("lineage-tags", steps, evaluation(tmp_path, "eval", 0.86), params)

    mv = _client(steps).get_model_version("narrator-lineage-tags", str(done.version))
    tags = mv.tags
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=Path(__file__).parent).stdout.strip()
    assert tags["consent_hash"] == CONSENT_HASH and tags["consent_speaker"] == "Alice Example"
    assert tags["dataset_hash"] == dataset_tags(steps.prepared)["dataset_hash"]
    assert tags["dataset_hash"].startswith("sha256:") and tags["dataset_segments"] == "2"
    assert tags["git_commit"] == (head or "unknown")
    assert tags["params_sha256"] == hashlib.sha256(params_yaml(params).encode()).hexdigest()
    assert tags["base_gpt_sha256"] == sha256_file(steps.base_gpt)
    assert tags["base_sovits_sha256"] == "random-init"
    assert tags["sovits_sha256"] == sha256_file(steps.sovits / "sovits.pth")
    assert tags["gpt_sha256"] == sha256_file(steps.gpt / "gpt.ckpt")
    assert tags["sovits_run_id"] == steps.finetune_run_ids["sovits_sha256"]
    assert tags["gpt_run_id"] == steps.finetune_run_ids["gpt_sha256"]
    assert float(tags["metric.speaker_similarity"]) == 0.86 and float(tags["metric.mcd_db"]) == 6.1
    assert "metric.cer" not in tags  # not measured
    assert tags["verdict"] == "pass" and tags["failed_gates"] == ""
    assert tags["watermark_check"] == "passed (score 14.2)"
    assert tags["payload_hex"] == done.payload_hex and len(done.payload_hex) == 8
    assert mv.run_id == done.run_id and mv.source == _client(steps).get_run(done.run_id).info.artifact_uri
    logged = {a.path for folder in ("model", "evaluation") for a in _client(steps).list_artifacts(done.run_id, folder)}
    assert logged == {"model/sovits.pth", "model/gpt.ckpt", "model/voice.json", "evaluation/verdict.json",
                      "evaluation/report.json"}
    assert {"params.yaml", "lineage.json"} <= {a.path for a in _client(steps).list_artifacts(done.run_id)}


def test_first_passing_version_becomes_champion(steps, tmp_path):
    done = register_voice("first", steps, evaluation(tmp_path, "eval", 0.80), make_params(steps, tmp_path))

    assert (done.version, done.promoted, done.pending_approval) == (1, True, False)
    assert done.aliases == ["challenger", "champion"]
    assert [r["event"] for r in _audit(tmp_path)] == ["registered", "promoted"]
    assert _client(steps).get_model_version("narrator-first", "1").tags["promoted_by"] == "policy:auto"


def test_registering_the_same_files_and_evaluation_again_returns_that_version(steps, tmp_path):
    params = make_params(steps, tmp_path)
    ev = evaluation(tmp_path, "eval", 0.80)
    first = register_voice("again", steps, ev, params)
    second = register_voice("again", steps, ev, params)  # a pipeline re-run after a later step failed

    assert second.version == first.version == 1 and "already registered" in second.reason
    assert [r["event"] for r in _audit(tmp_path)] == ["registered", "promoted"]


def test_failing_version_stays_challenger_only(steps, tmp_path):
    done = register_voice("failing", steps, evaluation(tmp_path, "eval", 0.60), make_params(steps, tmp_path))

    assert done.aliases == ["challenger"] and not done.promoted and not done.pending_approval
    assert "speaker_similarity 0.6 < 0.75" in done.reason
    assert _client(steps).get_model_version("narrator-failing", "1").tags["verdict"] == "fail"
    assert [r["event"] for r in _audit(tmp_path)] == ["registered"]


def test_better_challenger_is_promoted_and_worse_one_is_not(steps, tmp_path):
    params = make_params(steps, tmp_path)
    register_voice("contest", steps, evaluation(tmp_path, "v1", 0.80), params)

    better = register_voice("contest", steps, evaluation(tmp_path, "v2", 0.85), params)
    worse = register_voice("contest", steps, evaluation(tmp_path, "v3", 0.83), params)

    assert better.promoted and better.aliases == ["challenger", "champion"]  # at the time it was registered
    assert not worse.promoted and worse.aliases == ["challenger"]
    assert "speaker_similarity 0.83 vs champion v2 0.85" in worse.reason
    aliases = _client(steps).get_registered_model("narrator-contest").aliases
    assert {alias: int(version) for alias, version in aliases.items()} == {"champion": 2, "challenger": 3}


def test_champion_readers_name_the_promoted_version_and_skip_voices_without_one(steps, tmp_path):
    from narrator.registry import champion, champions

    params = make_params(steps, tmp_path, tenant="acme")
    register_voice("served", steps, evaluation(tmp_path, "v1", 0.80), params)
    register_voice("served", steps, evaluation(tmp_path, "v2", 0.70), params)  # fails its gate: stays challenger
    register_voice("unserved", steps, evaluation(tmp_path, "v3", 0.60), params)

    best = champion("served", params)
    assert (best.voice, best.model_name, best.version, best.tenant) == ("served", "narrator-served", 1, "acme")
    assert best.tags["verdict"] == "pass" and best.tags["payload_hex"] == format_payload(payload_for('served', 1, params))
    assert champion("unserved", params) is None
    assert "served" in {c.voice for c in champions(params)} and "unserved" not in {c.voice for c in champions(params)}
    with pytest.raises(RegistryError, match="no voice 'nobody'"):
        champion("nobody", params)


def test_improvement_below_min_improvement_is_not_promoted(steps, tmp_path):
    params = make_params(steps, tmp_path, min_improvement=0.05)
    register_voice("margin", steps, evaluation(tmp_path, "v1", 0.80), params)

    done = register_voice("margin", steps, evaluation(tmp_path, "v2", 0.82), params)

    assert not done.promoted and "at least 0.05" in done.reason


def test_manual_policy_waits_and_approve_promotes_with_an_audit_record(steps, tmp_path):
    params = make_params(steps, tmp_path, deployment_policy="manual")
    waiting = register_voice("manual", steps, evaluation(tmp_path, "eval", 0.86), params)
    assert waiting.pending_approval and not waiting.promoted and waiting.aliases == ["challenger"]

    approved = approve("manual", waiting.version, "Dana Reviewer", params)

    assert approved.promoted and approved.aliases == ["challenger", "champion"]
    last = _audit(tmp_path)[-1]
    assert (last["event"], last["by"], last["version"]) == ("approved", "Dana Reviewer", 1) and last["time"]
    tags = _client(steps).get_model_version("narrator-manual", "1").tags
    assert (tags["promoted_by"], tags["approved_by"], tags["pending_approval"]) == ("Dana Reviewer",) * 2 + ("false",)


def test_approving_a_failed_version_is_refused(steps, tmp_path):
    params = make_params(steps, tmp_path, deployment_policy="manual")
    register_voice("refused", steps, evaluation(tmp_path, "eval", 0.60), params)

    with pytest.raises(RegistryError, match="failed its evaluation gates.*cannot be approved"):
        approve("refused", 1, "Dana Reviewer", params)
    with pytest.raises(RegistryError, match="has no version 7; its versions are 1"):
        approve("refused", 7, "Dana Reviewer", params)
    with pytest.raises(RegistryError, match="no voice 'nobody'"):
        approve("nobody", 1, "Dana Reviewer", params)


def test_payload_round_trips_and_each_voice_has_its_own_id(steps, tmp_path):
    params = make_params(steps, tmp_path)
    one = register_voice("payload-one", steps, evaluation(tmp_path, "a", 0.80), params)
    two = register_voice("payload-two", steps, evaluation(tmp_path, "b", 0.80), params)

    payload = payload_for("payload-two", two.version, params)

    assert f"{payload:08x}" == two.payload_hex
    assert lookup_payload(payload, params) == ("payload-two", two.version)
    assert lookup_payload(payload_for("payload-one", 1, params), params) == ("payload-one", 1)
    assert one.payload_hex[:4] != two.payload_hex[:4]  # the 16-bit voice ids differ
    assert lookup_payload(payload + 100, params) is None  # no such version


def test_lineage_text_names_the_whole_chain(steps, tmp_path):
    params = make_params(steps, tmp_path)
    done = register_voice("traced", steps, evaluation(tmp_path, "eval", 0.86), params)

    found = lineage("traced", None, params)
    text = found.to_text()

    commit = _client(steps).get_model_version("narrator-traced", "1").tags["git_commit"]
    for expected in (CONSENT_HASH, "Alice Example", "Acme Audio", dataset_tags(steps.prepared)["dataset_hash"],
                     f"git {commit}", "speaker_similarity 0.86", "PASS", "champion", "challenger",
                     steps.finetune_run_ids["sovits_sha256"], done.payload_hex, "promoted by policy:auto",
                     f"lineage sha256 {done.lineage_sha256}", "not packaged yet"):
        assert expected in text
    assert json.loads(found.to_json())["evaluation"]["metrics"]["speaker_similarity"] == 0.86
    assert [r["event"] for r in found.audit] == ["registered", "promoted"] and found.audit_problem is None


def test_audit_log_tampering_is_detected(steps, tmp_path):
    params = make_params(steps, tmp_path, deployment_policy="manual")
    register_voice("audited", steps, evaluation(tmp_path, "eval", 0.86), params)
    approve("audited", 1, "Dana Reviewer", params)
    log_file = tmp_path / "audit.jsonl"
    verify_audit_log(log_file)  # intact
    lines = log_file.read_text().splitlines()

    log_file.write_text("\n".join([lines[0].replace("pending_approval\": true", "pending_approval\": false"),
                                   *lines[1:]]) + "\n")
    with pytest.raises(AuditError, match="line 1 was edited"):
        verify_audit_log(log_file)
    assert "line 1 was edited" in lineage("audited", 1, params).audit_problem


def test_cli_registers_approves_and_prints_lineage(steps, tmp_path, capsys, monkeypatch):
    from cli.main import main

    monkeypatch.chdir(tmp_path)  # no params.yaml here: the defaults and these settings
    settings = ["--set", f"registry.tracking_uri={steps.uri}", "--set", f"training.mlflow_tracking_uri={steps.uri}",
                "--set", f"training.mlflow_experiment={EXPERIMENT}", "--set", "registry.deployment_policy=manual",
                "--set", f"registry.audit_log={tmp_path / 'audit.jsonl'}"]
    folders = ["--validated", str(steps.validated), "--prepared", str(steps.prepared), "--features",
               str(steps.features), "--sovits", str(steps.sovits), "--gpt", str(steps.gpt),
               "--evaluation", str(evaluation(tmp_path, "eval", 0.86)),
               "--watermark", str(watermark_folder(tmp_path / "watermark"))]
    assert main(["register", "cli-voice", *folders, "--tag", "source_fingerprint=abc123", "--out",
                 str(tmp_path / "registration.json"), *settings]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["pending_approval"] is True and printed == json.loads((tmp_path / "registration.json").read_text())
    assert _client(steps).get_model_version("narrator-cli-voice", "1").tags["source_fingerprint"] == "abc123"

    assert main(["approve", "cli-voice", "1", "--by", "Dana Reviewer", *settings]) == 0
    assert "approved by Dana Reviewer" in capsys.readouterr().out

    assert main(["lineage", "cli-voice@1", *settings]) == 0
    text = capsys.readouterr().out
    assert CONSENT_HASH in text and "champion" in text and "approved by Dana Reviewer" in text
    assert main(["lineage", "cli-voice", "--json", *settings]) == 0
    assert json.loads(capsys.readouterr().out)["registry"]["approved_by"] == "Dana Reviewer"


_REGISTER_IN_A_CHILD = """
import json, sys
from components.register import register
from components.watermark import WatermarkCheck
from narrator.config import load_params
job = json.loads(sys.argv[1])
done = register(job["voice"], params=load_params(None, job["settings"]), watermark=WatermarkCheck(**job["watermark"]),
                **job["folders"])
print(done.version)
"""


def _waits_for_a_lock(pid: int) -> bool:
    """Whether process `pid` is blocked on a file lock (Linux /proc/locks lists waiters after "->")."""
    return any(line.split()[1] == "->" and line.split()[5] == str(pid)
               for line in Path("/proc/locks").read_text().splitlines() if len(line.split()) > 5)


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs Linux /proc/locks to see a waiting process")
def test_a_registration_waits_while_another_holds_the_registry(steps, tmp_path):
    import sys
    import time

    from narrator.registry import registry_lock_path, registry_locked

    params = make_params(steps, tmp_path)
    settings = {"registry": {"tracking_uri": steps.uri, "audit_log": str(tmp_path / "audit.jsonl")},
                "training": {"mlflow_tracking_uri": steps.uri, "mlflow_experiment": EXPERIMENT}}
    folders = {"validated_dir": str(steps.validated), "prepared_dir": str(steps.prepared),
               "features_dir": str(steps.features), "sovits_dir": str(steps.sovits), "gpt_dir": str(steps.gpt),
               "evaluation_dir": str(evaluation(tmp_path, "eval", 0.80))}
    job = json.dumps({"voice": "queued", "settings": settings, "folders": folders,
                      "watermark": json.loads(PASSED_CHECK.to_json())})
    assert registry_lock_path(params) == steps.root / "mlflow.lock"  # beside the sqlite database
    with registry_locked(params):
        child = subprocess.Popen([sys.executable, "-c", _REGISTER_IN_A_CHILD, job], stdout=subprocess.PIPE,
                                 text=True, cwd=Path(__file__).parents[1])
        deadline = time.monotonic() + 90
        while not _waits_for_a_lock(child.pid) and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _waits_for_a_lock(child.pid), "the child registration should be queued on the registry lock"
        assert "narrator-queued" not in {m.name for m in _client(steps).search_registered_models()}
    out, _ = child.communicate(timeout=120)
    assert child.returncode == 0 and out.strip().splitlines()[-1] == "1"
    assert [r["event"] for r in _audit(tmp_path)] == ["registered", "promoted"]


def test_a_voice_whose_watermark_check_failed_is_never_registered(steps, tmp_path):
    failed = WatermarkCheck(payload="4e415252", speech_s=10.4, sample_rate_hz=32000, excerpt_3s_detected=False,
                            excerpt_3s_score=1.2, detected=False, payload_read=None, score=1.9, passed=False)
    with pytest.raises(RegistryError, match="watermark check failed"):
        register_voice("unmarked", steps, evaluation(tmp_path, "eval", 0.86), make_params(steps, tmp_path), failed)
    assert "narrator-unmarked" not in {m.name for m in _client(steps).search_registered_models()}


def test_lineage_params_hash_covers_the_voices_settings_not_the_registrys(steps, tmp_path):
    base = make_params(steps, tmp_path)
    other_registry = load_params(None, {**base.model_dump(by_alias=True, mode="json"),
                                        "registry": {"tracking_uri": steps.uri, "min_improvement": 0.5}})
    other_training = load_params(None, {**base.model_dump(by_alias=True, mode="json"),
                                        "finetune_gpt": {"epochs": 3}})
    assert params_yaml(other_registry) == params_yaml(base)
    assert params_yaml(other_training) != params_yaml(base)


def test_a_voice_belongs_to_the_tenant_it_was_first_registered_for(steps, tmp_path):

    ev = evaluation(tmp_path, "eval", 0.80)
    register_voice("owned", steps, ev, make_params(steps, tmp_path, tenant="acme"))
    assert _client(steps).get_registered_model("narrator-owned").tags["tenant"] == "acme"
    with pytest.raises(RegistryError, match="belongs to tenant 'acme'"):
        register_voice("owned", steps, evaluation(tmp_path, "eval2", 0.9), make_params(steps, tmp_path, tenant="zeta"))


# -- the lineage as registered, and its verification -------------------------------------------------------------


def _problems(voice: str, params) -> list[str]:
    from components.register import verify_lineage

    return verify_lineage(voice, None, params).problems


def test_the_lineage_document_is_an_artifact_whose_sha256_tags_the_version_and_the_audit_log(steps, tmp_path):
    from components.register import canonical_lineage

    params = make_params(steps, tmp_path, tenant="acme")
    done = register_voice("documented", steps, evaluation(tmp_path, "eval", 0.86), params)

    client = _client(steps)
    data = Path(client.download_artifacts(done.run_id, "lineage.json", str(tmp_path))).read_bytes()
    document = json.loads(data)
    mv = client.get_model_version("narrator-documented", "1")
    assert hashlib.sha256(data).hexdigest() == done.lineage_sha256 == mv.tags["lineage_sha256"]
    assert data == canonical_lineage(document)
    assert (document["model"], document["version"], document["register_run_id"], document["tenant"]) == (
        "narrator-documented", 1, done.run_id, "acme")
    for key in ("consent_hash", "dataset_hash", "base_gpt_sha256", "sovits_sha256", "sovits_run_id", "gpt_run_id",
                "metric.speaker_similarity", "verdict", "params_sha256", "git_commit", "payload_hex"):
        assert document["tags"][key] == mv.tags[key], key
    assert _audit(tmp_path)[0]["lineage_sha256"] == done.lineage_sha256


def test_registering_the_same_outputs_again_keeps_the_registered_lineage_digest(steps, tmp_path):
    params = make_params(steps, tmp_path)
    ev = evaluation(tmp_path, "eval", 0.80)
    first = register_voice("same-lineage", steps, ev, params)
    second = register_voice("same-lineage", steps, ev, params)
    assert not second.new_version and second.lineage_sha256 == first.lineage_sha256 != ""
    assert _problems("same-lineage", params) == []


def test_a_registered_and_approved_voice_verifies_intact(steps, tmp_path):
    from components.register import verify_lineage

    params = make_params(steps, tmp_path, deployment_policy="manual")
    register_voice("governed", steps, evaluation(tmp_path, "eval", 0.86), params)
    approve("governed", 1, "Dana Reviewer", params)

    check = verify_lineage("governed", None, params)
    assert check.intact and check.problems == [] and check.version == 1
    assert "lineage intact" in check.to_text()


def test_a_lineage_tag_edited_in_the_registry_fails_verification_naming_the_tag(steps, tmp_path):
    params = make_params(steps, tmp_path)
    register_voice("edited", steps, evaluation(tmp_path, "eval", 0.86), params)
    _client(steps).set_model_version_tag("narrator-edited", "1", "metric.speaker_similarity", "0.99")

    assert _problems("edited", params) == [
        "tag metric.speaker_similarity was edited: registered '0.86', now '0.99'"]


def test_a_removed_or_added_lineage_tag_fails_verification(steps, tmp_path):
    params = make_params(steps, tmp_path)
    register_voice("retagged", steps, evaluation(tmp_path, "eval", 0.86), params)
    client = _client(steps)
    client.delete_model_version_tag("narrator-retagged", "1", "consent_hash")
    client.set_model_version_tag("narrator-retagged", "1", "metric.cer", "0.01")

    assert _problems("retagged", params) == [f"tag consent_hash was removed (registered {CONSENT_HASH!r})",
                                             "tag metric.cer was added after registration ('0.01'); the registered "
                                             "lineage has no such tag"]


def test_a_champion_alias_moved_outside_narrator_fails_verification_naming_the_audits_version(steps, tmp_path):
    params = make_params(steps, tmp_path)
    register_voice("hijacked", steps, evaluation(tmp_path, "eval", 0.86), params)  # v1, promoted (audited)
    register_voice("hijacked", steps, evaluation(tmp_path, "eval2", 0.60), params)  # v2 failed its gates
    _client(steps).set_registered_model_alias("narrator-hijacked", "champion", "2")

    (problem,) = _problems("hijacked", params)
    assert problem.startswith("alias champion points at version 2, but the audit log's last promoted (by "
                              "policy:auto at ")
    assert "names version 1" in problem and "narrator approve hijacked 1 --by NAME" in problem


def test_approving_the_version_an_alias_was_moved_to_records_the_move_so_it_verifies(steps, tmp_path):
    params = make_params(steps, tmp_path, deployment_policy="manual")
    register_voice("adopted", steps, evaluation(tmp_path, "eval", 0.86), params)
    _client(steps).set_registered_model_alias("narrator-adopted", "champion", "1")  # outside narrator

    done = approve("adopted", 1, "Dana Reviewer", params)
    assert done.promoted and [r["event"] for r in _audit(tmp_path)] == ["registered", "approved"]
    assert _problems("adopted", params) == []


def test_a_champion_alias_set_without_any_audited_promotion_fails_verification(steps, tmp_path):
    params = make_params(steps, tmp_path, deployment_policy="manual")
    register_voice("unapproved", steps, evaluation(tmp_path, "eval", 0.86), params)  # pending approval
    _client(steps).set_registered_model_alias("narrator-unapproved", "champion", "1")

    (problem,) = _problems("unapproved", params)
    assert "points at version 1, but the audit log records no promotion or approval" in problem


def test_a_replaced_lineage_artifact_fails_verification(steps, tmp_path):
    from components.register import canonical_lineage

    params = make_params(steps, tmp_path)
    done = register_voice("forged", steps, evaluation(tmp_path, "eval", 0.86), params)
    client = _client(steps)
    document = json.loads(Path(client.download_artifacts(done.run_id, "lineage.json", str(tmp_path))).read_text())
    document["tags"]["consent_speaker"] = "Someone Else"
    forged = tmp_path / "forged" / "lineage.json"
    forged.parent.mkdir()
    forged.write_bytes(canonical_lineage(document))
    client.log_artifact(done.run_id, str(forged))  # replaces the registered document

    problems = "\n".join(_problems("forged", params))
    assert "lineage.json hashes to" in problems and "but the version's lineage_sha256 tag is" in problems
    assert "the audit log's registration of version 1 recorded lineage_sha256" in problems
    assert "tag consent_speaker was edited: registered 'Someone Else', now 'Alice Example'" in problems


def test_a_replaced_params_file_in_the_register_run_fails_verification(steps, tmp_path):
    params = make_params(steps, tmp_path)
    done = register_voice("reparametrised", steps, evaluation(tmp_path, "eval", 0.86), params)
    replaced = tmp_path / "replaced" / "params.yaml"
    replaced.parent.mkdir()
    replaced.write_text("finetune_gpt: {epochs: 99}\n")
    _client(steps).log_artifact(done.run_id, str(replaced))

    (problem,) = _problems("reparametrised", params)
    assert "params.yaml hashes to" in problem and "the settings file was replaced after registration" in problem


def test_a_failed_version_whose_verdict_tag_was_edited_to_pass_is_not_approved(steps, tmp_path):
    params = make_params(steps, tmp_path)
    register_voice("doctored", steps, evaluation(tmp_path, "eval", 0.60), params)  # failed its gates
    _client(steps).set_model_version_tag("narrator-doctored", "1", "verdict", "pass")

    with pytest.raises(RegistryError, match="no longer matches its registered lineage, so it cannot be approved: "
                                            "tag verdict was edited: registered 'fail', now 'pass'"):
        approve("doctored", 1, "Dana Reviewer", params)
    assert "champion" not in _client(steps).get_registered_model("narrator-doctored").aliases


def _packaged(steps: Steps, params, voice: str, version: int, uri: str, sha256: str) -> None:
    """What `narrator package` leaves in the registry and the audit log about a published bundle."""
    from narrator.registry import version_audit

    client = _client(steps)
    client.set_model_version_tag(f"narrator-{voice}", str(version), "bundle_uri", uri)
    client.set_model_version_tag(f"narrator-{voice}", str(version), "bundle_sha256", sha256)
    version_audit(params, "packaged", f"narrator-{voice}", voice, version, "packager", bento=f"narrator-{voice}:v1",
                  bundle_uri=uri, bundle_sha256=sha256)


def test_a_packaged_bundle_verifies_and_a_bundle_tag_changed_after_packaging_is_named(steps, tmp_path):
    params = make_params(steps, tmp_path)
    done = register_voice("bundled", steps, evaluation(tmp_path, "eval", 0.86), params)
    _packaged(steps, params, "bundled", 1, f"runs:/{done.run_id}/bundle", "b" * 64)
    assert _problems("bundled", params) == []

    _client(steps).set_model_version_tag("narrator-bundled", "1", "bundle_sha256", "e" * 64)
    (problem,) = _problems("bundled", params)
    assert problem.startswith(f"tag bundle_sha256 was changed after packaging: the audit log's packaging recorded "
                              f"{'b' * 64!r}, now {'e' * 64!r}")


def test_bundle_tags_set_on_a_version_never_packaged_are_named(steps, tmp_path):
    params = make_params(steps, tmp_path)
    register_voice("smuggled", steps, evaluation(tmp_path, "eval", 0.86), params)
    _client(steps).set_model_version_tag("narrator-smuggled", "1", "bundle_uri", "s3://elsewhere/bundle")

    (problem,) = _problems("smuggled", params)
    assert problem.startswith("tag bundle_uri was set outside `narrator package` ('s3://elsewhere/bundle')")


def test_cli_lineage_verify_exits_0_when_intact_and_2_naming_what_changed(steps, tmp_path, capsys, monkeypatch):
    from cli.main import main

    monkeypatch.chdir(tmp_path)
    params = make_params(steps, tmp_path)
    register_voice("cli-verified", steps, evaluation(tmp_path, "eval", 0.86), params)
    settings = ["--set", f"registry.tracking_uri={steps.uri}",
                "--set", f"registry.audit_log={tmp_path / 'audit.jsonl'}"]

    assert main(["lineage", "cli-verified", "--version", "1", "--verify", *settings]) == 0
    assert "lineage intact" in capsys.readouterr().out
    _client(steps).set_model_version_tag("narrator-cli-verified", "1", "verdict", "pass!")
    assert main(["lineage", "cli-verified", "--verify", "--json", *settings]) == 2
    report = json.loads(capsys.readouterr().out)
    assert report["intact"] is False
    assert report["problems"] == ["tag verdict was edited: registered 'pass', now 'pass!'"]


@pytest.mark.services
def test_verification_holds_against_an_mlflow_server_on_postgresql_and_s3(steps, tmp_path, mlflow_service,
                                                                         postgres_service):
    from tests import services

    lock_url = services.create_database(postgres_service, f"registry_lock_lineage_{uuid.uuid4().hex[:8]}")
    params = load_params(None, {"registry": {"tracking_uri": mlflow_service.url, "deployment_policy": "manual",
                                             "audit_log": str(tmp_path / "audit.jsonl"), "lock_url": lock_url},
                                "training": {"mlflow_tracking_uri": steps.uri, "mlflow_experiment": EXPERIMENT}})
    register_voice("served-lineage", steps, evaluation(tmp_path, "eval", 0.86), params)
    approve("served-lineage", 1, "Dana Reviewer", params)
    assert _problems("served-lineage", params) == []

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_service.url, registry_uri=mlflow_service.url)
    client.set_model_version_tag("narrator-served-lineage", "1", "dataset_hash", "sha256:" + "0" * 64)
    assert _problems("served-lineage", params) == [
        f"tag dataset_hash was edited: registered {dataset_tags(steps.prepared)['dataset_hash']!r}, now "
        f"{'sha256:' + '0' * 64!r}"]
