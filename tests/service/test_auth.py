"""Bearer tokens and roles (service.auth) on a small in-process FastAPI app.

The real app's role matrix over a live server is tested with the app; here
the building blocks are: the permission matrix through ``require`` and
``authorize_websocket``, config validation, the loopback rule, and that no
token ever shows up in a repr, an error or a log line.
"""

from __future__ import annotations

import hmac
import io
import json
import logging
import warnings
from urllib.parse import quote

import pytest
from fastapi import Depends, FastAPI, WebSocket
from pydantic import BaseModel, ValidationError
from starlette.exceptions import StarletteDeprecationWarning
from starlette.websockets import WebSocketDisconnect

from service.auth import (
    LOCAL,
    PERMISSIONS,
    WS_FORBIDDEN,
    WS_UNAUTHENTICATED,
    Authenticator,
    AuthSettings,
    Principal,
    RedactTokens,
    TokenEntry,
    authorize_websocket,
    check_bind,
    install_log_redaction,
    require,
)
from service.logs import JsonFormatter

with warnings.catch_warnings():
    # starlette asks for httpx2 on import; the project pins httpx 0.28.1, which still works.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

CAMERA_TOKEN = "cam1-token-0123456789abcdef"
VIEWER_TOKEN = "viewer+token/0123456789=="  # characters that change when URL-encoded
ADMIN_TOKEN = "admin-token-fedcba9876543210"
BAD_TOKEN = "not-a-configured-token-000000"
SECRETS = (CAMERA_TOKEN, VIEWER_TOKEN, ADMIN_TOKEN, BAD_TOKEN)


def _settings() -> AuthSettings:
    return AuthSettings.model_validate({"tokens": [
        {"name": "cam1-box", "role": "camera", "token": CAMERA_TOKEN, "streams": ["cam1"]},
        {"name": "dashboard", "role": "viewer", "token": VIEWER_TOKEN},
        {"name": "ops", "role": "admin", "token": ADMIN_TOKEN},
    ]})


def _app(auth: Authenticator) -> FastAPI:
    app = FastAPI()
    app.state.auth = auth

    @app.get("/v1/streams/{stream_id}")
    async def status(stream_id: str, who: Principal = Depends(require("read"))) -> dict:
        return {"stream_id": stream_id, "who": who.name}

    @app.post("/v1/streams/{stream_id}/reset")
    async def reset(stream_id: str, who: Principal = Depends(require("manage"))) -> dict:
        return {"reset": stream_id, "who": who.name}

    @app.websocket("/v1/streams/{stream_id}/ingest")
    async def ingest(websocket: WebSocket, stream_id: str) -> None:
        who = await authorize_websocket(websocket, "push", stream_id)
        if who is None:
            return
        await websocket.accept()
        await websocket.send_json({"accepted": who.name})
        await websocket.close()

    return app


@pytest.fixture
def client():
    with TestClient(_app(Authenticator(_settings()))) as client:
        yield client


def _headers(token: str | None) -> dict[str, str]:
    return {} if token is None else {"Authorization": f"Bearer {token}"}


def _push(client: TestClient, stream: str, headers: dict[str, str] | None = None, query: str = "") -> tuple:
    """``("accepted", name)`` or ``(close code, error message)``."""
    with client.websocket_connect(f"/v1/streams/{stream}/ingest{query}", headers=headers or {}) as ws:
        first = ws.receive_json()
        if "accepted" in first:
            return "accepted", first["accepted"]
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        return closed.value.code, first["error"]


# caller -> (read, manage, push to cam1, push to cam2)
MATRIX = {
    "no token": (None, (401, 401, WS_UNAUTHENTICATED, WS_UNAUTHENTICATED)),
    "bad token": (BAD_TOKEN, (401, 401, WS_UNAUTHENTICATED, WS_UNAUTHENTICATED)),
    "camera(cam1)": (CAMERA_TOKEN, (403, 403, "accepted", WS_FORBIDDEN)),
    "viewer": (VIEWER_TOKEN, (200, 403, WS_FORBIDDEN, WS_FORBIDDEN)),
    "admin": (ADMIN_TOKEN, (200, 200, "accepted", "accepted")),
}


