"""Who may send a request body, and how big it may be: checked before the body is read.

FastAPI reads and parses a route's body before it runs the route's
dependencies, so the ``require`` dependencies of ``service.auth`` come too
late to stop an unauthenticated 200 MB JSON upload from being read, parsed and
held in memory. ``BodyGuard`` is a plain ASGI middleware that runs first, on
every HTTP request with a body method (POST, PUT, PATCH):

* authentication: with tokens configured, a request without a valid bearer
  token is answered 401 before a byte of its body is read (which *role* may
  call the route is still the route's own ``require`` dependency: 403);
* size: a declared ``Content-Length`` above the limit is answered 413 at once;
  a chunked body is read up to the limit and answered 413 when it goes over.
  The limit is ``upload_limit`` for the image upload routes and
  ``json_limit`` for everything else (zones, stream creation).

Only the standard ASGI interface is used; it imports nothing from the app.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from .auth import Authenticator

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class BodyGuard:
    def __init__(self, app: Callable, auth: Authenticator, json_limit: int, upload_limit: int,
                 upload_paths: Iterable[str] = ()) -> None:
        self.app = app
        self.auth = auth
        self.json_limit = json_limit
        self.upload_limit = upload_limit
        self.upload_paths = frozenset(upload_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        if self.auth.enabled:
            authorization = headers.get("authorization")
            if self.auth.identify(authorization) is None:
                message = "invalid bearer token" if authorization is not None else "missing bearer token"
                challenge = "Bearer" if authorization is None else 'Bearer error="invalid_token"'
                await _answer(send, 401, message, {"www-authenticate": challenge})
                return
        path = scope["path"]
        limit = self.upload_limit if path in self.upload_paths else self.json_limit
        what = "upload" if path in self.upload_paths else "JSON body"
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await _answer(send, 413, f"request body of {declared} bytes exceeds the {what} limit of {limit} bytes")
            return
        body, more, chunks = 0, True, []
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            body += len(chunk)
            if body > limit:
                await _answer(send, 413, f"request body exceeds the {what} limit of {limit} bytes")
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        await self.app(scope, _replay(b"".join(chunks), receive), send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the app the body already read, then defers to the real one."""
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _answer(send: Send, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    payload = json.dumps({"detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
           (b"connection", b"close")]
    raw += [(key.encode("latin-1"), value.encode("latin-1")) for key, value in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})
