"""Scheduled retraining of one voice: pick up new recordings, train a challenger, let the registry decide.

A recurring run (`pipeline.retrain_cron`, KFP cron with seconds) runs this pipeline against the voice's recordings
folder. The first step compares the recordings' fingerprint with the one the newest registered version was trained
on; only when recordings were added, removed or replaced does it run the onboarding steps, whose new version
becomes the `challenger` and is promoted or waits for approval by the registry's rules (components/register.py).

    narrator pipeline schedule retrain --host URL --source s3://voices/alice --voice alice
    narrator pipeline run retrain --local --source recordings/alice --voice alice     (one run now)
"""

from collections.abc import Callable  # no `from __future__ import annotations`: KFP reads the annotations

from kfp import dsl

from narrator.config import Params
from pipelines.cluster import on_cluster
from pipelines.onboard import ONBOARD_STEPS, PARAM_ARGS, settings_arguments, steps_pipeline
from pipelines.steps import make_steps

NAME = "narrator-retrain"
STEPS = ("new_recordings", *ONBOARD_STEPS)  # the steps whose settings the retrain pipeline takes


def build(params: Params) -> Callable:
    cfg = params.pipeline
    steps = make_steps(cfg.image)
    onboard_steps = steps_pipeline(params)
    defaults = settings_arguments(params, STEPS)

    @dsl.pipeline(name=NAME, description="Retrain a voice when new recordings arrived; the result is a challenger.")
    def retrain(source: str, voice: str,
                params_new_recordings: str = defaults["params_new_recordings"],
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
        on_cluster(record, "record", cfg)
        with dsl.ExitHandler(record, name="retrain"):
            changed = steps.new_recordings(source=source, voice=voice, settings=params_new_recordings)
            on_cluster(changed, "new_recordings", cfg)
            changed.set_caching_options(False).set_display_name("new recordings?")
            with dsl.If(changed.output == "yes", name="new recordings"):
                onboard_steps(source=source, voice=voice, **{k: a[k] for k in PARAM_ARGS})

    return retrain
