"""The API's shared shapes: request and answer models, the zone-set JSON
Schema, the OpenAPI ``responses`` helpers every route module uses, and the
WebSocket close codes.

The models here and in ``service.events`` (``Event``) are the API's single
source of truth; the served OpenAPI document is built from them and checked
against tests/service/data/openapi_snapshot.json. pydantic and FastAPI, plus
constants and ``Event`` from service.config, service.events and
service.streams; imports nothing from the app or the other route modules.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Query
from pydantic import BaseModel, ConfigDict, Field

from ..config import STREAM_ID_RULE
from ..events import Event
from ..streams import PUSH


class EventsPage(BaseModel):
    """A page of a stream's events (schema ``cellwatch.event/1``, also in service/schemas/event.schema.json)."""

    stream_id: str
    events: list[Event]
    gap: Event | None = Field(None, description="when events after `since` are no longer kept")
    last_seq: int


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer of the HTTP API."""

    detail: str = Field(description="what was wrong, naming the field or the input")
    errors: list[dict[str, Any]] | None = Field(
        None, description="request validation (422) only: each problem's location (loc), message (msg) and type")


class ReadyStatus(BaseModel):
    status: str = Field(description="ready | starting | failed")
    engine: str | None = None
    error: str | None = Field(None, description="why start-up failed")


ERROR_MEANINGS = {
    400: "the body could not be read (malformed JSON, multipart or image)",
    401: "no bearer token, or one that is not configured",
    403: "the token's role may not do this",
    404: "no such stream (or nothing to show yet)",
    409: "the stream exists already, or the stream limit is reached",
    413: "the body is larger than the configured limit",
    415: "unsupported content type",
    422: "invalid input; `detail` names the field",
    503: "the service is starting (engine loading) or its start-up failed",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error codes, all with the ErrorBody shape."""
    return {code: {"model": ErrorBody, "description": ERROR_MEANINGS[code]} for code in codes}


READ_ERRORS = (401, 403, 503)  # any route behind require() and the stream manager
STREAM_ERRORS = (*READ_ERRORS, 404, 422)
WRITE_ERRORS = (*STREAM_ERRORS, 413)  # body methods pass BodyGuard's size limit
IMAGE_OR_JSON = {"content": {"application/json": {}, "image/png": {}},
                 "description": "the result as JSON, or with overlay=png the frame drawn with it"}

# WebSocket close codes beside the protocol's own (1003 unsupported data,
# 1008 policy violation, 1009 too big): 44xx mirror the HTTP answers.
WS_UNSUPPORTED = 1003
WS_POLICY = 1008
WS_TOO_BIG = 1009
WS_UNKNOWN_STREAM = 4404
WS_NOT_PUSH = 4409

Overlay = Annotated[Literal["png"] | None, Query(description="png: the frame drawn with its result, as PNG")]

_POINTS = {"type": "array", "items": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}}
_RING = {"type": "object", "additionalProperties": False, "minProperties": 1, "maxProperties": 1,
         "properties": {"polygon": {**_POINTS, "minItems": 3}, "distance": {"type": "number", "exclusiveMinimum": 0}}}
# The shape of a zone set; what a schema cannot say (a simple polygon, rings
# that enclose each other, a well-conditioned homography) is checked by
# service.zones and answered 422 with the reason.
ZONES_SCHEMA = {
    "type": "object", "additionalProperties": False, "required": ["units", "hazard"],
    "description": "hazard polygon, optional protective and warning rings (a polygon or a distance), in "
                   "pixels or in floor metres through a homography from >= 4 image/floor point pairs",
    "properties": {
        "units": {"enum": ["pixels", "metres"]},
        "hazard": {**_POINTS, "minItems": 3},
        "protective": _RING,
        "warning": _RING,
        "homography": {"type": "object", "additionalProperties": False, "required": ["image", "floor"],
                       "properties": {"image": {**_POINTS, "minItems": 4}, "floor": {**_POINTS, "minItems": 4}}},
    },
}


class StreamCreate(BaseModel):
    # a misspelt field (e.g. "zone") must not create a stream that can never warn
    model_config = ConfigDict(extra="forbid")

    id: str = Field(..., description=STREAM_ID_RULE, min_length=1, max_length=64,
                    pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # as config.STREAM_ID (Rust regex: $ is the end)
    source: str = Field(PUSH, description="'push', rtsp://..., http(s)://... (MJPEG) or a file path")
    options: dict[str, Any] = Field(default_factory=dict, description="source options, e.g. loop, fps")
    zones: dict[str, Any] | None = Field(None, description="zone set (see PUT /v1/streams/{id}/zones)",
                                         json_schema_extra={"anyOf": [ZONES_SCHEMA, {"type": "null"}]})