@pytest.mark.parametrize("caller", MATRIX)
def test_role_matrix(client, caller):
    token, expected = MATRIX[caller]
    read = client.get("/v1/streams/cam1", headers=_headers(token))
    manage = client.post("/v1/streams/cam1/reset", headers=_headers(token))
    push1 = _push(client, "cam1", _headers(token))
    push2 = _push(client, "cam2", _headers(token))
    assert (read.status_code, manage.status_code, push1[0], push2[0]) == expected
    for response in (read, manage):
        if response.status_code == 401:
            assert response.headers["www-authenticate"].startswith("Bearer")
        else:
            assert "www-authenticate" not in response.headers
        for secret in SECRETS:
            assert secret not in response.text
    for _, message in (push1, push2):
        for secret in SECRETS:
            assert secret not in message


def test_refusals_say_why_without_the_token(client):
    viewer = client.post("/v1/streams/cam1/reset", headers=_headers(VIEWER_TOKEN))
    assert viewer.json()["detail"] == "role 'viewer' may not manage"
    assert _push(client, "cam2", _headers(CAMERA_TOKEN)) == (WS_FORBIDDEN, "camera 'cam1-box' may not push to stream 'cam2'")
    assert client.get("/v1/streams/cam1").json()["detail"] == "missing bearer token"
    bad = client.get("/v1/streams/cam1", headers=_headers(BAD_TOKEN))
    assert bad.json()["detail"] == "invalid bearer token"
    assert bad.headers["www-authenticate"] == 'Bearer error="invalid_token"'


def test_the_principal_reaches_the_route(client):
    assert client.get("/v1/streams/cam1", headers=_headers(VIEWER_TOKEN)).json()["who"] == "dashboard"
    assert _push(client, "cam1", _headers(CAMERA_TOKEN)) == ("accepted", "cam1-box")


@pytest.mark.parametrize("header", [f"Basic {ADMIN_TOKEN}", ADMIN_TOKEN, "Bearer", "Bearer ", f"Token {ADMIN_TOKEN}"])
def test_only_the_bearer_scheme_is_accepted(client, header):
    assert client.get("/v1/streams/cam1", headers={"Authorization": header}).status_code == 401
    assert _push(client, "cam1", {"Authorization": header})[0] == WS_UNAUTHENTICATED


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "BeArEr"])
def test_the_scheme_is_case_insensitive(client, scheme):
    assert client.get("/v1/streams/cam1", headers={"Authorization": f"{scheme} {ADMIN_TOKEN}"}).status_code == 200


def test_websocket_token_from_the_query_parameter(client):
    assert _push(client, "cam1", query=f"?token={quote(ADMIN_TOKEN, safe='')}") == ("accepted", "ops")
    assert _push(client, "cam2", query=f"?token={quote(CAMERA_TOKEN, safe='')}")[0] == WS_FORBIDDEN
    assert _push(client, "cam1", query=f"?token={BAD_TOKEN}")[0] == WS_UNAUTHENTICATED
    # The header wins over the query parameter.
    assert _push(client, "cam1", _headers(CAMERA_TOKEN), query=f"?token={ADMIN_TOKEN}") == ("accepted", "cam1-box")


def test_token_from_an_environment_variable(monkeypatch):
    monkeypatch.setenv("CELLWATCH_TEST_TOKEN", ADMIN_TOKEN)
    settings = AuthSettings.model_validate(
        {"tokens": [{"name": "ops", "role": "admin", "token_env": "CELLWATCH_TEST_TOKEN"}]})
    with TestClient(_app(Authenticator(settings))) as client:
        assert client.post("/v1/streams/cam9/reset", headers=_headers(ADMIN_TOKEN)).json()["who"] == "ops"
        assert client.post("/v1/streams/cam9/reset", headers=_headers(VIEWER_TOKEN)).status_code == 401


def test_without_tokens_everything_is_allowed():
    auth = Authenticator(AuthSettings())
    assert not auth.enabled
    assert auth.identify(None) is LOCAL
    with TestClient(_app(auth)) as client:
        assert client.get("/v1/streams/cam1").status_code == 200
        assert client.post("/v1/streams/cam1/reset").status_code == 200
        assert _push(client, "cam2") == ("accepted", "local")


