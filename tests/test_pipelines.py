"""The Kubeflow pipelines (pipelines/): the compiled YAML has every step, image, resource and branch; the onboarding
DAG runs end to end here with kfp's local runner on the demo's small models; a failed step stops the run with its
error and the next run resumes after the finished steps; retraining notices new recordings; multi-GPU fine-tuning
becomes a PyTorchJob; scheduling asks the cluster for a recurring run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from narrator.config import load_params
from pipelines.run import PipelineError, compile_pipeline, run_local

STEPS = ("snapshot", "validate", "prepare", "features", "finetune-sovits", "finetune-gpt", "evaluate",
         "watermark-check", "register", "package", "gate-failed", "record-run")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """`compiled(name, **pipeline_settings)`: the pipeline's YAML as a dict, compiled once per module for each
    name and settings (the tests only read it)."""
    specs: dict[tuple, dict] = {}

    def compile_once(name: str, **pipeline) -> dict:
        key = (name, tuple(sorted(pipeline.items())))
        if key not in specs:
            params = load_params(None, {"pipeline": {"image": "registry.example/narrator:1.2.3", **pipeline}})
            out = compile_pipeline(name, params, tmp_path_factory.mktemp("compiled") / f"{name}.yaml")
            specs[key] = next(yaml.safe_load_all(out.read_text()))  # the pipeline; then its Kubernetes settings
        return specs[key]

    return compile_once


def _executors(spec: dict) -> dict:
    return spec["deploymentSpec"]["executors"]


def _tasks(spec: dict) -> dict:
    """Every task of every DAG in the spec, by task name."""
    tasks = dict(spec["root"]["dag"]["tasks"])
    for component in spec["components"].values():
        tasks.update(component.get("dag", {}).get("tasks", {}))
    return tasks


def test_onboard_yaml_has_every_step_in_the_project_image(compiled):
    spec = compiled("onboard")
    assert set(STEPS) <= set(_tasks(spec))
    images = {e["container"]["image"] for e in _executors(spec).values()}
    assert images == {"registry.example/narrator:1.2.3"}


def test_onboard_yaml_requests_gpus_for_training_and_evaluation_only(compiled):
    spec = compiled("onboard", training_gpus=1, evaluate_gpus=1)
    resources = {name.removeprefix("exec-"): e["container"].get("resources", {})
                 for name, e in _executors(spec).items()}
    for step in ("finetune-sovits", "finetune-gpt", "evaluate", "watermark-check"):
        assert resources[step]["accelerator"]["resourceType"] == "nvidia.com/gpu", step
        assert int(resources[step]["accelerator"]["resourceCount"]) == 1
    for step in ("validate", "prepare", "register"):
        assert "accelerator" not in resources[step], step
    assert resources["finetune-sovits"]["resourceCpuRequest"] == "8"
    assert resources["finetune-sovits"]["resourceMemoryRequest"] == "32G"


def test_onboard_yaml_branches_on_the_evaluation_verdict(compiled):
    tasks = _tasks(compiled("onboard"))
    conditions = {name: t["triggerPolicy"]["condition"] for name, t in tasks.items() if "triggerPolicy" in t
                  and "condition" in t["triggerPolicy"]}
    passed = [c for c in conditions.values() if "'pass'" in c and "!" not in c]
    failed = [c for c in conditions.values() if "'pass'" in c and "!" in c]
    assert passed and failed, conditions
    assert "evaluate" in passed[0]


def test_onboard_yaml_caches_deterministic_steps_but_never_the_registry(compiled):
    tasks = _tasks(compiled("onboard"))
    cached = {name: t.get("cachingOptions", {}).get("enableCache", False) for name, t in tasks.items()}
    for step in ("validate", "prepare", "features", "finetune-sovits", "finetune-gpt", "evaluate"):
        assert cached[step] is True, step
    for step in ("snapshot", "register", "package", "gate-failed"):
        assert cached[step] is False, step


def test_onboard_yaml_records_every_run_in_an_exit_handler(compiled):
    tasks = compiled("onboard")["root"]["dag"]["tasks"]
    assert tasks["record-run"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert "exit-handler-1" in tasks["record-run"]["dependentTasks"]


@pytest.mark.parametrize("name", ["onboard", "batch", "retrain"])
def test_the_run_record_is_never_answered_from_the_cache(compiled, name):
    record = compiled(name)["root"]["dag"]["tasks"]["record-run"]
    assert record.get("cachingOptions", {}).get("enableCache", False) is False  # a re-run is a new run to record


def test_more_than_one_training_gpu_runs_fine_tuning_as_a_pytorchjob(compiled):
    tasks = _tasks(compiled("onboard", training_gpus=4, work_uri="s3://work/narrator"))
    launchers = [t for name, t in tasks.items() if name.startswith("finetune-on-cluster")]
    assert len(launchers) == 2
    kinds = {t["inputs"]["parameters"]["kind"]["runtimeValue"]["constant"] for t in launchers}
    assert kinds == {"sovits", "gpt"}
    assert all(t["inputs"]["parameters"]["gpus"]["runtimeValue"]["constant"] == 4 for t in launchers)


def test_pytorchjob_runs_the_same_command_under_torchrun():
    from pipelines.training_job import job_state, pytorchjob_manifest

    job = pytorchjob_manifest("narrator-sovits-x", "sovits", "s3://w/f", "s3://w/sovits", "training: {}\n", 4,
                              "narrator:1", "voices")
    master = job["spec"]["pytorchReplicaSpecs"]["Master"]
    container = master["template"]["spec"]["containers"][0]
    assert job["kind"] == "PyTorchJob" and job["metadata"]["namespace"] == "voices" and master["replicas"] == 1
    assert "torchrun --standalone --nproc-per-node 4 --no-python narrator finetune-sovits s3://w/f --out " \
           "s3://w/sovits" in container["command"][-1]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert job_state({"status": {"conditions": [{"type": "Running", "status": "True"}]}}) is None
    assert job_state({"status": {"conditions": [{"type": "Succeeded", "status": "True"}]}}) == "Succeeded"


def test_batch_yaml_loops_over_narrators_with_a_parallelism_limit_and_collects_a_summary(compiled):
    spec = compiled("batch", batch_parallelism=3)
    loops = [t for t in _tasks(spec).values() if "iterator" in t or "parameterIterator" in t]
    assert loops and loops[0]["iteratorPolicy"]["parallelismLimit"] == 3
    assert "summarize" in _tasks(spec)


def test_retrain_yaml_trains_only_when_recordings_changed(compiled):
    tasks = _tasks(compiled("retrain"))
    assert "new-recordings" in tasks
    assert any("'yes'" in t.get("triggerPolicy", {}).get("condition", "") for t in tasks.values())


def test_each_steps_settings_argument_holds_exactly_its_table_sections(compiled):
    from components import STEPS
    from pipelines.retrain import STEPS as RETRAIN_STEPS

    for pipeline, names in (("retrain", RETRAIN_STEPS), ("narrate", ("narrate",))):
        inputs = compiled(pipeline)["root"]["inputDefinitions"]["parameters"]
        for name in names:
            settings = json.loads(inputs[f"params_{name}"]["defaultValue"])
            assert list(settings) == sorted(STEPS[name].sections), name


def test_narrate_yaml_fans_the_chapters_out_in_parallel_and_assembles_the_book(compiled):
    spec = compiled("narrate", batch_parallelism=3)
    tasks = _tasks(spec)
    assert {"manuscript-chapters", "narrate-chapter", "assemble-book"} <= set(tasks)
    loop = next(t for t in spec["root"]["dag"]["tasks"].values() if "iteratorPolicy" in t)
    assert loop["iteratorPolicy"]["parallelismLimit"] == 3
    assert loop["parameterIterator"]["items"]["inputParameter"].endswith("chapters")
    assemble = spec["root"]["dag"]["tasks"]["assemble-book"]
    assert "narrate-chapter" in json.dumps(assemble["inputs"]["artifacts"]["narrated"])
    assert {e["container"]["image"] for e in _executors(spec).values()} == {"registry.example/narrator:1.2.3"}


def test_schedule_creates_a_recurring_run_with_the_cron(tmp_path, monkeypatch):
    import kfp

    from pipelines import run as runner

    calls = {}

    class FakeClient:
        def __init__(self, host, namespace):
            calls["host"], calls["namespace"] = host, namespace

        def create_experiment(self, name):
            return type("E", (), {"experiment_id": "exp-1"})()

        def create_recurring_run(self, **kwargs):
            calls.update(kwargs)
            return type("R", (), {"recurring_run_id": "job-1"})()

    monkeypatch.setattr(kfp, "Client", FakeClient)
    monkeypatch.delenv("KF_PIPELINES_NAMESPACE", raising=False)
    monkeypatch.delenv("KF_PIPELINES_TOKEN", raising=False)
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(tmp_path / "no-token"))
    params = load_params(None, {"pipeline": {"image": "registry.example/narrator:1.2.3"}})
    job = runner.schedule("retrain", params, {"source": "s3://v/alice", "voice": "alice"},
                          host="http://kfp.example", package_dir=tmp_path)
    assert job == "job-1" and calls["host"] == "http://kfp.example" and calls["namespace"] == "kubeflow"
    assert calls["service_account"] == params.pipeline.service_account
    assert calls["cron_expression"] == params.pipeline.retrain_cron and calls["max_concurrency"] == 1
    assert calls["params"]["voice"] == "alice" and Path(calls["pipeline_package_path"]).exists()


# -- the local DAG, end to end -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_project(tmp_path_factory):
    """The demo narrator (espeak-ng) and the demo's small base models, with every output under a temp folder."""
    from narrator.config import DemoConfig
    from cli.demo import build_demo_bases, build_demo_narrator, demo_overrides

    root = tmp_path_factory.mktemp("pipeline")
    source = build_demo_narrator(root / "narrator", DemoConfig(clips=20, speed_wpm=130))
    overrides = demo_overrides(build_demo_bases(root / "base"), root)
    overrides["finetune_sovits"] = {"epochs": 1, "batch_size": 4}
    overrides["finetune_gpt"].update(epochs=2)
    overrides["evaluate"].update(max_holdout_segments=1, sentences_per_language=1)
    return source, load_params(None, overrides), root


