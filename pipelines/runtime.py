"""What runs inside a Kubeflow step besides the step's core function: its settings and its errors.

Each component (pipelines/steps.py) receives its own slice of params.yaml as a JSON string, the sections the step
table (`components.STEPS`) says its core function reads, so KFP's step cache notices a changed setting of that
step, and only of that step, the way DVC's `params:` do. `step_settings_json` makes the string; inside the step,
`running(step, settings)` turns it back into Params that refuse to read any other section, sets up logging, and
leaves a failing step's own error message where the local runner can show it (`pipelines.run.run_local`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from narrator.config import Params
from narrator.errors import NarratorError

ERROR_FILE_ENV = "NARRATOR_STEP_ERROR_FILE"  # where a failing step leaves its error for the local runner


class StepFailed(NarratorError):
    """A pipeline step failed; the message is the step's own error."""


def step_settings_json(params: Params, step: str) -> str:
    """The sections `step` reads, as one line of JSON (the compiled pipeline's header comment lists every
    argument's default, and a multi-line default would break out of it)."""
    from components import step_settings

    return json.dumps(step_settings(params, step), sort_keys=True, ensure_ascii=False)


@contextmanager
def running(step: str, settings: str) -> Iterator[Params]:
    """The body of a Kubeflow step: yields the step's Params (its sections only). Any error leaves
    "`step` failed: MESSAGE" in $NARRATOR_STEP_ERROR_FILE (set by the local runner) and fails the step."""
    from components import step_params
    from narrator.log import setup_logging

    setup_logging("info", "text")
    try:
        yield step_params(json.loads(settings), step)
    except BaseException as error:
        message = f"step {step} failed: {error}" if isinstance(error, NarratorError) else \
            f"step {step} failed: {type(error).__name__}: {error} (a bug in narrator; the step's log has the traceback)"
        error_file = os.environ.get(ERROR_FILE_ENV)
        if error_file:
            Path(error_file).write_text(message + "\n", encoding="utf-8")
        raise
