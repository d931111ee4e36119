"""The onboarding DAG (Kubeflow Pipelines v2): one narrator's recordings in, a registered, packaged voice out.

    snapshot -> validate
        refused: dataset_refused (the reason is recorded; nothing is trained)
        accepted: prepare -> features -> fine-tune SoVITS --\
                                      -> fine-tune GPT ------> evaluate -> gate
            gate "pass": watermark check -> register -> package
            gate "fail": gate_failed (the reasons are recorded; nothing is registered)
    exit handler: record_run (every run, finished or failed, is recorded)

A refused dataset and a failed gate are results, not failed steps: the pipeline returns them (JSON) like a
packaged voice, so the batch pipeline's summary names them with their reasons while the other narrators go on.

Every step calls its core function in the project image (pipelines/steps.py) with its own slice of params.yaml
(the sections the step table `components.STEPS` names) as an argument, so the step cache re-runs only the steps
whose inputs or settings changed, like `dvc repro`. The
fine-tuning steps ask for `pipeline.training_gpus` GPUs (more than one: a PyTorchJob under torchrun), evaluation
and the watermark check for `pipeline.evaluate_gpus`. Register and package change the registry, so they are never
cached. On a cluster each step gets the Kubernetes Secrets it needs as environment variables and the steps that
talk to the network retry (pipelines/cluster.py).

    narrator pipeline compile onboard --out onboard.yaml
    narrator pipeline run onboard --local --source recordings/alice --voice alice
    narrator onboard recordings/alice --voice alice            (the same, in one command)
"""


import json
from collections.abc import Callable  # no `from __future__ import annotations`: KFP reads the annotations

from kfp import dsl
from kfp.dsl import Dataset, Input

from narrator.config import Params, PipelineConfig
from pipelines.cluster import on_cluster, secrets_of
from pipelines.runtime import step_settings_json
from pipelines.steps import make_steps

NAME = "narrator-onboard"
# The steps of the onboarding DAG (names in components.STEPS); each gets its settings as pipeline argument
# `params_<step>`, whose default comes from params.yaml.
ONBOARD_STEPS = ("snapshot", "validate", "prepare", "features", "finetune_sovits", "finetune_gpt", "evaluate",
                 "watermark_check", "register", "package", "record")
PARAM_ARGS = {f"params_{step}": step for step in ONBOARD_STEPS}
ACCEPTED = "accepted"  # what validation returns for recordings it accepted (else the reason it refused them)
ACCEPTED_PARAMS = tuple(f"params_{step}" for step in ONBOARD_STEPS if step not in ("snapshot", "validate"))


def settings_arguments(params: Params, steps: tuple[str, ...] = ONBOARD_STEPS) -> dict[str, str]:
    """The `params_<step>` pipeline arguments of `steps` from `params`."""
    return {f"params_{step}": step_settings_json(params, step) for step in steps}


def _resources(task, cfg: PipelineConfig, gpus: int, training: bool = False):
    task.set_cpu_request(cfg.training_cpu if training else cfg.step_cpu)
    task.set_memory_request(cfg.training_memory if training else cfg.step_memory)
    if gpus > 0:
        task.set_accelerator_type(cfg.gpu_resource).set_accelerator_limit(gpus)
    return task


def _task(task, step: str, cfg: PipelineConfig, gpus: int = 0, training: bool = False, component: str | None = None):
    """A step's task as it runs on a cluster: resources, secrets, retries (pipelines/cluster.py)."""
    return on_cluster(_resources(task, cfg, gpus, training), step, cfg, component)


def _finetune(steps, kind: str, features, settings, cfg: PipelineConfig):
    """One fine-tuning step: in the pipeline's pod, or as a multi-GPU PyTorchJob when training_gpus > 1."""
    if cfg.training_gpus > 1:
        task = steps.finetune_on_cluster(kind=kind, features=features, settings=settings,
                                         gpus=cfg.training_gpus, image=cfg.image, namespace=cfg.namespace,
                                         work_uri=cfg.work_uri or "", nodes=cfg.training_nodes,
                                         service_account=cfg.service_account or "",
                                         secrets=json.dumps(secrets_of(f"finetune_{kind}", cfg)))
        nodes = f"{cfg.training_nodes} nodes x " if cfg.training_nodes > 1 else ""
        task.set_display_name(f"finetune-{kind} ({nodes}{cfg.training_gpus} GPUs, PyTorchJob)")
        # the pod only launches and waits; the job's pods hold the GPUs
        _task(task, f"finetune_{kind}", cfg, gpus=0, component="finetune_on_cluster")
        return task, "model"
    step = steps.finetune_sovits if kind == "sovits" else steps.finetune_gpt
    task = step(features=features, settings=settings)
    _task(task, f"finetune_{kind}", cfg, gpus=cfg.training_gpus, training=True)
    return task, kind