@pytest.fixture(scope="module")
def onboarded(local_project):
    """A first run that fails at the watermark check (no key configured), then the same run with the key."""
    from pipelines.run import step_arguments

    source, params, root = local_project
    arguments = {"source": str(source), "voice": "ava", **step_arguments("onboard", params)}
    patch = pytest.MonkeyPatch()
    patch.delenv("NARRATOR_WATERMARK_KEY", raising=False)
    patch.delenv("NARRATOR_WATERMARK_KEY_FILE", raising=False)
    with pytest.raises(PipelineError) as failed:
        run_local("onboard", params, arguments)
    patch.setenv("NARRATOR_WATERMARK_KEY", "test pipeline key")
    try:
        result = run_local("onboard", params, arguments)
    finally:
        patch.undo()
    return failed.value, result, params, root


def _runs_of(root: Path, step: str) -> list[Path]:
    return [p for p in (root / "pipeline").glob(f"narrator-onboard-*/{step}") if p.is_dir()]


def test_a_failed_step_stops_the_run_with_its_error(onboarded):
    error, _, _, root = onboarded
    assert "step watermark_check failed" in str(error) and "NARRATOR_WATERMARK_KEY" in str(error)
    first_run = sorted((root / "pipeline").glob("narrator-onboard-*"))[0]
    assert (first_run / "watermark-check").is_dir() and not (first_run / "register").exists()  # nothing after it


