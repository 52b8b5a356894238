"""Client secrets (`POST /v1/realtime/client_secrets`) and the browser page, over a fake backbone.

Minting is driven with the official SDK (`client.realtime.client_secrets.create`, its HTTP client
being Starlette's `TestClient`); the secrets are then presented to `/v1/realtime` the way a
browser does (the subprotocol) and to the REST routes. Expiry is tested by moving the store's
clock, not by waiting.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from fakes import FakeBackbone
from fastapi import FastAPI
from fastapi.testclient import TestClient
from in_process import app_over
from openai import AuthenticationError, OpenAI, RateLimitError
from openai.types.realtime.client_secret_create_response import ClientSecretCreateResponse
from pydantic import SecretStr
from realtime_wire import receive
from starlette.testclient import WebSocketTestSession
from starlette.websockets import WebSocketDisconnect

from voxgate.server.client_secret_store import ClientSecretsFull, ClientSecretStore
from voxgate.server.settings import ClientSecretSettings
from voxgate.streaming.config import SessionConfig

pytestmark = pytest.mark.timeout(30)

KEY = "server-key-0123456789"
CONFIG = SessionConfig(instructions="be kind", voice="joe")


def app_for(fake: FakeBackbone, **overrides: Any) -> FastAPI:
    """The app with the server key `KEY` (unless `overrides` say otherwise)."""
    return app_over(fake, **({"api_key": SecretStr(KEY)} | overrides))


@pytest.fixture
def app(fake: FakeBackbone) -> FastAPI:
    return app_for(fake)


@pytest.fixture
def http(client: TestClient) -> TestClient:
    """The app's client, named for what these tests send through it."""
    return client


def sdk(http: TestClient, key: str = KEY) -> OpenAI:
    """The official SDK, sending its requests through the in-process app."""
    return OpenAI(base_url=f"{http.base_url}/v1", api_key=key, http_client=http, max_retries=0)


def connect(http: TestClient, secret: str) -> WebSocketTestSession:
    """Open /v1/realtime as a browser does: `realtime` plus the key in a subprotocol."""
    return http.websocket_connect(
        "/v1/realtime", subprotocols=["realtime", f"openai-insecure-api-key.{secret}"]
    )


def assert_refused(http: TestClient, secret: str) -> None:
    with connect(http, secret) as ws:
        error = receive(ws)
        assert (error["type"], error["error"]["code"]) == ("error", "invalid_api_key")
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert closed.value.code == 1008


def mint(http: TestClient, body: Any = None, key: str | None = KEY, **kw: Any) -> Any:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return http.post("/v1/realtime/client_secrets", json=body, headers=headers, **kw)


def assert_error(response: Any, status: int, code: str, param: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error


# --- minting ----------------------------------------------------------------------------------


def test_the_sdk_mints_a_short_lived_secret(http: TestClient) -> None:
    before = int(time.time())
    secret = sdk(http).realtime.client_secrets.create()
    assert secret.value.startswith("ek_") and len(secret.value) > 40
    assert before + 60 <= secret.expires_at <= int(time.time()) + 60
    assert secret.session.type == "realtime"
    assert secret.session.audio.output.voice == "joe"
    # Every mint is a new, unguessable secret.
    assert sdk(http).realtime.client_secrets.create().value != secret.value


def test_the_response_is_openais_shape(http: TestClient) -> None:
    body = mint(http, {"expires_after": {"anchor": "created_at", "seconds": 600}}).json()
    ClientSecretCreateResponse.model_validate(body, strict=False)
    assert set(body) == {"value", "expires_at", "session"}
    assert body["session"]["object"] == "realtime.session"
    assert abs(body["expires_at"] - (time.time() + 600)) <= 2


def test_a_session_config_is_checked_and_echoed(http: TestClient) -> None:
    secret = sdk(http).realtime.client_secrets.create(
        expires_after={"anchor": "created_at", "seconds": 120},
        session={
            "type": "realtime",
            "instructions": "You are a pirate.",
            "output_modalities": ["text"],
            "audio": {
                "input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": 900}},
                "output": {"voice": "joe"},
            },
            "tools": [
                {
                    "type": "function",
                    "name": "weather",
                    "description": "The weather in a city.",
                    "parameters": {
                        "type": "object",
                        "properties": {"city": {"type": "string"}},
                        "required": ["city"],
                    },
                }
            ],
        },
    )
    assert secret.session.instructions == "You are a pirate."
    assert [t.name for t in secret.session.tools] == ["weather"]
    assert secret.session.output_modalities == ["text"]
    assert secret.session.audio.input.turn_detection.silence_duration_ms == 900