def accepted_pipeline(steps, cfg: PipelineConfig) -> Callable:
    """The steps after validation accepted the recordings, as a pipeline of its own (so the onboarding's result
    can be one of its result or the refusal): prepare -> features -> fine-tune -> evaluate -> gate -> watermark
    check -> register -> package. Returns the package result, or the failed gate's (JSON text)."""

    @dsl.pipeline(name=f"{NAME}-accepted")
    def onboard_accepted(voice: str, source_fingerprint: str, validated: Input[Dataset], params_prepare: str,
                         params_features: str, params_finetune_sovits: str, params_finetune_gpt: str,
                         params_evaluate: str, params_watermark_check: str, params_register: str,
                         params_package: str, params_record: str) -> str:
        prep = _task(steps.prepare(validated=validated, settings=params_prepare), "prepare", cfg)
        feats = _task(steps.features(prepared=prep.outputs["prepared"], settings=params_features), "features", cfg,
                      cfg.evaluate_gpus)
        sovits, sovits_out = _finetune(steps, "sovits", feats.outputs["features"], params_finetune_sovits, cfg)
        gpt, gpt_out = _finetune(steps, "gpt", feats.outputs["features"], params_finetune_gpt, cfg)
        models = dict(features=feats.outputs["features"], sovits=sovits.outputs[sovits_out],
                      gpt=gpt.outputs[gpt_out])
        ev = _task(steps.evaluate(**models, settings=params_evaluate), "evaluate", cfg, cfg.evaluate_gpus)
        for task in (prep, feats, sovits, gpt, ev):
            task.set_caching_options(cfg.caching)
        with dsl.If(ev.outputs["Output"] == "pass", name="gates passed"):
            check = _task(steps.watermark_check(**models, settings=params_watermark_check), "watermark_check", cfg,
                          cfg.evaluate_gpus).set_caching_options(cfg.caching)
            reg = _task(steps.register(voice=voice, validated=validated, prepared=prep.outputs["prepared"],
                                       evaluation=ev.outputs["evaluation"], check=check.outputs["check"],
                                       source_fingerprint=source_fingerprint, settings=params_register, **models),
                        "register", cfg)
            reg.set_caching_options(False)
            pkg = _task(steps.package(voice=voice, version=reg.output, settings=params_package, **models),
                        "package", cfg, cfg.evaluate_gpus).set_caching_options(False)
        with dsl.Else(name="gates failed"):
            failed = _task(steps.gate_failed(voice=voice, evaluation=ev.outputs["evaluation"],
                                             settings=params_record), "record", cfg).set_caching_options(False)
        return dsl.OneOf(pkg.outputs["Output"], failed.output)

    return onboard_accepted


def onboard_body(steps, accepted: Callable, cfg: PipelineConfig, source, voice, a: dict):
    """The onboarding steps (inside a pipeline; `accepted` is accepted_pipeline's); `a` maps each `params_<step>`
    name to its pipeline argument. Returns the result (JSON text): the package step's, the failed gate's, or the
    refused dataset's."""
    snap = _task(steps.snapshot(source=source, settings=a["params_snapshot"]), "snapshot", cfg)
    snap.set_caching_options(False).set_display_name("snapshot recordings")
    val = _task(steps.validate(source=source, source_fingerprint=snap.output, settings=a["params_validate"]),
                "validate", cfg).set_caching_options(cfg.caching)
    with dsl.If(val.outputs["Output"] == ACCEPTED, name="recordings accepted"):
        trained = accepted(
            voice=voice, source_fingerprint=snap.output, validated=val.outputs["validated"],
            **{name: a[name] for name in ACCEPTED_PARAMS})
    with dsl.Else(name="recordings refused"):
        refused = _task(steps.dataset_refused(voice=voice, reason=val.outputs["Output"], settings=a["params_record"]),
                        "record", cfg).set_caching_options(False)
    return dsl.OneOf(trained.output, refused.outputs["Output"])


def steps_pipeline(params: Params) -> Callable:
    """The onboarding DAG as a pipeline that returns its result (JSON text), without the exit handler: the unit
    pipelines/batch.py runs once per narrator. Every `params_<step>` argument is required."""
    cfg = params.pipeline
    steps = make_steps(cfg.image)
    accepted = accepted_pipeline(steps, cfg)

    @dsl.pipeline(name=f"{NAME}-steps")
    def onboard_steps(source: str, voice: str, params_snapshot: str, params_validate: str, params_prepare: str,
                      params_features: str, params_finetune_sovits: str, params_finetune_gpt: str,
                      params_evaluate: str, params_watermark_check: str, params_register: str, params_package: str,
                      params_record: str) -> str:
        return onboard_body(steps, accepted, cfg, source, voice, dict(locals()))

    return onboard_steps


def build(params: Params) -> Callable:
    """The onboarding pipeline for `params` (image, resources, and the params arguments' defaults)."""
    steps = make_steps(params.pipeline.image)
    inner = steps_pipeline(params)
    defaults = settings_arguments(params)

    @dsl.pipeline(name=NAME, description="Onboard one narrator: validate, prepare, features, fine-tune SoVITS and "
                                         "GPT, evaluate against the quality gates, check the watermark, register "
                                         "and package the voice.")
    def onboard(source: str, voice: str,
                params_snapshot: str = defaults["params_snapshot"],
                params_validate: str = defaults["params_validate"],
                params_prepare: str = defaults["params_prepare"],
                params_features: str = defaults["params_features"],
                params_finetune_sovits: str = defaults["params_finetune_sovits"],
                params_finetune_gpt: str = defaults["params_finetune_gpt"],
                params_evaluate: str = defaults["params_evaluate"],
                params_watermark_check: str = defaults["params_watermark_check"],
                params_register: str = defaults["params_register"],
                params_package: str = defaults["params_package"],
                params_record: str = defaults["params_record"]):
        a = dict(locals())
        record = steps.record_run(voice=voice, pipeline=NAME, settings=params_record).set_caching_options(False)
        on_cluster(record, "record", params.pipeline)
        with dsl.ExitHandler(record, name="onboard"):
            inner(source=source, voice=voice, **{k: a[k] for k in PARAM_ARGS})

    return onboard