def test_the_rerun_resumes_after_the_finished_steps(onboarded):
    _, result, _, root = onboarded
    assert result.packages
    for step in ("validate", "prepare", "features", "finetune-sovits", "finetune-gpt", "evaluate"):
        assert len(_runs_of(root, step)) == 1, step  # ran once: the second run reused it
    assert len(_runs_of(root, "watermark-check")) == 2


def test_the_onboarded_voice_is_registered_champion_and_packaged(onboarded):
    from components.register import lineage

    _, result, params, _ = onboarded
    package = result.packages[0]
    assert package["voice"] == "ava" and package["version"] == 1
    found = lineage("ava", None, params)
    assert found.version == 1 and "champion" in found.aliases and found.bento == "narrator-ava:v1"
    assert found.consent["hash"].startswith("sha256:") and found.consent["speaker"] == "Demo Narrator"


def test_the_onboarded_voices_lineage_verifies_after_packaging(onboarded):
    from components.register import verify_lineage

    _, _, params, _ = onboarded
    check = verify_lineage("ava", None, params)
    assert check.intact, check.problems


def test_the_packaged_sample_carries_the_versions_watermark(onboarded, monkeypatch):
    from components.watermark import detect_file

    _, result, _, _ = onboarded
    package = result.packages[0]
    assert package["sample_watermark"]["detected"] is True
    bundle = Path(package["bundle_dir"])
    assert {"voice.yaml", "sovits.pth", "gpt.ckpt", "reference.wav", "sample.wav"} <= {p.name for p in
                                                                                         bundle.iterdir()}
    assert detect_file(bundle / "sample.wav", "test pipeline key")["detected"] is True
    assert json.loads(json.dumps(yaml.safe_load((bundle / "voice.yaml").read_text())))["watermark_payload"] == \
        package["payload_hex"]


