"""Who may do what: bearer tokens with roles, checked on every HTTP route and WebSocket.

Configuration (``auth:`` in the service YAML)::

    auth:
      tokens:
        - {name: cam1-box, role: camera, token_env: CELLWATCH_TOKEN_CAM1, streams: [cam1]}
        - {name: dashboard, role: viewer, token_env: CELLWATCH_TOKEN_DASHBOARD}
        - {name: ops, role: admin, token: "at-least-16-characters"}

Roles (``PERMISSIONS``): a *camera* pushes frames to the streams it names and
nothing else; a *viewer* reads status, results, tracks, events and alerts; an
*admin* reads, manages streams, zones and resets, and may also push to any
stream (commissioning a cell means pushing test frames; a separate camera
token for that would only be copied around).

With no tokens configured authentication is off and every request acts as
``LOCAL`` (an admin); ``check_bind`` allows that only on a loopback address.

Secrets never leave this module in readable form: they are ``SecretStr`` in
the settings, masked before pydantic sees them (so validation errors of an
enclosing settings model cannot echo them), absent from ``Principal`` and
from every error message, and ``RedactTokens`` scrubs them from log records.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote, quote_plus

from fastapi import HTTPException, Request, Security, WebSocket
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, field_validator, model_validator
from starlette.websockets import WebSocketState

log = logging.getLogger("cellwatch.auth")

MIN_TOKEN_LENGTH = 16
ACTIONS = frozenset({"push", "read", "manage"})
Role = Literal["camera", "viewer", "admin"]
PERMISSIONS: dict[str, set[str]] = {
    "camera": {"push"},  # only to the streams listed in its entry
    "viewer": {"read"},
    "admin": {"push", "read", "manage"},
}

WS_UNAUTHENTICATED = 4401
WS_FORBIDDEN = 4403

# Fields of a token entry that are not secret; any other value (``token``, or
# a misspelt key that probably holds a token) is masked before validation.
_PLAIN_FIELDS = frozenset({"name", "role", "token_env", "streams"})


class _Hidden:
    """Stands in for a non-string secret so that a type error cannot print it."""

    def __repr__(self) -> str:
        return "<hidden non-string value>"


def _mask(entry: Any) -> Any:
    if not isinstance(entry, dict):
        return entry
    masked = {}
    for key, value in entry.items():
        if key in _PLAIN_FIELDS or value is None or isinstance(value, SecretStr):
            masked[key] = value
        else:
            masked[key] = SecretStr(value) if isinstance(value, str) else _Hidden()
    return masked


class TokenEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    name: str = Field(..., min_length=1, max_length=64, description="who holds the token; appears in logs")
    role: Role
    token: SecretStr | None = Field(None, description=f"the token itself, at least {MIN_TOKEN_LENGTH} characters")
    token_env: str | None = Field(None, min_length=1, description="name of an environment variable holding the token")
    streams: list[str] | None = Field(None, description="camera only: the stream ids it may push to")

    _secret: SecretStr = PrivateAttr()

    @model_validator(mode="before")
    @classmethod
    def _mask_secrets(cls, data: Any) -> Any:
        return _mask(data)

    @model_validator(mode="after")
    def _check(self) -> TokenEntry:
        if (self.token is None) == (self.token_env is None):
            raise ValueError(f"token entry {self.name!r}: give exactly one of 'token' and 'token_env'")
        if self.token_env is not None:
            value = os.environ.get(self.token_env)
            if value is None:
                raise ValueError(f"token entry {self.name!r}: environment variable {self.token_env} is not set")
            secret = SecretStr(value)
        else:
            secret = self.token
        if len(secret.get_secret_value()) < MIN_TOKEN_LENGTH:
            where = f"environment variable {self.token_env}" if self.token_env else "its token"
            raise ValueError(f"token entry {self.name!r}: {where} is shorter than {MIN_TOKEN_LENGTH} characters")
        if self.role == "camera" and not self.streams:
            raise ValueError(f"token entry {self.name!r}: a camera token needs 'streams' (the streams it may push to)")
        if self.role != "camera" and self.streams is not None:
            raise ValueError(f"token entry {self.name!r}: 'streams' is for camera tokens only, not {self.role}")
        self._secret = secret
        return self

    def secret(self) -> str:
        """The token (read from ``token_env`` at validation time)."""
        return self._secret.get_secret_value()


class AuthSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    tokens: list[TokenEntry] = Field(default_factory=list, description="empty: no authentication (loopback only)")

    @model_validator(mode="before")
    @classmethod
    def _mask_secrets(cls, data: Any) -> Any:
        # Masking here, not only in TokenEntry, keeps secrets out of the errors
        # of an enclosing model (pydantic reports each model's raw input, and
        # only the outermost model's hide_input_in_errors counts).
        if isinstance(data, dict) and isinstance(data.get("tokens"), list):
            return {**data, "tokens": [_mask(entry) for entry in data["tokens"]]}
        return data

    @field_validator("tokens")
    @classmethod
    def _unique(cls, tokens: list[TokenEntry]) -> list[TokenEntry]:
        names = [t.name for t in tokens]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"duplicate token entry name(s) {repeated}")
        for i, first in enumerate(tokens):
            for second in tokens[i + 1:]:
                if first.secret() == second.secret():
                    raise ValueError(f"token entries {first.name!r} and {second.name!r} have the same token")
        return tokens


@dataclass(frozen=True)
class Principal:
    """An authenticated caller. Holds no secret, so it is safe to log."""

    name: str
    role: str
    streams: frozenset[str] | None = None


LOCAL = Principal("local", "admin")  # every caller when authentication is off


def _digest(token: str) -> bytes:
    # Comparing fixed-length digests keeps the comparison time independent of
    # the configured tokens' lengths too.
    return hashlib.sha256(token.encode("utf-8")).digest()


class Authenticator:
    def __init__(self, settings: AuthSettings) -> None:
        self._entries = [
            (_digest(t.secret()), Principal(t.name, t.role, frozenset(t.streams) if t.streams else None))
            for t in settings.tokens
        ]
        self._secrets = tuple(t.secret() for t in settings.tokens)

    @property
    def enabled(self) -> bool:
        return bool(self._entries)

    def __repr__(self) -> str:
        return f"Authenticator(enabled={self.enabled}, principals={[p.name for _, p in self._entries]})"

    def identify(self, authorization_header: str | None) -> Principal | None:
        """The principal whose token the ``Authorization: Bearer <token>`` header carries, or None.

        The presented token is compared with every configured token, matched
        or not, so the time taken does not say which entry (if any) matched.
        """
        if not self.enabled:
            return LOCAL
        presented = _bearer_token(authorization_header)
        if presented is None:
            return None
        digest = _digest(presented)
        found = None
        for expected, principal in self._entries:
            if hmac.compare_digest(digest, expected) and found is None:
                found = principal
        return found

    def allowed(self, principal: Principal | None, action: str, stream_id: str | None = None) -> bool:
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r}; actions are {sorted(ACTIONS)}")
        if principal is None:
            return False
        if action not in PERMISSIONS.get(principal.role, set()):
            return False
        if principal.role == "camera":
            return stream_id is not None and principal.streams is not None and stream_id in principal.streams
        return True

    def redactor(self) -> RedactTokens:
        """A logging filter that scrubs this authenticator's tokens."""
        return RedactTokens(self._secrets)


