"""The browser client (`clients/web/`, package data of `voxgate.clients`), served at `/`.

`GET /` is the page, `GET /web/NAME` its scripts and styles, `GET /web/config.json` what the
page needs to know of the server. Only the files in that one folder
are served, by name, with their media type; nothing else on disk is reachable from here. The
page needs no authentication to load: what it can do is decided where it connects
(`/v1/realtime` takes the API key or a client secret).
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

router = APIRouter(include_in_schema=False)

MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
"""The kinds of file the page is made of (AudioWorklet modules must come as JavaScript)."""
HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}


def _asset(name: str) -> Response:
    suffix = name[name.rfind(".") :] if "." in name else ""
    if "/" in name or "\\" in name or name.startswith(".") or suffix not in MEDIA_TYPES:
        return Response("not found", status_code=404, media_type="text/plain")
    file = resources.files("voxgate.clients").joinpath("web", name)
    if not file.is_file():
        return Response("not found", status_code=404, media_type="text/plain")
    return Response(file.read_bytes(), media_type=MEDIA_TYPES[suffix], headers=HEADERS)


@router.get("/")
async def index() -> Response:
    return _asset("index.html")


@router.get("/web/config.json")
async def config(request: Request) -> Response:
    """What the page must know before it connects: whether it needs a client secret. (Any
    401 says as much; this way the page asks without a failed request.)"""
    required = request.app.state.services.settings.api_key is not None
    return JSONResponse({"client_secret_required": required}, headers=HEADERS)


@router.get("/web/{name}")
async def asset(name: str) -> Response:
    return _asset(name)