def test_a_local_run_keeps_kfps_and_the_steps_logs_in_a_file(onboarded):
    _, result, _, root = onboarded
    log = Path(result.log)
    assert log.parent == root / "pipeline" / "logs"
    text = log.read_text()
    assert "Executing task" in text and "[KFP Executor" in text  # kfp's own lines and the steps' output


def test_step_progress_prints_one_line_per_step():
    from pipelines.run import _StepProgress

    shown = []
    progress = _StepProgress()
    progress.write = shown.append
    for line in ["09:16:40.711 - INFO - Executing task \x1b[96m'validate'\x1b[0m",
                 "    [KFP Executor 2026-11-25 09:16:40,756 INFO]: Got executor_input:",
                 "09:16:43.889 - INFO - Task \x1b[96m'validate'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m",
                 "INFO:root:Task prepare cache hit (key=0123456789ab); skipping execution.",
                 "Skipping conditional task gate-failed (condition evaluated to False)",
                 "Skipping conditional task condition-3 (condition evaluated to False)"]:  # a group, not a step
        progress.feed(line)
    assert [line.split() for line in shown] == [["validate", "SUCCESS", shown[0].split()[2], "s"],
                                                ["prepare", "cached"], ["gate-failed", "skipped"]]


def test_output_of_a_run_and_its_subprocesses_goes_to_the_log(tmp_path, capfd):
    import os
    import subprocess
    import sys

    from pipelines.run import _output_to_log, _StepProgress

    progress = _StepProgress()
    seen = []
    progress.feed = seen.append
    log = tmp_path / "logs" / "run.log"
    with _output_to_log(log, progress):
        os.write(1, b"from this process\n")  # file descriptor 1, where kfp's logging and print() write outside pytest
        subprocess.run([sys.executable, "-c", "import sys; print('from a step'); print('oops', file=sys.stderr)"],
                       check=True)
    os.write(1, b"after the run\n")
    assert log.read_text().splitlines() == ["from this process", "from a step", "oops"]
    assert seen == ["from this process", "from a step", "oops"]
    assert capfd.readouterr().out == "after the run\n"


def test_every_run_is_recorded_finished_or_failed(onboarded):
    from narrator.audit import read as read_audit_log

    _, _, params, _ = onboarded
    runs = [r for r in read_audit_log(params.registry.audit_log) if r.get("event") == "pipeline_run"]
    assert [r["state"] for r in runs] == ["FAILED", "SUCCEEDED"]


def test_retraining_waits_for_new_recordings(onboarded, local_project):
    import shutil

    from components.register import recordings_changed

    source, params, root = local_project
    assert recordings_changed(str(source), "ava", params) is False
    assert recordings_changed(str(source), "nobody", params) is True
    copy = root / "narrator-more"
    shutil.copytree(source, copy)
    shutil.copy2(copy / "clips" / "000.wav", copy / "clips" / "100.wav")
    assert recordings_changed(str(copy), "ava", params) is True


