"""Who may use the server: the key on every route, the browser boundary (Origin, Host), keys
refused at start, and keys kept out of the logs. Over the fake backbone (which has no vLLM
metrics: that no metric label names a local path is checked on the real engine, in
tests/integration/test_metrics_engine.py)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import fake_server
import httpx
import numpy as np
import pytest
import soundfile as sf
import websockets
from fakes import FakeBackbone
from fastapi.testclient import TestClient
from in_process import TEST_KEY, app_over
from pydantic import SecretStr, ValidationError
from realtime_wire import receive
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import WebSocketDenialResponse
from starlette.websockets import WebSocketDisconnect

from voxgate.server.settings import Settings

pytestmark = pytest.mark.timeout(60)

METRICS_KEY = "metrics-key-0123456789"


def silent_wav() -> bytes:
    out = io.BytesIO()
    sf.write(out, np.zeros(1600, np.float32), 16_000, format="WAV")
    return out.getvalue()


# --- the key on every route -------------------------------------------------------------------

OPEN, KEY, KEY_ONLY, METRICS = "open", "key or secret", "key only", "key or metrics key"
ROUTES: dict[tuple[str, str], str] = {
    ("GET", "/health"): OPEN,
    ("GET", "/ready"): OPEN,
    ("GET", "/"): OPEN,
    ("GET", "/web/config.json"): OPEN,
    ("GET", "/web/{name}"): OPEN,
    ("GET", "/metrics"): METRICS,
    ("GET", "/openapi.json"): KEY,
    ("GET", "/v1/models"): KEY,
    ("GET", "/v1/audio/voices"): KEY,
    ("POST", "/v1/audio/speech"): KEY,
    ("POST", "/v1/audio/transcriptions"): KEY,
    ("POST", "/v1/audio/translations"): KEY,
    ("POST", "/v1/audio/descriptions"): KEY,
    ("POST", "/v1/realtime/client_secrets"): KEY_ONLY,
    ("POST", "/v1/feedback"): KEY,
    ("POST", "/v1/feedback/preferences"): KEY,
    ("WS", "/v1/realtime"): KEY,
}
"""What each route needs when the server has a key. A new route fails the test below until
it is listed here (and so decided)."""

CREDENTIALS = ("none", "wrong", "empty", "key", "client secret", "metrics key")


def request(client: TestClient, method: str, path: str, headers: dict[str, str]):
    match (method, path):
        case ("GET", "/web/{name}"):
            return client.get("/web/app.js", headers=headers)
        case ("POST", "/v1/audio/speech"):
            body = {"model": "tts-1", "voice": "joe", "input": "Hi."}
            return client.post(path, json=body, headers=headers)
        case (
            "POST",
            "/v1/audio/transcriptions" | "/v1/audio/translations" | "/v1/audio/descriptions",
        ):
            files = {"file": ("a.wav", silent_wav(), "audio/wav")}
            return client.post(path, data={"model": "whisper-1"}, files=files, headers=headers)
        case ("POST", "/v1/realtime/client_secrets" | "/v1/feedback" | "/v1/feedback/preferences"):
            return client.post(path, json={}, headers=headers)
        case ("GET", _):
            return client.get(path, headers=headers)
    raise AssertionError(f"no request for {method} {path}")


def realtime_allowed(client: TestClient, headers: dict[str, str]) -> bool:
    with client.websocket_connect("/v1/realtime", headers=headers) as ws:
        event = receive(ws)
        if event["type"] == "session.created":
            return True
        assert event["error"]["code"] == "invalid_api_key"
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 1008
        return False


def test_every_route_by_every_credential() -> None:
    app = app_over(FakeBackbone(), api_key=SecretStr(TEST_KEY), metrics_key=SecretStr(METRICS_KEY))
    served = {
        ("WS" if isinstance(r, WebSocketRoute) else m, r.path)
        for r in app.routes
        if isinstance(r, Route | WebSocketRoute)
        for m in (getattr(r, "methods", None) or {"WS"}) - {"HEAD"}
    }
    assert served == set(ROUTES), "decide who may use each route: list it in ROUTES"
    with TestClient(app) as client:
        minted = client.post(
            "/v1/realtime/client_secrets", headers={"Authorization": f"Bearer {TEST_KEY}"}
        )
        secret = minted.json()["value"]
        presented = {
            "none": {},
            "wrong": {"Authorization": "Bearer wrong-key-0123456789"},
            "empty": {"Authorization": "Bearer "},
            "key": {"Authorization": f"Bearer {TEST_KEY}"},
            "client secret": {"Authorization": f"Bearer {secret}"},
            "metrics key": {"Authorization": f"Bearer {METRICS_KEY}"},
        }
        allowed = {
            OPEN: set(CREDENTIALS),
            KEY: {"key", "client secret"},
            KEY_ONLY: {"key"},
            METRICS: {"key", "metrics key"},
        }
        table = []
        for (method, path), rule in ROUTES.items():
            for credential in CREDENTIALS:
                headers = presented[credential]
                if method == "WS":
                    passed = realtime_allowed(client, headers)
                else:
                    response = request(client, method, path, headers)
                    # Feedback is off here: past the key, it is refused as such.
                    let_in = 404 if path.startswith("/v1/feedback") else 200
                    assert response.status_code in (let_in, 401), (method, path, response.text)
                    if response.status_code == 401:
                        assert response.json()["error"]["code"] == "invalid_api_key"
                    passed = response.status_code == let_in
                table.append((method, path, credential, passed))
                assert passed == (credential in allowed[rule]), (method, path, credential)
    assert len(table) == len(ROUTES) * len(CREDENTIALS)


def test_docs_pages_exist_only_without_a_key() -> None:
    with TestClient(app_over(FakeBackbone())) as client:
        assert client.get("/docs").status_code == 200
        assert client.get("/openapi.json").status_code == 200
    with TestClient(app_over(FakeBackbone(), api_key=SecretStr(TEST_KEY))) as client:
        assert client.get("/docs").status_code == 404
        assert client.get("/redoc").status_code == 404


# --- keys refused at start --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"VOXGATE_API_KEY": ""}, "at least 16 characters"),
        ({"VOXGATE_API_KEY": "short"}, "at least 16 characters"),
        ({"VOXGATE_API_KEY": "with spaces in it, long"}, "without spaces"),
        ({"VOXGATE_HOST": "0.0.0.0"}, "no API key on a non-loopback address"),
    ],
    ids=["empty", "short", "spaces", "keyless-remote"],
)
def test_serve_refuses_to_start_with_a_weak_key(env: dict[str, str], message: str) -> None:
    environment = {k: v for k, v in os.environ.items() if k != "VOXGATE_API_KEY"}
    done = subprocess.run(
        [sys.executable, "-m", "voxgate.server.cli", "serve"],
        env=environment | env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr


def test_keyless_remote_serving_is_the_operators_explicit_choice() -> None:
    Settings(host="0.0.0.0", allow_remote_without_key=True)
    Settings(host="0.0.0.0", api_key=SecretStr(TEST_KEY))
    with pytest.raises(ValidationError):
        Settings(host="::", api_key=None)
    assert Settings(host="0.0.0.0", api_key=SecretStr(TEST_KEY)).effective_allowed_hosts() == ["*"]


# --- the browser boundary ---------------------------------------------------------------------

EVIL = "http://evil.example"
LOCAL_WS = "ws://localhost:8000/v1/realtime"


@pytest.fixture
def local() -> Iterator[TestClient]:
    """A keyless server on loopback, as `voxgate serve` runs by default (its Host allowlist
    too), reached as http://localhost:8000."""
    app = app_over(FakeBackbone(), allowed_hosts=None)
    with TestClient(app, base_url="http://localhost:8000") as client:
        yield client