def test_minting_needs_the_api_key_itself(http: TestClient) -> None:
    assert_error(mint(http, key=None), 401, "invalid_api_key")
    assert_error(mint(http, key="wrong"), 401, "invalid_api_key")
    with pytest.raises(AuthenticationError):
        sdk(http, key="wrong").realtime.client_secrets.create()
    # A client secret opens sessions; it never mints another (a leaked one cannot be renewed).
    secret = mint(http).json()["value"]
    assert_error(mint(http, key=secret), 401, "invalid_api_key")


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"expires_after": {"anchor": "created_at", "seconds": 5}}, "invalid_value", None),
        ({"expires_after": {"seconds": 7201}}, "invalid_value", "expires_after.seconds"),
        ({"expires_after": {"anchor": "first_use", "seconds": 60}}, "invalid_value", None),
        ({"session": {"type": "transcription"}}, "unsupported_feature", "session.type"),
        (
            {"session": {"type": "realtime", "tools": [{"type": "function"}]}},
            "missing_required_parameter",
            "session.tools[0].name",
        ),
        (
            {"session": {"type": "realtime", "audio": {"output": {"voice": "nobody"}}}},
            "invalid_value",
            "session.audio.output.voice",
        ),
        ({"session": {"type": "realtime", "max_output_tokens": 0}}, "invalid_value", None),
        ({"sesion": {}}, "unknown_parameter", "sesion"),
        ([1, 2], "invalid_json", None),
    ],
    ids=[
        "too short",
        "too long",
        "other anchor",
        "transcription session",
        "a tool without a name",
        "unknown voice",
        "zero tokens",
        "unknown field",
        "not an object",
    ],
)
def test_bad_requests_are_refused(
    http: TestClient, body: Any, code: str, param: str | None
) -> None:
    assert_error(mint(http, body), 400, code, param)


def test_a_body_that_is_not_json_or_too_large(http: TestClient) -> None:
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    response = http.post("/v1/realtime/client_secrets", content=b"{nope", headers=headers)
    assert_error(response, 400, "invalid_json")
    huge = {"session": {"type": "realtime", "instructions": "x" * (300 << 10)}}
    assert_error(mint(http, huge), 413, "request_too_large")


def test_the_longest_lifetime_is_a_setting(fake: FakeBackbone) -> None:
    app = app_for(fake, client_secrets=ClientSecretSettings(default_ttl_s=30, max_ttl_s=300))
    with TestClient(app) as http:
        assert abs(mint(http).json()["expires_at"] - (time.time() + 30)) <= 2
        assert mint(http, {"expires_after": {"seconds": 300}}).status_code == 200
        assert_error(mint(http, {"expires_after": {"seconds": 301}}), 400, "invalid_value")


def test_the_store_is_bounded(fake: FakeBackbone) -> None:
    app = app_for(fake, client_secrets=ClientSecretSettings(max_active=2))
    with TestClient(app) as http:
        store: ClientSecretStore = app.state.client_secrets
        now = store.clock()
        mint(http, {"expires_after": {"seconds": 30}})
        mint(http, {"expires_after": {"seconds": 60}})
        full = mint(http)
        assert_error(full, 429, "rate_limited")
        assert 1 <= int(full.headers["Retry-After"]) <= 30
        with pytest.raises(RateLimitError):
            sdk(http).realtime.client_secrets.create()
        store.clock = lambda: now + 31  # the first has expired: its place is free
        assert mint(http).status_code == 200
        assert len(store) == 2


# --- using a secret ---------------------------------------------------------------------------


def test_a_secret_opens_the_socket_as_a_browser_sends_it(http: TestClient) -> None:
    secret = sdk(http).realtime.client_secrets.create().value
    with connect(http, secret) as ws:
        created = receive(ws)
        assert created["type"] == "session.created"
        assert ws.accepted_subprotocol == "realtime"
    # It is not used up: a secret opens sessions until it expires (as at OpenAI).
    with connect(http, secret) as ws:
        assert receive(ws)["type"] == "session.created"
    # ... in every form the API key may take, and on the REST routes the key opens.
    with http.websocket_connect(f"/v1/realtime?api_key={secret}") as ws:
        assert receive(ws)["type"] == "session.created"
    voices = http.get("/v1/audio/voices", headers={"Authorization": f"Bearer {secret}"})
    assert [v["id"] for v in voices.json()["data"]] == ["joe"]


def test_an_unknown_or_tampered_secret_is_refused(http: TestClient) -> None:
    secret = mint(http).json()["value"]
    assert_refused(http, "ek_" + "A" * 43)
    assert_refused(http, secret[:-1] + ("A" if secret[-1] != "A" else "B"))
    assert http.get("/v1/audio/voices", headers={"Authorization": "Bearer ek_x"}).status_code == 401