def _bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def _refusal(auth: Authenticator, principal: Principal | None, presented: bool, action: str,
             stream_id: str | None) -> tuple[int, str] | None:
    """None when allowed, else ``(401 | 403, message)``; the message names no secret."""
    if principal is None:
        return 401, "invalid bearer token" if presented else "missing bearer token"
    if auth.allowed(principal, action, stream_id):
        return None
    if principal.role == "camera" and action == "push":
        return 403, f"camera {principal.name!r} may not push to stream {stream_id!r}"
    return 403, f"role {principal.role!r} may not {action}"


def _authenticator(app: Any) -> Authenticator:
    auth = getattr(app.state, "auth", None)
    if not isinstance(auth, Authenticator):
        # Fail closed: a route that asks for a permission must never run unchecked.
        raise RuntimeError("app.state.auth is not set to an Authenticator")
    return auth


# Declared for the OpenAPI document only; the header is parsed by ``identify``.
_bearer_scheme = HTTPBearer(auto_error=False, description="a token from auth.tokens in the service config")


def require(action: str):
    """A dependency for HTTP routes: the caller's ``Principal``, or 401/403.

    The authenticator is ``app.state.auth``; the stream is the path parameter
    ``stream_id`` when the route has one.
    """
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}; actions are {sorted(ACTIONS)}")

    async def dependency(request: Request, _: Any = Security(_bearer_scheme)) -> Principal:
        auth = _authenticator(request.app)
        header = request.headers.get("authorization")
        principal = auth.identify(header)
        stream_id = request.path_params.get("stream_id")
        refused = _refusal(auth, principal, header is not None, action, stream_id)
        if refused is None:
            return principal
        status, message = refused
        log.warning("request refused", extra={"status": status, "reason": message, "path": request.url.path,
                                              "principal": principal.name if principal else None})
        headers = {"WWW-Authenticate": "Bearer" if header is None else 'Bearer error="invalid_token"'}
        raise HTTPException(status, message, headers=headers if status == 401 else None)

    dependency.__name__ = f"require_{action}"
    return dependency