def test_a_foreign_page_cannot_open_a_session(local) -> None:
    with pytest.raises(WebSocketDenialResponse) as denied:
        with local.websocket_connect(LOCAL_WS, headers={"Origin": EVIL}):
            pass  # pragma: no cover - refused before the handshake
    assert denied.value.status_code == 403
    assert denied.value.json()["error"]["code"] == "origin_not_allowed"


@pytest.mark.parametrize(
    "origin",
    [EVIL, "null", "http://localhost:9999", "file://", "http://localhost.evil.example:8000"],
)
def test_a_foreign_page_cannot_post(local, origin: str) -> None:
    # A "simple" cross-site request: no preflight, the browser just sends it.
    body = json.dumps({"model": "tts-1", "voice": "joe", "input": "Hi."})
    headers = {"Origin": origin, "Content-Type": "text/plain"}
    response = local.post("/v1/audio/speech", content=body, headers=headers)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "origin_not_allowed"
    assert local.app.state.services.backbone.inner.synthesize_calls == []


def test_dns_rebinding_is_refused_by_host(local) -> None:
    # evil.example resolves to 127.0.0.1: the page is "same origin" with itself.
    headers = {"Host": "evil.example", "Origin": EVIL}
    response = local.get("/v1/models", headers=headers)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "host_not_allowed"
    with pytest.raises(WebSocketDenialResponse) as denied:
        with local.websocket_connect(LOCAL_WS, headers={"Host": "evil.example"}):
            pass  # pragma: no cover
    assert denied.value.json()["error"]["code"] == "host_not_allowed"