def test_an_expired_secret_opens_nothing(http: TestClient) -> None:
    secret = mint(http, {"expires_after": {"seconds": 10}}).json()["value"]
    store: ClientSecretStore = http.app.state.client_secrets  # type: ignore[attr-defined]
    with connect(http, secret) as session:
        assert receive(session)["type"] == "session.created"
        now = store.clock()
        store.clock = lambda: now + 10
        assert_refused(http, secret)
        headers = {"Authorization": f"Bearer {secret}"}
        assert http.get("/v1/audio/voices", headers=headers).status_code == 401
        # A session outlives its secret.
        session.send_json({"type": "session.update", "session": {"type": "realtime"}})
        assert receive(session)["type"] == "session.updated"
    assert len(store) == 0  # an expired secret is forgotten when it is seen


def test_the_secrets_session_config_is_the_initial_one(http: TestClient) -> None:
    secret = mint(
        http,
        {
            "session": {
                "type": "realtime",
                "instructions": "You are a pirate.",
                "audio": {
                    "input": {
                        "transcription": None,
                        "turn_detection": {"type": "server_vad", "silence_duration_ms": 900},
                    }
                },
            }
        },
    ).json()["value"]
    with connect(http, secret) as ws:
        session = receive(ws)["session"]
        assert session["instructions"] == "You are a pirate."
        assert session["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 900
        assert session["audio"]["input"]["transcription"] is None
        # The client may still change it, as with any session.
        ws.send_json(
            {"type": "session.update", "session": {"type": "realtime", "instructions": "x"}}
        )
        assert receive(ws)["session"]["instructions"] == "x"
    # The API key itself gets the server's defaults, as before.
    with http.websocket_connect("/v1/realtime", headers={"Authorization": f"Bearer {KEY}"}) as ws:
        assert receive(ws)["session"]["instructions"] != "You are a pirate."


def test_without_an_api_key_anyone_connects_and_a_secret_still_configures(
    fake: FakeBackbone,
) -> None:
    with TestClient(app_for(fake, api_key=None)) as http:
        with http.websocket_connect("/v1/realtime", subprotocols=["realtime"]) as ws:
            assert receive(ws)["type"] == "session.created"
        body = {"session": {"type": "realtime", "instructions": "Be terse."}}
        secret = mint(http, body, key=None).json()["value"]
        with connect(http, secret) as ws:
            assert receive(ws)["session"]["instructions"] == "Be terse."


# --- the store on its own ---------------------------------------------------------------------


def test_store_expiry_and_bound() -> None:
    now = [1000.0]
    store = ClientSecretStore(max_active=2, clock=lambda: now[0], wall_clock=lambda: 5_000.0)
    first = store.issue(10, CONFIG)
    assert first.expires_at == 5_010
    assert store.get(first.value) is first
    assert store.get(first.value + "x") is None
    store.issue(20, CONFIG)
    with pytest.raises(ClientSecretsFull) as full:
        store.issue(10, CONFIG)
    assert full.value.retry_after_s == 10
    now[0] += 10  # the first expires at exactly its deadline
    assert store.get(first.value) is None
    assert store.issue(10, CONFIG).value != first.value
    assert len(store) == 2


# --- the page -----------------------------------------------------------------------------------


def test_the_page_is_served_at_the_root(http: TestClient) -> None:
    page = http.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/web/app.js">' in page.text
    for name, media_type in [
        ("app.js", "text/javascript"),
        ("audio-worklet.js", "text/javascript"),
        ("style.css", "text/css"),
    ]:
        asset = http.get(f"/web/{name}")
        assert asset.status_code == 200, name
        assert asset.headers["content-type"].startswith(media_type)
    assert "registerProcessor" in http.get("/web/audio-worklet.js").text


def test_the_page_learns_whether_it_needs_a_secret(fake: FakeBackbone) -> None:
    for api_key, required in [(SecretStr(KEY), True), (None, False)]:
        with TestClient(app_for(fake, api_key=api_key)) as http:
            config = http.get("/web/config.json")
            assert config.json() == {"client_secret_required": required}


@pytest.mark.parametrize(
    "path", ["/web/nope.js", "/web/..%2f..%2fserver%2fapp.py", "/web/.hidden.js", "/web/cli.py"]
)
def test_nothing_else_is_served(http: TestClient, path: str) -> None:
    assert http.get(path).status_code == 404


def test_a_transcription_prompt_is_refused_at_minting_where_it_is_unused(
    fake: FakeBackbone,
) -> None:
    fake.takes_transcription_prompt = False
    hinted = {
        "session": {
            "type": "realtime",
            "audio": {"input": {"transcription": {"model": "whisper-1", "prompt": "Ada"}}},
        }
    }
    with TestClient(app_for(fake)) as http:
        assert_error(
            mint(http, hinted),
            400,
            "unsupported_parameter",
            "session.audio.input.transcription.prompt",
        )
        del hinted["session"]["audio"]["input"]["transcription"]["prompt"]
        assert mint(http, hinted).status_code == 200