async def authorize_websocket(websocket: WebSocket, action: str, stream_id: str | None) -> Principal | None:
    """The caller's ``Principal``, or None after refusing the connection.

    The token comes from the ``Authorization: Bearer`` header or, for browsers
    (whose WebSocket API cannot set headers), the ``token`` query parameter.
    The query parameter is the weaker choice: URLs end up in proxy and access
    logs and in browser history. Install ``RedactTokens`` on the log handlers
    (it also scrubs the URL-encoded form), prefer the header for cameras, and
    give browser dashboards viewer tokens only.

    When refused, the connection is accepted (so the client can read why),
    sent ``{"error": ...}`` and closed with 4401 (no or unknown token) or 4403
    (the role may not). When allowed, it is left as it was: the caller accepts.
    """
    auth = _authenticator(websocket.app)
    header = websocket.headers.get("authorization")
    if header is None and websocket.query_params.get("token"):
        header = f"Bearer {websocket.query_params['token']}"
    principal = auth.identify(header)
    refused = _refusal(auth, principal, header is not None, action, stream_id)
    if refused is None:
        return principal
    status, message = refused
    log.warning("websocket refused", extra={"status": status, "reason": message, "path": websocket.url.path,
                                            "principal": principal.name if principal else None})
    if websocket.client_state == WebSocketState.CONNECTING:
        await websocket.accept()
    await websocket.send_json({"error": message})
    await websocket.close(WS_UNAUTHENTICATED if status == 401 else WS_FORBIDDEN, message[:120])
    return None


def is_loopback(host: str) -> bool:
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def check_bind(host: str, auth_enabled: bool) -> None:
    """Refuse to serve without authentication anywhere but on loopback."""
    if not auth_enabled and not is_loopback(host):
        raise ValueError(
            f"binding {host or '(all interfaces)'} without tokens is refused: "
            "configure auth.tokens or bind 127.0.0.1"
        )


# Attributes every LogRecord has; anything else came in through ``extra=``.
_RECORD_FIELDS = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


# The value of a ``token`` query parameter (``access_token`` too), up to the
# next parameter, space, quote or the end. Tokens a client sends in the URL
# are scrubbed whether configured or not: a wrong one is often a real secret
# of another cell or a typo of this one's, and uvicorn logs every URL.
_TOKEN_PARAMETER = re.compile(r"(token=)[^&\s\"']+", re.IGNORECASE)


class RedactTokens(logging.Filter):
    """Replaces configured tokens (also URL-encoded) and the value of every
    ``token=`` query parameter in log records with ``***``.

    Add it to the handlers (``handler.addFilter``), not a logger: a logger's
    filters do not see records propagated from its children (uvicorn.access).
    A message that needed scrubbing is formatted here, so its ``record.args``
    is cleared; other records pass unchanged.
    """

    def __init__(self, tokens: Iterable[str | SecretStr]) -> None:
        super().__init__()
        forms = set()
        for token in tokens:
            value = token.get_secret_value() if isinstance(token, SecretStr) else token
            if value:
                forms.update({value, quote(value, safe=""), quote_plus(value, safe="")})
        # Longest first, so a token containing another is replaced whole.
        self._forms = sorted(forms, key=len, reverse=True)

    def __repr__(self) -> str:
        return f"RedactTokens({len(self._forms)} forms)"

    def redact(self, text: str) -> str:
        for form in self._forms:
            text = text.replace(form, "***")
        return _TOKEN_PARAMETER.sub(r"\1***", text)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
            redacted = self.redact(message)
        except Exception:  # noqa: BLE001 - a filter must not raise into the code that logs
            # Arguments that do not format: logging's error report would print
            # them raw, so only the scrubbed msg is kept.
            message, redacted = None, self.redact(f"{record.msg} (log arguments hidden: they did not format)")
        if redacted != message:
            record.msg = redacted
            record.args = None
        for key, value in list(vars(record).items()):
            if key not in _RECORD_FIELDS and not key.startswith("_") and isinstance(value, str):
                setattr(record, key, self.redact(value))
        if record.exc_info:
            text = logging.Formatter().formatException(record.exc_info)
            redacted = self.redact(text)
            if redacted != text:
                # The traceback mentions a token: keep only the scrubbed text
                # (exc_text for logging.Formatter, "exception" for JSON logs).
                record.exc_info = None
                record.exc_text = redacted
                record.exception = redacted
        elif record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True


def install_log_redaction(auth: Authenticator, handlers: Iterable[logging.Handler] | None = None) -> RedactTokens:
    """Adds ``auth``'s redactor to ``handlers`` (default: the root logger's,
    where ``logs.configure`` puts every record), with or without configured
    tokens: ``token=`` query parameters are scrubbed either way."""
    redactor = auth.redactor()
    for handler in logging.getLogger().handlers if handlers is None else handlers:
        handler.addFilter(redactor)
    return redactor