def test_the_servers_own_page_and_programs_are_welcome(local) -> None:
    own = {"Origin": "http://localhost:8000"}
    assert local.get("/v1/models", headers=own).status_code == 200
    with local.websocket_connect(LOCAL_WS, headers=own) as ws:
        assert receive(ws)["type"] == "session.created"
    assert local.get("/v1/models").status_code == 200  # no Origin: not a browser page
    assert local.get("/health", headers={"Host": "127.0.0.1:8000"}).status_code == 200
    assert local.get("/health", headers={"Host": "[::1]:8000"}).status_code == 200


def test_an_allowed_origin_gets_cors() -> None:
    app = app_over(FakeBackbone(), allowed_hosts=None, allowed_origins=["https://app.example.com"])
    with TestClient(app, base_url="http://localhost:8000") as client:
        origin = {"Origin": "https://app.example.com"}
        response = client.get("/v1/models", headers=origin)
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == "https://app.example.com"
        preflight = client.options(
            "/v1/audio/speech",
            headers=origin
            | {
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        assert preflight.status_code == 200
        with client.websocket_connect(LOCAL_WS, headers=origin) as ws:
            assert receive(ws)["type"] == "session.created"
        assert client.get("/v1/models", headers={"Origin": EVIL}).status_code == 403


# --- keys and secrets never in the log --------------------------------------------------------


def test_the_log_holds_no_key_and_no_client_secret(tmp_path: Path) -> None:
    """A real server process (uvicorn's access log on): the key and a client secret presented
    in every way a client can present them, then the whole log is searched for them."""

    async def clients(server: fake_server.FakeServer) -> str:
        async with httpx.AsyncClient(base_url=server.base_url) as http:
            assert (await http.get(f"/v1/models?api_key={TEST_KEY}")).status_code == 200
            minted = await http.post(
                "/v1/realtime/client_secrets", headers={"Authorization": f"Bearer {TEST_KEY}"}
            )
            secret = minted.json()["value"]
            assert (await http.get(f"/?token={secret}")).status_code == 200
            assert (await http.get(f"/v1/models?api_key={secret}")).status_code == 200
            assert (await http.get("/v1/models?api_key=ek_notasecretbutshaped")).status_code == 401
        for url, protocols in (
            (f"{server.ws_url}?api_key={TEST_KEY}", None),
            (server.ws_url, ["realtime", f"openai-insecure-api-key.{secret}"]),
        ):
            async with websockets.connect(url, subprotocols=protocols) as ws:
                assert json.loads(await ws.recv())["type"] == "session.created"
        return secret

    env = {"VOXGATE_API_KEY": TEST_KEY, "VOXGATE_LOG_LEVEL": "debug"}
    with fake_server.launch(tmp_path, env) as server:
        secret = asyncio.run(clients(server))
    log = server.log_path.read_text()
    assert "GET /v1/models?api_key=[redacted]" in log  # the access log did log those lines
    assert TEST_KEY not in log
    assert secret not in log and secret[3:] not in log
    assert not re.search(r"ek_[A-Za-z0-9_-]{8,}", log)
