"""The BentoML service: `bentoml serve serving.service:NarratorService` (or `narrator serve`).

Settings come from params.yaml ($NARRATOR_PARAMS, else ./params.yaml), section `serving`: the GPU request and
worker count are read when this module is imported (BentoML needs them at class definition). The API is
serving/api.py, mounted at /, with the OpenAI- and ElevenLabs-compatible routes (serving/openai_api.py,
serving/elevenlabs_api.py), serves /metrics itself (by route template, optionally behind a key: BentoML's own
metrics, labelled by raw path, are off); BentoML adds /healthz and /readyz (NarratorService.__is_ready__).
Each worker loads the champion voices in a background thread as it starts (serving.preload_champions): /healthz
answers at once, /readyz only once they are loaded and warmed up, so the first request costs what a warm one
does. Each worker tunes glibc's malloc (serving.malloc_arena_max, malloc_mmap_threshold_kb) so its memory levels
off under sustained load instead of fragmenting upward (bench.serve_load --soak, docs/benchmarks.md).
The watermark key comes from $NARRATOR_WATERMARK_KEY or $NARRATOR_WATERMARK_KEY_FILE; without it the service
does not become ready and refuses to synthesize.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading

from narrator.threads import configure_waiting

configure_waiting()  # before anything loads torch: libgomp reads how its idle workers wait only then

import bentoml  # noqa: E402

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
app = create_app(_server, routers=[openai_api.router(_server), elevenlabs_api.router(_server)], settings=_cfg)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8  # glibc's mallopt parameters


def tune_malloc(arenas: int, mmap_threshold_kb: int) -> bool:
    """glibc's malloc in this process: at most `arenas` arenas (one per thread by default: a many-threaded server
    spreads freed memory over many), and blocks from `mmap_threshold_kb` up mapped on their own and returned when
    freed (glibc otherwise raises its threshold as tensors come and go, so they land in the arenas and stay);
    memory above twice that at a heap's top is given back. 0 leaves glibc's default. False without glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        done = True
        if arenas > 0:
            done &= bool(libc.mallopt(M_ARENA_MAX, arenas))
        if mmap_threshold_kb > 0:
            done &= bool(libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold_kb * 1024))
            done &= bool(libc.mallopt(M_TRIM_THRESHOLD, 2 * mmap_threshold_kb * 1024))
        return done
    except (OSError, AttributeError):
        return False


@bentoml.asgi_app(app, path="/")
@bentoml.service(name="narrator", resources=_resources, workers=_cfg.workers,
                 traffic={"timeout": _cfg.traffic_timeout_s}, http={"port": _cfg.port},
                 metrics={"enabled": False, "namespace": "bentoml_service"})
class NarratorService:
    """Many narrators' voices from one process (LRU within a memory budget), authenticated and watermarked."""

    def __init__(self) -> None:
        tune_malloc(_cfg.malloc_arena_max, _cfg.malloc_mmap_threshold_kb)
        self.server = NarratorServer(_params, Metrics(), device="auto")  # the GPU when there is one
        threading.Thread(target=self.server.preload, name="preload-champions", daemon=True).start()

    def __is_ready__(self) -> bool:
        return self.server.ready()

    @bentoml.on_shutdown
    def _stop(self) -> None:
        self.server.close()
