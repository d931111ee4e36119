"""The BentoML service: `bentoml serve serving.service:NarratorService` (or `narrator serve`).

Settings come from params.yaml ($NARRATOR_PARAMS, else ./params.yaml), section `serving`: the GPU request and
worker count are read when this module is imported (BentoML needs them at class definition). The API is
serving/api.py, mounted at /, with the OpenAI- and ElevenLabs-compatible routes (serving/openai_api.py,
serving/elevenlabs_api.py); BentoML adds /healthz, /readyz (NarratorService.__is_ready__) and /metrics.
The watermark key comes from $NARRATOR_WATERMARK_KEY or $NARRATOR_WATERMARK_KEY_FILE; without it the service
does not become ready and refuses to synthesize.
"""

from __future__ import annotations

import os

import bentoml

from narrator.config import load_params
from serving import elevenlabs_api, openai_api
from serving.api import Metrics, NarratorServer, create_app

PARAMS_ENV = "NARRATOR_PARAMS"

_params = load_params(os.environ.get(PARAMS_ENV) or None)
_cfg = _params.serving
_resources = {"gpu": _cfg.gpus} if _cfg.gpus else {"cpu": "1"}


def _server() -> NarratorServer:
    return bentoml.get_current_service().server


# the service's own API, with the OpenAI- and ElevenLabs-compatible routes (serving/openai_api.py, elevenlabs_api.py)
app = create_app(_server, routers=[openai_api.router(_server), elevenlabs_api.router(_server)])


@bentoml.asgi_app(app, path="/")
@bentoml.service(name="narrator", resources=_resources, workers=_cfg.workers,
                 traffic={"timeout": _cfg.traffic_timeout_s}, http={"port": _cfg.port})
class NarratorService:
    """Many narrators' voices from one process (LRU within a memory budget), authenticated and watermarked."""

    def __init__(self) -> None:
        self.server = NarratorServer(_params, Metrics(), device="auto")  # the GPU when there is one

    def __is_ready__(self) -> bool:
        return self.server.ready()

    @bentoml.on_shutdown
    def _stop(self) -> None:
        self.server.close()
