"""The pipeline steps as Kubeflow components: thin fronts over the same core functions the CLI and DVC call.

Each function below becomes a component running in the project image (`pipeline.image`, built from the
Dockerfile). Its body imports the step's core function from `components/` (the step table, `components.STEPS`,
names it), calls it with the step's own settings (`settings`: its params.yaml sections as JSON, see
pipelines/runtime.py) and passes the typed result on: folders move between steps as typed artifacts (Dataset for
data, Model for trained models, Artifact for reports and bundles), small values as outputs (the evaluation verdict,
the registered version, the package result). Nothing is parsed from human-readable output. `make_steps(image)`
turns them into components for one image.

No `from __future__ import annotations` here: KFP reads the annotations to type the component interfaces.
"""

from types import SimpleNamespace
from typing import List, NamedTuple  # noqa: UP035 - KFP reads typing.List in component signatures

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output, PipelineTaskFinalStatus


def snapshot(source: str, settings: str) -> str:
    """Fingerprint of the source recordings (names, sizes, dates or ETags); never cached, so new recordings
    invalidate the cached steps after it. A source that cannot be read is not an error here: validation refuses
    it, with the reason, as a result (so one bad source in a batch stops only its own narrator)."""
    from narrator.errors import SourceError
    from narrator.storage import source_fingerprint
    from pipelines.runtime import running

    with running("snapshot", settings) as params:
        try:
            return source_fingerprint(source, params.storage)
        except SourceError as error:
            return f"unreadable: {error}"


def new_recordings(source: str, voice: str, settings: str) -> str:
    """pipelines/retrain.py: "yes" when the recordings differ from those the voice's newest version was trained on
    (or the voice has no version yet), else "no"."""
    from components.register import recordings_changed
    from pipelines.runtime import running

    with running("new_recordings", settings) as params:
        return "yes" if recordings_changed(source, voice, params) else "no"


def validate(source: str, source_fingerprint: str, settings: str, validated: Output[Dataset]) -> str:
    """Validate the recordings into `validated` (the fingerprint only keys the cache). Returns "accepted", or why
    the dataset was refused (no consent, too little speech, an unreadable source): a refusal is a result the
    pipeline branches on, like a failed gate, not a failed step."""
    import os

    from components.validate import validate
    from narrator.errors import SourceError
    from pipelines.runtime import running

    with running("validate", settings) as params:  # "accepted": pipelines.onboard.ACCEPTED
        try:
            report = validate(source, validated.path, params)
        except SourceError as error:
            os.makedirs(validated.path, exist_ok=True)  # an (empty) output artifact for the cluster to store
            validated.metadata.update(source=source, verdict="refused")
            return f"the source cannot be read: {error}"
        validated.metadata.update(source=source, source_fingerprint=source_fingerprint, verdict=report.verdict,
                                  accepted_speech_s=report.totals["accepted_speech_s"])
        return "accepted" if report.accepted else "the dataset was refused: " + "; ".join(report.messages)


def prepare(validated: Input[Dataset], settings: str, prepared: Output[Dataset]):
    """Trim, cut and normalise the accepted clips into `prepared`."""
    from components.prepare import prepare
    from pipelines.runtime import running

    with running("prepare", settings) as params:
        report = prepare(validated.path, prepared.path, params)
        prepared.metadata.update(segments=len(report.segments), duration_s=round(report.total_duration_s, 2))


def features(prepared: Input[Dataset], settings: str, features: Output[Dataset]):
    """The training features of every prepared segment into `features`."""
    from components.features import extract_features
    from pipelines.runtime import running

    with running("features", settings) as params:
        manifest = extract_features(prepared.path, features.path, params)
        features.metadata.update(segments=len(manifest.entries), sovits_version=manifest.sovits_version)


def finetune_sovits(features: Input[Dataset], settings: str, sovits: Output[Model]):
    """Fine-tune SoVITS into `sovits` (sovits.pth inside)."""
    from components.finetune_sovits import finetune_sovits
    from pipelines.runtime import running

    with running("finetune_sovits", settings) as params:
        result = finetune_sovits(features.path, sovits.path, params)
        sovits.metadata.update(steps=result.steps, sha256=result.sha256, seconds=result.seconds)


def finetune_gpt(features: Input[Dataset], settings: str, gpt: Output[Model]):
    """Fine-tune the GPT into `gpt` (gpt.ckpt inside)."""
    from components.finetune_gpt import finetune_gpt
    from pipelines.runtime import running

    with running("finetune_gpt", settings) as params:
        result = finetune_gpt(features.path, gpt.path, params)
        gpt.metadata.update(steps=result.steps, sha256=result.sha256, seconds=result.seconds)


