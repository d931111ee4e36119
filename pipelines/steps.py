"""The pipeline steps as Kubeflow components: thin fronts over the same `narrator` CLI the DVC stages run.

Each function below becomes a component running in the project image (`pipeline.image`, built from the
Dockerfile). The body imports from the image's own packages and runs the step's CLI command; folders move between
steps as typed artifacts (Dataset for data, Model for trained models, Artifact for reports and bundles), small
values as parameters. `make_steps(image)` turns them into components for one image.

No `from __future__ import annotations` here: KFP reads the annotations to type the component interfaces.
"""

from types import SimpleNamespace

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output, PipelineTaskFinalStatus


def snapshot(source: str, params_yaml: str) -> str:
    """Fingerprint of the source recordings (names, sizes, dates or ETags); never cached, so new recordings
    invalidate the cached steps after it."""
    from pipelines.runtime import params_from_yaml, source_fingerprint

    return source_fingerprint(source, params_from_yaml(params_yaml))


def new_recordings(source: str, voice: str, params_yaml: str) -> str:
    """pipelines/retrain.py: "yes" when the recordings differ from those the voice's newest version was trained on
    (or the voice has no version yet), else "no"."""
    from pipelines.runtime import params_from_yaml, recordings_changed

    return "yes" if recordings_changed(source, voice, params_from_yaml(params_yaml)) else "no"


def validate(source: str, source_fingerprint: str, params_yaml: str, validated: Output[Dataset]):
    """`narrator validate SOURCE --out validated` (the fingerprint only keys the cache)."""
    from pipelines.runtime import run_cli

    run_cli(["validate", source, "--out", validated.path], params_yaml)
    validated.metadata["source"] = source
    validated.metadata["source_fingerprint"] = source_fingerprint


def prepare(validated: Input[Dataset], params_yaml: str, prepared: Output[Dataset]):
    """`narrator prepare validated --out prepared`."""
    from pipelines.runtime import run_cli

    run_cli(["prepare", validated.path, "--out", prepared.path], params_yaml)


def features(prepared: Input[Dataset], params_yaml: str, features: Output[Dataset]):
    """`narrator features prepared --out features`."""
    from pipelines.runtime import run_cli

    run_cli(["features", prepared.path, "--out", features.path], params_yaml)


def finetune_sovits(features: Input[Dataset], params_yaml: str, sovits: Output[Model]):
    """`narrator finetune-sovits features --out sovits` (sovits.pth inside)."""
    from pipelines.runtime import run_cli, read_json

    run_cli(["finetune-sovits", features.path, "--out", sovits.path], params_yaml)
    sovits.metadata.update({k: v for k, v in read_json(sovits.path, "result.json").items()
                            if k in ("steps", "sha256", "seconds")})


def finetune_gpt(features: Input[Dataset], params_yaml: str, gpt: Output[Model]):
    """`narrator finetune-gpt features --out gpt` (gpt.ckpt inside)."""
    from pipelines.runtime import run_cli, read_json

    run_cli(["finetune-gpt", features.path, "--out", gpt.path], params_yaml)
    gpt.metadata.update({k: v for k, v in read_json(gpt.path, "result.json").items()
                         if k in ("steps", "sha256", "seconds")})


def finetune_on_cluster(kind: str, features: Input[Dataset], params_yaml: str, gpus: int, image: str,
                        namespace: str, work_uri: str, model: Output[Model]):
    """Multi-GPU fine-tuning: a PyTorchJob (Kubeflow Training Operator) runs `narrator finetune-KIND` under
    torchrun on `gpus` GPUs, reading and writing `work_uri`; the result is copied into `model`."""
    from pipelines.training_job import run_pytorchjob

    run_pytorchjob(kind, features.path, model.path, params_yaml, gpus=gpus, image=image, namespace=namespace,
                   work_uri=work_uri)


def evaluate(features: Input[Dataset], sovits: Input[Model], gpt: Input[Model], params_yaml: str,
             evaluation: Output[Artifact], metrics: Output[Metrics]) -> str:
    """`narrator evaluate` (exit 2 = a gate failed is not an error here): returns "pass" or "fail", the value the
    pipeline branches on; every metric also goes to the KFP metrics view."""
    from pipelines.runtime import read_json, run_cli, write_json

    run_cli(["evaluate", features.path, "--sovits", f"{sovits.path}/sovits.pth", "--gpt", f"{gpt.path}/gpt.ckpt",
             "--out", evaluation.path], params_yaml, ok_exit_codes=(0, 2))
    report = read_json(evaluation.path, "report.json")
    measured = {name: float(value) for name, value in report["metrics"].items() if value is not None}
    for name, value in measured.items():
        metrics.log_metric(name, value)
    write_json(metrics.path, measured)  # the artifact's file too (the local step cache requires it to exist)
    return "pass" if report["verdict"]["passed"] else "fail"


