"""Plain HTTP routes: liveness, readiness, the model list, Prometheus metrics, the API schema.

Which routes a key guards (with `VOXGATE_API_KEY` set):
- open: `/health` and `/ready` (probes must not need a secret; they say only "up" or not,
  and while the server starts, which startup stage it is in),
  the browser client's files (`/`, `/web/*`: the page is public, what it may do is decided
  where it connects);
- the API key or a client secret: `/v1/models`, `/openapi.json` and everything under `/v1`;
- `/metrics`: the API key or `metrics_key` (Prometheus gets a key that can do nothing else).
  Its labels carry no local paths (vLLM's `model_name` is the served name, not the folder).
`/docs` and `/redoc` exist only without a key: they are pages that fetch the schema without
credentials.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from voxgate.server.auth import API_KEY, METRICS_KEY
from voxgate.server.startup import StartupSnapshot, StartupState

router = APIRouter()
_STARTED = int(time.time())


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    """The process can serve, now or after its start (liveness): 503 once the engine is dead,
    for the moment before the process exits and is replaced."""
    services = getattr(request.app.state, "services", None)
    if services is not None and services.engine_watch.dead:
        return JSONResponse({"status": "engine_dead"}, status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    """The backbone and its engine can serve (readiness); while the server starts, 503 with
    the stage under way and how long the finished ones took."""
    services = getattr(request.app.state, "services", None)
    startup = getattr(request.app.state, "startup", None)
    if services is None and startup is not None and startup.state is StartupState.STARTING:
        return JSONResponse(_starting(startup.snapshot()), status_code=503)
    if services is None or services.engine_watch.dead or not services.backbone.is_healthy:
        return JSONResponse({"status": "unavailable"}, status_code=503)
    if services.drain.draining:
        # Shutting down: no new clients here (liveness, /health, stays fine meanwhile).
        return JSONResponse({"status": "draining"}, status_code=503)
    return JSONResponse(
        {
            "status": "ready",
            "backbone": services.backbone.name,
            "realtime_sessions": services.sessions.active,
        }
    )


def _starting(start: StartupSnapshot) -> dict[str, object]:
    return {
        "status": "starting",
        "stage": start.stage,
        "stage_elapsed_s": round(start.stage_elapsed_s, 1),
        "stages_done": {stage: round(took, 1) for stage, took in start.stages_done.items()},
    }


@router.get("/v1/models", dependencies=[Depends(API_KEY)])
async def models(request: Request) -> dict[str, object]:
    services = request.app.state.services
    return {
        "object": "list",
        "data": [
            {
                "id": services.model_name,
                "object": "model",
                "created": _STARTED,
                "owned_by": "voxgate",
            }
        ],
    }


@router.get("/metrics", dependencies=[Depends(METRICS_KEY)])
async def metrics() -> Response:
    """Prometheus metrics: voxgate's own and the engine's (`vllm:*`), one registry."""
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


@router.get("/openapi.json", include_in_schema=False, dependencies=[Depends(API_KEY)])
async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())