def finetune_on_cluster(kind: str, features: Input[Dataset], settings: str, gpus: int, image: str,
                        namespace: str, work_uri: str, nodes: int, service_account: str, secrets: str,
                        model: Output[Model]):
    """Multi-GPU fine-tuning: a PyTorchJob (Kubeflow Training Operator) runs `narrator finetune-KIND` under
    torchrun on `nodes` nodes of `gpus` GPUs each, as `service_account`, with the Kubernetes Secrets `secrets`
    (JSON {"s3": NAME, ...}) as environment, reading and writing `work_uri`; the result is copied into `model`."""
    import json

    from pipelines.runtime import running
    from pipelines.training_job import run_pytorchjob

    with running(f"finetune_{kind}", settings) as params:
        run_pytorchjob(kind, features.path, model.path, settings, params, gpus=gpus, image=image,
                       namespace=namespace, work_uri=work_uri, nodes=nodes, service_account=service_account or None,
                       secrets=json.loads(secrets))


def evaluate(features: Input[Dataset], sovits: Input[Model], gpt: Input[Model], settings: str,
             evaluation: Output[Artifact], metrics: Output[Metrics]) -> str:
    """Evaluate the voice (a failed gate is a result here, not an error): returns "pass" or "fail", the value the
    pipeline branches on; every metric also goes to the KFP metrics view."""
    import json

    from components.evaluate import evaluate
    from pipelines.runtime import running

    with running("evaluate", settings) as params:
        report = evaluate(features.path, f"{sovits.path}/sovits.pth", f"{gpt.path}/gpt.ckpt", evaluation.path,
                          params)
    measured = {name: float(value) for name, value in report.metrics.items() if value is not None}
    for name, value in measured.items():
        metrics.log_metric(name, value)
    with open(metrics.path, "w", encoding="utf-8") as out:  # the artifact's file too (the local cache needs it)
        json.dump(measured, out)
    return "pass" if report.verdict["passed"] else "fail"


def watermark_check(features: Input[Dataset], sovits: Input[Model], gpt: Input[Model], settings: str,
                    check: Output[Artifact]):
    """The voice's marked output gives the mark and payload back (watermark.json and sample.wav in `check`)."""
    from components.watermark import check_voice
    from pipelines.runtime import running

    with running("watermark_check", settings) as params:
        result = check_voice(features.path, f"{sovits.path}/sovits.pth", f"{gpt.path}/gpt.ckpt", check.path,
                             params)
        check.metadata.update(passed=result.passed, score=result.score, payload_read=result.payload_read)


def register(voice: str, validated: Input[Dataset], prepared: Input[Dataset], features: Input[Dataset],
             sovits: Input[Model], gpt: Input[Model], evaluation: Input[Artifact], check: Input[Artifact],
             source_fingerprint: str, settings: str) -> int:
    """A new version of the voice in the MLflow registry, with its lineage and the watermark check; returns the
    version number."""
    from components.register import register
    from components.watermark import WatermarkCheck
    from pipelines.runtime import running

    with running("register", settings) as params:
        registration = register(voice, validated_dir=validated.path, prepared_dir=prepared.path,
                                features_dir=features.path, sovits_dir=sovits.path, gpt_dir=gpt.path,
                                evaluation_dir=evaluation.path, watermark=WatermarkCheck.read(check.path),
                                params=params, extra_tags={"source_fingerprint": source_fingerprint})
    return registration.version


def package(voice: str, version: int, features: Input[Dataset], sovits: Input[Model], gpt: Input[Model],
            settings: str, bundle: Output[Artifact]) -> str:
    """The version's bundle in the BentoML store and a watermarked sample; returns the result as JSON."""
    from components.package import package
    from pipelines.runtime import running

    with running("package", settings) as params:
        result = package(voice, version, features.path, f"{sovits.path}/sovits.pth", f"{gpt.path}/gpt.ckpt",
                         bundle.path, params)
    bundle.metadata.update({"store_tag": result.store_tag, "payload": result.payload_hex})
    return result.to_json()


def gate_failed(voice: str, evaluation: Input[Artifact], settings: str) -> str:
    """The evaluation failed its gates: record why (MLflow and the audit log); nothing is registered."""
    import json

    from components.evaluate import read_verdict
    from components.record import record_gate_failure
    from pipelines.runtime import running

    with running("record", settings) as params:
        failure = record_gate_failure(voice, read_verdict(evaluation.path)["reasons"], params)
    return json.dumps({"voice": failure.voice, "verdict": "fail", "reasons": failure.reasons})


