"""The narration DAG (Kubeflow Pipelines v2): a manuscript in, an audiobook out, chapters narrated in parallel.

    manuscript-chapters -> ParallelFor chapter (pipeline.batch_parallelism at a time): narrate-chapter
                        -> assemble-book (book.m4b with chapter marks, narration.json, report.html)

The same core functions as `narrator narrate` (components/narrate.py), split at the chapter: `plan_book` resolves
the voice version once (0: the champion), `narrate_one_chapter` speaks one chapter through the guard, marks,
masters and measures it, `assemble_chapters` gathers the chapters' files and writes the book. The manuscript is a
path every pod can read or an s3:// URI. A finished chapter is a cached step: a re-run narrates only the chapters
that did not finish.

    narrator pipeline compile narrate --out narrate.yaml
    narrator pipeline run narrate --host http://KFP --manuscript s3://books/lighthouse.md --voice alice
"""

from collections.abc import Callable  # no `from __future__ import annotations`: KFP reads the annotations

from kfp import dsl

from narrator.config import Params
from pipelines.cluster import on_cluster
from pipelines.runtime import step_settings_json
from pipelines.steps import make_steps

NAME = "narrator-narrate"


def settings_arguments(params: Params) -> dict[str, str]:
    return {"params_narrate": step_settings_json(params, "narrate")}


def build(params: Params) -> Callable:
    """The narration pipeline for `params` (image, resources, parallelism and the settings' default)."""
    cfg = params.pipeline
    steps = make_steps(cfg.image)
    default = settings_arguments(params)["params_narrate"]

    @dsl.pipeline(name=NAME, description="Narrate a manuscript with a registered voice: chapters in parallel, each "
                                         "guarded, watermarked and mastered to the ACX limits; then the M4B, "
                                         "narration.json and the report.")
    def narrate(manuscript: str, voice: str, version: int = 0, params_narrate: str = default):
        plan = steps.manuscript_chapters(manuscript=manuscript, voice=voice, version=version,
                                         settings=params_narrate).set_caching_options(False)
        plan.set_display_name("split the manuscript")
        on_cluster(plan, "narrate", cfg, component="manuscript_chapters")
        with dsl.ParallelFor(plan.outputs["chapters"], parallelism=cfg.batch_parallelism,
                             name="each chapter") as chapter:
            one = steps.narrate_chapter(manuscript=manuscript, voice=voice, version=plan.outputs["version"],
                                        chapter=chapter, settings=params_narrate)
            one.set_cpu_request(cfg.step_cpu).set_memory_request(cfg.step_memory)
            if cfg.evaluate_gpus > 0:
                one.set_accelerator_type(cfg.gpu_resource).set_accelerator_limit(cfg.evaluate_gpus)
            on_cluster(one, "narrate", cfg, component="narrate_chapter")
        book = steps.assemble_book(manuscript=manuscript, voice=voice, version=plan.outputs["version"],
                                   narrated=dsl.Collected(one.outputs["narrated"]), settings=params_narrate)
        book.set_caching_options(False).set_display_name("assemble the book")
        on_cluster(book, "narrate", cfg, component="assemble_book")

    return narrate
