"""The onboarding DAG (Kubeflow Pipelines v2): one narrator's recordings in, a registered, packaged voice out.

    snapshot -> validate -> prepare -> features -> fine-tune SoVITS --\
                                               -> fine-tune GPT ------> evaluate -> gate
        gate "pass": watermark check -> register -> package
        gate "fail": gate_failed (the reasons are recorded; nothing is registered)
    exit handler: record_run (every run, finished or failed, is recorded)

Every step calls its core function in the project image (pipelines/steps.py) with its own slice of params.yaml
(the sections the step table `components.STEPS` names) as an argument, so the step cache re-runs only the steps
whose inputs or settings changed, like `dvc repro`. The
fine-tuning steps ask for `pipeline.training_gpus` GPUs (more than one: a PyTorchJob under torchrun), evaluation
and the watermark check for `pipeline.evaluate_gpus`. Register and package change the registry, so they are never
cached.

    narrator pipeline compile onboard --out onboard.yaml
    narrator pipeline run onboard --local --source recordings/alice --voice alice
    narrator onboard recordings/alice --voice alice            (the same, in one command)
"""


from collections.abc import Callable  # no `from __future__ import annotations`: KFP reads the annotations

from kfp import dsl

from narrator.config import Params, PipelineConfig
from pipelines.runtime import step_settings_json
from pipelines.steps import make_steps

NAME = "narrator-onboard"
# The steps of the onboarding DAG (names in components.STEPS); each gets its settings as pipeline argument
# `params_<step>`, whose default comes from params.yaml.
ONBOARD_STEPS = ("snapshot", "validate", "prepare", "features", "finetune_sovits", "finetune_gpt", "evaluate",
                 "watermark_check", "register", "package", "record")
PARAM_ARGS = {f"params_{step}": step for step in ONBOARD_STEPS}


def settings_arguments(params: Params, steps: tuple[str, ...] = ONBOARD_STEPS) -> dict[str, str]:
    """The `params_<step>` pipeline arguments of `steps` from `params`."""
    return {f"params_{step}": step_settings_json(params, step) for step in steps}


def _resources(task, cfg: PipelineConfig, gpus: int, training: bool = False):
    task.set_cpu_request(cfg.training_cpu if training else cfg.step_cpu)
    task.set_memory_request(cfg.training_memory if training else cfg.step_memory)
    if gpus > 0:
        task.set_accelerator_type(cfg.gpu_resource).set_accelerator_limit(gpus)
    return task


def _finetune(steps, kind: str, features, settings, cfg: PipelineConfig):
    """One fine-tuning step: in the pipeline's pod, or as a multi-GPU PyTorchJob when training_gpus > 1."""
    if cfg.training_gpus > 1:
        task = steps.finetune_on_cluster(kind=kind, features=features, settings=settings,
                                         gpus=cfg.training_gpus, image=cfg.image, namespace=cfg.namespace,
                                         work_uri=cfg.work_uri or "")
        task.set_display_name(f"finetune-{kind} ({cfg.training_gpus} GPUs, PyTorchJob)")
        _resources(task, cfg, gpus=0)  # the pod only launches and waits; the job's pods hold the GPUs
        return task, "model"
    step = steps.finetune_sovits if kind == "sovits" else steps.finetune_gpt
    task = step(features=features, settings=settings)
    _resources(task, cfg, gpus=cfg.training_gpus, training=True)
    return task, kind


def onboard_body(steps, cfg: PipelineConfig, source, voice, a: dict):
    """The onboarding steps (inside a pipeline); `a` maps each `params_<step>` name to its pipeline argument.
    Returns the result (JSON text): the package step's, or the failed gate's."""
    snap = steps.snapshot(source=source, settings=a["params_snapshot"]).set_caching_options(False)
    snap.set_display_name("snapshot recordings")
    val = _resources(steps.validate(source=source, source_fingerprint=snap.output, settings=a["params_validate"]),
                     cfg, 0)
    prep = _resources(steps.prepare(validated=val.outputs["validated"], settings=a["params_prepare"]), cfg, 0)
    feats = _resources(steps.features(prepared=prep.outputs["prepared"], settings=a["params_features"]), cfg,
                       cfg.evaluate_gpus)
    sovits, sovits_out = _finetune(steps, "sovits", feats.outputs["features"], a["params_finetune_sovits"], cfg)
    gpt, gpt_out = _finetune(steps, "gpt", feats.outputs["features"], a["params_finetune_gpt"], cfg)
    models = dict(features=feats.outputs["features"], sovits=sovits.outputs[sovits_out], gpt=gpt.outputs[gpt_out])
    ev = _resources(steps.evaluate(**models, settings=a["params_evaluate"]), cfg, cfg.evaluate_gpus)
    for task in (val, prep, feats, sovits, gpt, ev):
        task.set_caching_options(cfg.caching)
    with dsl.If(ev.outputs["Output"] == "pass", name="gates passed"):
        check = _resources(steps.watermark_check(**models, settings=a["params_watermark_check"]), cfg,
                           cfg.evaluate_gpus).set_caching_options(cfg.caching)
        reg = _resources(steps.register(voice=voice, validated=val.outputs["validated"],
                                        prepared=prep.outputs["prepared"], evaluation=ev.outputs["evaluation"],
                                        check=check.outputs["check"], source_fingerprint=snap.output,
                                        settings=a["params_register"], **models), cfg, 0)
        reg.set_caching_options(False)
        pkg = _resources(steps.package(voice=voice, version=reg.output, settings=a["params_package"], **models),
                         cfg, cfg.evaluate_gpus).set_caching_options(False)
    with dsl.Else(name="gates failed"):
        failed = steps.gate_failed(voice=voice, evaluation=ev.outputs["evaluation"],
                                   settings=a["params_record"]).set_caching_options(False)
    return dsl.OneOf(pkg.outputs["Output"], failed.output)


def steps_pipeline(params: Params) -> Callable:
    """The onboarding DAG as a pipeline that returns its result (JSON text), without the exit handler: the unit
    pipelines/batch.py runs once per narrator. Every `params_<step>` argument is required."""
    cfg = params.pipeline
    steps = make_steps(cfg.image)

    @dsl.pipeline(name=f"{NAME}-steps")
    def onboard_steps(source: str, voice: str, params_snapshot: str, params_validate: str, params_prepare: str,
                      params_features: str, params_finetune_sovits: str, params_finetune_gpt: str,
                      params_evaluate: str, params_watermark_check: str, params_register: str, params_package: str,
                      params_record: str) -> str:
        return onboard_body(steps, cfg, source, voice, dict(locals()))

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
        with dsl.ExitHandler(record, name="onboard"):
            inner(source=source, voice=voice, **{k: a[k] for k in PARAM_ARGS})

    return onboard
