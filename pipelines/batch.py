"""Many narrators at once: the onboarding DAG for each, `pipeline.batch_parallelism` at a time, then one summary.

    narrator pipeline run batch --local --narrators narrators.json
    narrators.json: [{"source": "s3://voices/alice", "voice": "alice"}, {"source": "...", "voice": "bob"}]

Each narrator runs pipelines/onboard.py's steps (its own cache, gate and registration); the `summarize` step
collects every result into one list (summary.json), one row per narrator: its package JSON, its failed gate's
reasons, or its refused dataset's reason (no consent, too little speech, an unreadable source). A refusal or a
failed gate is a result, so it never stops the other narrators; a step that fails outright (a crash) fails only
its own narrator's branch, and the summary still runs and marks that narrator "failed". The exit handler records
the batch run, finished or failed.
"""

from collections.abc import Callable  # no `from __future__ import annotations`: KFP reads the annotations

from kfp import dsl

from narrator.config import Params
from pipelines.cluster import on_cluster
from pipelines.onboard import PARAM_ARGS, settings_arguments, steps_pipeline
from pipelines.steps import make_steps

NAME = "narrator-batch"


def build(params: Params) -> Callable:
    """The batch pipeline for `params`: argument `narrators`, a list of {"source", "voice"} objects."""
    cfg = params.pipeline
    steps = make_steps(cfg.image)
    onboard_steps = steps_pipeline(params)
    defaults = settings_arguments(params)

    @dsl.pipeline(name=NAME, description="Onboard many narrators in parallel and summarise the results.")
    def batch(narrators: list,
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
        record = steps.record_run(voice="(batch)", pipeline=NAME, settings=params_record).set_caching_options(False)
        on_cluster(record, "record", cfg)
        with dsl.ExitHandler(record, name="batch"):
            with dsl.ParallelFor(narrators, parallelism=cfg.batch_parallelism, name="each narrator") as narrator:
                one = onboard_steps(source=narrator.source, voice=narrator.voice,
                                    **{k: a[k] for k in PARAM_ARGS})
            # every narrator's row, also when one of them failed: the others' results and the failed one's name
            summary = steps.summarize(narrators=narrators, results=dsl.Collected(one.output), settings=params_record)
            on_cluster(summary.set_caching_options(False).ignore_upstream_failure(), None, cfg)

    return batch