def test_an_app_without_an_authenticator_fails_closed():
    app = _app(Authenticator(_settings()))
    del app.state.auth
    with TestClient(app) as client, pytest.raises(RuntimeError, match="app.state.auth"):
        client.get("/v1/streams/cam1", headers=_headers(ADMIN_TOKEN))


def test_permissions_table_and_allowed():
    assert PERMISSIONS == {"camera": {"push"}, "viewer": {"read"}, "admin": {"push", "read", "manage"}}
    auth = Authenticator(_settings())
    camera = auth.identify(f"Bearer {CAMERA_TOKEN}")
    assert camera == Principal("cam1-box", "camera", frozenset({"cam1"}))
    assert auth.allowed(camera, "push", "cam1")
    assert not auth.allowed(camera, "push", None)
    assert not auth.allowed(None, "read")
    with pytest.raises(ValueError, match="unknown action"):
        auth.allowed(camera, "write")
    with pytest.raises(ValueError, match="unknown action"):
        require("write")


def test_every_configured_token_is_compared(monkeypatch):
    calls = []
    real = hmac.compare_digest

    def counting(a, b):
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    auth = Authenticator(_settings())
    for header, expected in [(f"Bearer {CAMERA_TOKEN}", "cam1-box"),  # the first entry: no early exit
                             (f"Bearer {ADMIN_TOKEN}", "ops"), (f"Bearer {BAD_TOKEN}", None)]:
        calls.clear()
        principal = auth.identify(header)
        assert (principal.name if principal else None) == expected
        assert len(calls) == 3
    calls.clear()
    with TestClient(_app(auth)) as client:
        assert client.get("/v1/streams/cam1", headers=_headers(VIEWER_TOKEN)).status_code == 200
    assert len(calls) == 3


# ------------------------------------------------------------------ config

def _entry(**fields):
    return {"name": "x", "role": "admin", "token": "t" * 16, **fields}


@pytest.mark.parametrize("tokens, message", [
    ([_entry(token="short-secret")], "shorter than 16"),
    ([_entry(name="a", token=ADMIN_TOKEN), _entry(name="b", token=ADMIN_TOKEN)], "'a' and 'b' have the same token"),
    ([_entry(name="a", token=ADMIN_TOKEN), _entry(name="a", token=VIEWER_TOKEN)], "duplicate token entry name"),
    ([_entry(role="camera", token=CAMERA_TOKEN)], "camera token needs 'streams'"),
    ([_entry(role="camera", token=CAMERA_TOKEN, streams=[])], "camera token needs 'streams'"),
    ([_entry(role="viewer", token=VIEWER_TOKEN, streams=["cam1"])], "for camera tokens only"),
    ([_entry(token=ADMIN_TOKEN, token_env="CELLWATCH_TEST_TOKEN")], "exactly one of 'token' and 'token_env'"),
    ([{"name": "x", "role": "admin"}], "exactly one of 'token' and 'token_env'"),
    ([_entry(token=None, token_env="CELLWATCH_UNSET_TOKEN_VARIABLE")], "CELLWATCH_UNSET_TOKEN_VARIABLE is not set"),
    ([_entry(role="operator", token=ADMIN_TOKEN)], "role"),
    ([_entry(tokn=ADMIN_TOKEN)], "Extra inputs are not permitted"),
    ([_entry(token=12345678901234567890)], "valid string"),
])
def test_invalid_configurations_are_rejected_without_echoing_tokens(monkeypatch, tokens, message):
    monkeypatch.setenv("CELLWATCH_TEST_TOKEN", VIEWER_TOKEN)
    monkeypatch.delenv("CELLWATCH_UNSET_TOKEN_VARIABLE", raising=False)

    class Enclosing(BaseModel):  # as in service.config.Settings: only its own hide_input_in_errors counts
        auth: AuthSettings

    for build in (lambda: AuthSettings.model_validate({"tokens": tokens}),
                  lambda: Enclosing.model_validate({"auth": {"tokens": tokens}})):
        with pytest.raises(ValidationError) as error:
            build()
        text = str(error.value) + repr(error.value.errors())
        assert message in text
        for secret in (*SECRETS, "short-secret", "12345678901234567890"):
            assert secret not in text