def test_watermark_cli_embeds_a_registered_versions_payload_and_names_it_back(onboarded, tmp_path, monkeypatch,
                                                                              capsys):
    import numpy as np

    from narrator.audiofile import write_wav
    from cli.main import main

    _, _, params, _ = onboarded
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params.model_dump(by_alias=True, mode="json")))
    monkeypatch.setenv("NARRATOR_WATERMARK_KEY", "test pipeline key")
    speech = 0.1 * np.random.default_rng(0).standard_normal(12 * 16000).astype(np.float32)
    write_wav(tmp_path / "speech.wav", speech, 16000)
    assert main(["watermark", "embed", str(tmp_path / "speech.wav"), str(tmp_path / "marked.wav"), "--voice",
                 "ava@1", "--params", str(params_file)]) == 0
    capsys.readouterr()
    assert main(["watermark", "detect", str(tmp_path / "marked.wav"), "--lookup", "--params", str(params_file)]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["detected"] and (found["voice"], found["version"]) == ("ava", 1)


def test_a_scheduled_retrain_without_new_recordings_trains_nothing(onboarded, local_project):
    from narrator.audit import read as read_audit_log
    from pipelines.run import step_arguments

    source, params, root = local_project
    before = len(list((root / "pipeline").glob("narrator-retrain-*/validate")))
    run_local("retrain", params, {"source": str(source), "voice": "ava", **step_arguments("retrain", params)})
    assert len(list((root / "pipeline").glob("narrator-retrain-*/validate"))) == before == 0
    last = read_audit_log(params.registry.audit_log)[-1]
    assert (last["pipeline"], last["state"]) == ("narrator-retrain", "SUCCEEDED")


def test_a_refused_narrator_in_a_batch_is_summarised_with_its_reason_and_the_others_register(onboarded,
                                                                                                local_project,
                                                                                                monkeypatch):
    """One narrator's recordings have no consent record: the summary says so; the other is registered and packaged
    (its training steps are the cache's, from the onboarding above)."""
    import shutil

    from narrator.audit import read as read_audit_log
    from pipelines.run import step_arguments

    source, params, root = local_project
    no_consent = root / "narrator-without-consent"  # two of the narrator's clips, no consent record
    (no_consent / "clips").mkdir(parents=True)
    lines = (source / "transcripts.list").read_text().splitlines()[:2]
    for line in lines:
        shutil.copy2(source / line.split("|")[0], no_consent / line.split("|")[0])
    (no_consent / "transcripts.list").write_text("\n".join(lines) + "\n")
    monkeypatch.setenv("NARRATOR_WATERMARK_KEY", "test pipeline key")
    narrators = [{"source": str(no_consent), "voice": "dee"}, {"source": str(source), "voice": "cy"}]
    result = run_local("batch", params, {"narrators": narrators, **step_arguments("batch", params)})
    rows = {row["voice"]: row for row in result.summary}
    assert rows["dee"]["verdict"] == "refused" and "consent" in rows["dee"]["reasons"][0]
    assert rows["cy"]["voice"] == "cy" and rows["cy"]["version"] == 1 and rows["cy"]["sample_watermark"]["detected"]
    assert [p["voice"] for p in result.packages] == ["cy"] and [r["voice"] for r in result.refusals] == ["dee"]
    refused = [r for r in read_audit_log(params.registry.audit_log) if r.get("event") == "dataset_refused"]
    assert [r["voice"] for r in refused] == ["dee"]


@pytest.mark.slow
def test_batch_onboards_every_narrator_and_summarises_them(onboarded, local_project, monkeypatch):
    from pipelines.run import step_arguments

    source, params, _ = local_project
    monkeypatch.setenv("NARRATOR_WATERMARK_KEY", "test pipeline key")
    narrators = [{"source": str(source), "voice": "ava"}, {"source": str(source), "voice": "bea"}]
    result = run_local("batch", params, {"narrators": narrators, **step_arguments("batch", params)})
    assert sorted(p["voice"] for p in result.packages) == ["ava", "bea"]
    assert all(p["sample_watermark"]["detected"] for p in result.packages)