def dataset_refused(voice: str, reason: str, settings: str, refusal: Output[Artifact]) -> str:
    """Validation refused the recordings: record why (MLflow and the audit log); nothing is trained. Returns the
    result as JSON (also refusal.json in `refusal`)."""
    import json
    import os

    from components.record import record_refusal
    from pipelines.runtime import running

    with running("record", settings) as params:
        record_refusal(voice, reason, params)
    result = json.dumps({"voice": voice, "verdict": "refused", "reasons": [reason]})
    os.makedirs(refusal.path, exist_ok=True)
    with open(os.path.join(refusal.path, "refusal.json"), "w", encoding="utf-8") as out:
        out.write(result)
    return result


def record_run(voice: str, pipeline: str, settings: str, status: PipelineTaskFinalStatus):
    """The exit handler: every run, finished or failed, leaves a record (MLflow run + audit log line)."""
    from components.record import record_run
    from pipelines.runtime import running

    with running("record", settings) as params:
        record_run(voice, pipeline, status.state, status.error_message, status.pipeline_job_resource_name, params)


def summarize(narrators: list, settings: str, summary: Output[Artifact], results: list = None) -> str:
    """pipelines/batch.py: one row per narrator of `narrators` (JSON list): its package result, its failed gate's
    or its refused dataset's reasons, or "failed" when a step of its onboarding failed and left no result (that
    step's log says why). Runs even when some narrator failed (ignore_upstream_failure); written to summary.json."""
    import json
    import os

    done = {}
    for result in results or []:
        row = json.loads(result) if isinstance(result, str) else result
        done[row["voice"]] = row
    failed = {"verdict": "failed", "reasons": ["a step of its onboarding failed; the run's failed step says why"]}
    rows = [done.get(n["voice"], {"voice": n["voice"], "source": n["source"], **failed}) for n in narrators]
    text = json.dumps(rows, indent=1)
    print(text)
    os.makedirs(summary.path, exist_ok=True)
    with open(os.path.join(summary.path, "summary.json"), "w", encoding="utf-8") as out:
        out.write(text)
    return json.dumps(rows)


def manuscript_chapters(manuscript: str, voice: str, version: int, settings: str) -> NamedTuple(
        "BookPlan", [("chapters", list), ("version", int), ("title", str)]):
    """pipelines/narrate.py: the manuscript's chapter numbers (from 0) to fan out over, and the voice version every
    chapter speaks with (`version` 0: the champion, resolved once here)."""
    from collections import namedtuple

    from components.narrate import plan_book
    from narrator.storage import fetch
    from pipelines.runtime import running

    with running("narrate", settings) as params:
        plan = plan_book(fetch(manuscript, params.storage, "manuscript"), voice, version or None, params)
    return namedtuple("BookPlan", ["chapters", "version", "title"])(list(range(len(plan.chapters))), plan.version,
                                                                     plan.title)


def narrate_chapter(manuscript: str, voice: str, version: int, chapter: int, settings: str,
                    narrated: Output[Artifact]) -> str:
    """pipelines/narrate.py: one chapter, guarded, watermarked and mastered, into `narrated`; its result as JSON."""
    import json

    from components.narrate import narrate_one_chapter
    from narrator.storage import fetch
    from pipelines.runtime import running

    with running("narrate", settings) as params:
        result = narrate_one_chapter(fetch(manuscript, params.storage, "manuscript"), chapter, voice, version,
                                     narrated.path, params)
    narrated.metadata.update(chapter=result.index, title=result.title, duration_s=result.duration_s,
                             regenerated=result.regenerated, failed=len(result.failed))
    return json.dumps(result.public())


def assemble_book(manuscript: str, voice: str, version: int,
                  narrated: Input[List[Artifact]],  # noqa: UP006 - KFP reads typing.List
                  settings: str, book: Output[Artifact]) -> str:
    """pipelines/narrate.py: every chapter's files, book.m4b, narration.json and report.html into `book`."""
    import json

    from components.narrate import assemble_chapters
    from narrator.storage import fetch
    from pipelines.runtime import running

    with running("narrate", settings) as params:
        result = assemble_chapters(fetch(manuscript, params.storage, "manuscript"), voice, version,
                                   [a.path for a in narrated], book.path, params)
    book.metadata.update(title=result.title, chapters=len(result.chapters), failed=len(result.failed))
    return json.dumps({"title": result.title, "voice": result.voice, "version": result.version,
                       "m4b": result.m4b, "failed": result.failed})


COMPONENTS = (snapshot, new_recordings, validate, prepare, features, finetune_sovits, finetune_gpt, finetune_on_cluster,
              evaluate, watermark_check, register, package, gate_failed, dataset_refused, record_run, summarize,
              manuscript_chapters, narrate_chapter, assemble_book)


def make_steps(image: str) -> SimpleNamespace:
    """Every step as a KFP component that runs in `image` (kfp is already in it: nothing is pip-installed)."""
    return SimpleNamespace(**{fn.__name__: dsl.component(fn, base_image=image, install_kfp_package=False)
                              for fn in COMPONENTS})