def test_short_token_from_the_environment(monkeypatch):
    monkeypatch.setenv("CELLWATCH_TEST_TOKEN", "short-secret")
    with pytest.raises(ValidationError, match="environment variable CELLWATCH_TEST_TOKEN is shorter") as error:
        TokenEntry(name="x", role="admin", token_env="CELLWATCH_TEST_TOKEN")
    assert "short-secret" not in str(error.value)


def test_settings_survive_a_dump_and_revalidation():
    settings = _settings()
    again = AuthSettings.model_validate(settings.model_dump())
    assert [t.secret() for t in again.tokens] == [CAMERA_TOKEN, VIEWER_TOKEN, ADMIN_TOKEN]


def test_no_token_in_reprs():
    settings = _settings()
    auth = Authenticator(settings)
    principal = auth.identify(f"Bearer {ADMIN_TOKEN}")
    texts = [repr(settings), str(settings), repr(settings.tokens[0]), settings.model_dump_json(), str(principal),
             repr(principal), repr(auth), repr(auth.redactor())]
    for text in texts:
        for secret in SECRETS:
            assert secret not in text
    assert "ops" in str(principal)


# -------------------------------------------------------------------- bind

@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LocalHost",
                                  "::ffff:127.0.0.1"])
def test_loopback_binds_need_no_tokens(host):
    check_bind(host, auth_enabled=False)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1", "::", "", "cell-7.example", "128.0.0.1"])
def test_other_binds_need_tokens(host):
    with pytest.raises(ValueError, match="without tokens is refused: configure auth.tokens or bind 127.0.0.1"):
        check_bind(host, auth_enabled=False)
    check_bind(host, auth_enabled=True)


def test_bind_message_names_the_host():
    with pytest.raises(ValueError, match=r"^binding 0\.0\.0\.0 without tokens is refused"):
        check_bind("0.0.0.0", False)


# -------------------------------------------------------------------- logs

def test_logs_are_redacted(caplog):
    auth = Authenticator(_settings())
    caplog.handler.addFilter(auth.redactor())
    logger = logging.getLogger("cellwatch.test_auth")
    with caplog.at_level(logging.INFO, logger="cellwatch.test_auth"):
        logger.info("token in the message %s", ADMIN_TOKEN)
        logger.info("token in the args: %s %r", CAMERA_TOKEN, {"t": VIEWER_TOKEN})
        logger.info(f"token in the message itself {ADMIN_TOKEN}")
        logger.info("in an extra field", extra={"header": f"Bearer {ADMIN_TOKEN}"})
        logger.info('"WebSocket /v1/streams/cam1/ingest?token=%s" 403', quote(VIEWER_TOKEN, safe=""))
        try:
            raise RuntimeError(f"bad header Bearer {CAMERA_TOKEN}")
        except RuntimeError:
            logger.exception("failed")
    records = [r for r in caplog.records if r.name == "cellwatch.test_auth"]
    assert len(records) == 6
    formatted = [JsonFormatter().format(r) for r in records] + [logging.Formatter().format(r) for r in records]
    text = caplog.text + "\n".join(formatted)
    for secret in (CAMERA_TOKEN, VIEWER_TOKEN, ADMIN_TOKEN, quote(VIEWER_TOKEN, safe="")):
        assert secret not in text
    assert records[0].getMessage() == "token in the message ***"
    assert records[3].header == "Bearer ***"
    assert records[4].getMessage() == '"WebSocket /v1/streams/cam1/ingest?token=***" 403'
    assert "bad header Bearer ***" in formatted[5] and "RuntimeError" in formatted[5]