def watermark_check(features: Input[Dataset], sovits: Input[Model], gpt: Input[Model], params_yaml: str,
                    check: Output[Artifact]):
    """`narrator watermark check`: the voice's marked output gives the mark and payload back."""
    from pipelines.runtime import run_cli

    run_cli(["watermark", "check", features.path, "--sovits", f"{sovits.path}/sovits.pth", "--gpt",
             f"{gpt.path}/gpt.ckpt", "--out", check.path], params_yaml)


def register(voice: str, validated: Input[Dataset], prepared: Input[Dataset], features: Input[Dataset],
             sovits: Input[Model], gpt: Input[Model], evaluation: Input[Artifact], check: Input[Artifact],
             source_fingerprint: str, params_yaml: str) -> int:
    """`narrator register`: a new version of the voice in the MLflow registry, with its lineage; returns the
    version number."""
    import os
    import tempfile

    from pipelines.runtime import run_cli, read_json

    out = tempfile.mkdtemp(prefix="narrator-register-")
    mark = read_json(check.path, "watermark.json")
    run_cli(["register", voice, "--validated", validated.path, "--prepared", prepared.path, "--features",
             features.path, "--sovits", sovits.path, "--gpt", gpt.path, "--evaluation", evaluation.path,
             "--tag", f"source_fingerprint={source_fingerprint}",
             "--tag", f"watermark_check={'passed' if mark['passed'] else 'failed'} (score {mark['score']})",
             "--out", os.path.join(out, "registration.json")], params_yaml)
    return int(read_json(out, "registration.json")["version"])


def package(voice: str, version: int, features: Input[Dataset], sovits: Input[Model], gpt: Input[Model],
            params_yaml: str, bundle: Output[Artifact]) -> str:
    """`narrator package VOICE --version N`: the bundle in the BentoML store and a watermarked sample; returns
    the result as JSON."""
    from pipelines.runtime import read_json, run_cli

    run_cli(["package", voice, "--version", str(version), "--features", features.path, "--sovits",
             f"{sovits.path}/sovits.pth", "--gpt", f"{gpt.path}/gpt.ckpt", "--out", bundle.path], params_yaml)
    result = read_json(bundle.path, "package.json")
    bundle.metadata.update({"store_tag": result["store_tag"], "payload": result["payload_hex"]})
    import json

    return json.dumps(result)


def gate_failed(voice: str, evaluation: Input[Artifact], params_yaml: str) -> str:
    """The evaluation failed its gates: record why (MLflow and the audit log); nothing is registered."""
    import json

    from pipelines.runtime import params_from_yaml, read_json, record_gate_failure

    verdict = read_json(evaluation.path, "verdict.json")
    record_gate_failure(voice, verdict, params_from_yaml(params_yaml))
    return json.dumps({"voice": voice, "verdict": "fail", "reasons": verdict.get("reasons", [])})


def record_run(voice: str, pipeline: str, params_yaml: str, status: PipelineTaskFinalStatus):
    """The exit handler: every run, finished or failed, leaves a record (MLflow run + audit log line)."""
    from pipelines.runtime import params_from_yaml, record_run_status

    record_run_status(voice, pipeline, status.state, status.error_message, status.pipeline_job_resource_name,
                      params_from_yaml(params_yaml))


def summarize(results: list, params_yaml: str) -> str:
    """pipelines/batch.py: one summary of every narrator's result (JSON list)."""
    import json

    rows = [json.loads(r) if isinstance(r, str) else r for r in results]
    print(json.dumps(rows, indent=1))
    return json.dumps(rows)


STEPS = (snapshot, new_recordings, validate, prepare, features, finetune_sovits, finetune_gpt, finetune_on_cluster, evaluate,
         watermark_check, register, package, gate_failed, record_run, summarize)


def make_steps(image: str) -> SimpleNamespace:
    """Every step as a KFP component that runs in `image` (kfp is already in it: nothing is pip-installed)."""
    return SimpleNamespace(**{fn.__name__: dsl.component(fn, base_image=image, install_kfp_package=False)
                              for fn in STEPS})
