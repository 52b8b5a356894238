"""Plain HTTP routes: liveness, readiness, the model list and Prometheus metrics."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

router = APIRouter()
_STARTED = int(time.time())


@router.get("/health")
async def health() -> dict[str, str]:
    """The process is up (liveness)."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    """The backbone and its engine can serve (readiness)."""
    services = getattr(request.app.state, "services", None)
    if services is None or not services.backbone.is_healthy:
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


@router.get("/v1/models")
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


@router.get("/metrics")
async def metrics() -> Response:
    """Prometheus metrics: voxgate's own and the engine's (`vllm:*`), one registry."""
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