def test_refusals_are_logged_with_names_not_tokens(client, caplog):
    with caplog.at_level(logging.INFO, logger="cellwatch.auth"):
        client.get("/v1/streams/cam1", headers=_headers(BAD_TOKEN))
        client.post("/v1/streams/cam1/reset", headers=_headers(VIEWER_TOKEN))
        _push(client, "cam2", _headers(CAMERA_TOKEN))
    refusals = [r for r in caplog.records if r.name == "cellwatch.auth"]
    assert [(r.status, r.principal) for r in refusals] == [(401, None), (403, "dashboard"), (403, "cam1-box")]
    text = "\n".join(JsonFormatter().format(r) for r in refusals)
    for secret in SECRETS:
        assert secret not in text


def test_redaction_prefers_the_longest_token():
    redactor = RedactTokens(["a" * 16, "a" * 16 + "-longer"])
    assert redactor.redact("x " + "a" * 16 + "-longer y") == "x *** y"


def _access_record(path: str) -> logging.LogRecord:
    """A record shaped like uvicorn.access's for a request to ``path``."""
    return logging.LogRecord("uvicorn.access", logging.INFO, "h11_impl.py", 1, '%s - "%s %s HTTP/%s" %d',
                             ("127.0.0.1:50000", "GET", path, "1.1", 403), None)


def test_token_query_parameters_are_redacted_without_configured_tokens():
    # With no tokens configured a wrong token in a URL is still someone's secret.
    redactor = Authenticator(AuthSettings()).redactor()
    record = _access_record("/v1/alerts?token=wrong-secret-123456&since=0")
    assert redactor.filter(record) is True
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == '127.0.0.1:50000 - "GET /v1/alerts?token=***&since=0 HTTP/1.1" 403'

    websocket = logging.LogRecord("uvicorn.error", logging.INFO, "", 1, '%s - "WebSocket %s" 403',
                                  ("127.0.0.1:50001", "/v1/alerts?since=0&TOKEN=wrong%2Fsecret%3D%3D"), None)
    redactor.filter(websocket)
    assert websocket.getMessage() == '127.0.0.1:50001 - "WebSocket /v1/alerts?since=0&TOKEN=***" 403'

    extra = logging.LogRecord("cellwatch.test_auth", logging.INFO, "", 1, "refused", (), None)
    extra.url = "ws://cell/v1/alerts?token=wrong-secret-123456 'quoted' ?access_token=other-secret-1\tnext"
    redactor.filter(extra)
    assert extra.url == "ws://cell/v1/alerts?token=*** 'quoted' ?access_token=***\tnext"


def test_configured_tokens_and_query_parameters_are_both_redacted():
    record = _access_record(f"/v1/alerts?since=0&token={quote(VIEWER_TOKEN, safe='')}")
    record.args = (f"header {ADMIN_TOKEN}",) + record.args[1:]
    Authenticator(_settings()).redactor().filter(record)
    assert record.getMessage() == 'header *** - "GET /v1/alerts?since=0&token=*** HTTP/1.1" 403'


def test_records_without_tokens_pass_unchanged():
    record = _access_record("/v1/alerts?since=0")
    RedactTokens([]).filter(record)
    assert record.args == ("127.0.0.1:50000", "GET", "/v1/alerts?since=0", "1.1", 403)


def test_arguments_that_do_not_format_are_hidden_not_raised():
    record = logging.LogRecord("cellwatch.test_auth", logging.INFO, "", 1, "token=%s and %s", (BAD_TOKEN,), None)
    assert RedactTokens([]).filter(record) is True
    assert record.getMessage() == "token=*** and %s (log arguments hidden: they did not format)"


def test_install_log_redaction_covers_the_root_handlers_without_tokens(monkeypatch):
    # What `cellwatch serve` does after logs.configure: no tokens configured,
    # the filter is installed anyway and a uvicorn.access URL is scrubbed.
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    monkeypatch.setattr(logging.getLogger(), "handlers", [handler])
    redactor = install_log_redaction(Authenticator(AuthSettings()))
    assert handler.filters == [redactor]
    logging.getLogger().handle(_access_record("/v1/alerts?token=wrong-secret-123456&since=0"))
    text = out.getvalue()
    assert "wrong-secret-123456" not in text
    assert json.loads(text)["message"].endswith('"GET /v1/alerts?token=***&since=0 HTTP/1.1" 403')
