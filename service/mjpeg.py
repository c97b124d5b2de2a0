"""Reading MJPEG over HTTP: the request and the parts of a ``multipart/x-mixed-replace`` body.

``mjpeg_connection`` and ``request_mjpeg`` open the HTTP(S) connection and
send the GET (Basic auth from the URL's user info), checking the answer;
``parse_boundary`` reads the boundary from the response's Content-Type;
``MultipartReader`` yields each part's headers and bytes, bounded in size;
``part_timestamp`` takes a part's capture time from its timestamp header.
``SourceError`` lives here (and is re-exported by ``service.sources``) so this
module needs nothing from the worker that uses it.
"""

from __future__ import annotations

import base64
import http.client
import math
from collections.abc import Iterator
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

MAX_PART_BYTES = 32 * 2**20
MAX_HEADER_LINE = 8192
MAX_PART_HEADERS = 64
# A part's capture time, as sent by e.g. mjpg-streamer. A value far from this
# machine's clock is a camera's monotonic clock, not the epoch: it is ignored.
TIMESTAMP_HEADERS = ("x-timestamp", "x-capture-timestamp", "x-capture-ts")
TIMESTAMP_MAX_SKEW_S = 3600.0


class SourceError(RuntimeError):
    """A source could not be opened or read; the message says why."""


def mjpeg_connection(url: str, timeout_s: float) -> http.client.HTTPConnection:
    """An unopened HTTP(S) connection to ``url``'s host; every socket operation times out after ``timeout_s``."""
    parts = urlsplit(url)
    connection_type = http.client.HTTPSConnection if parts.scheme.lower() == "https" else http.client.HTTPConnection
    return connection_type(parts.hostname, parts.port, timeout=timeout_s)


def request_mjpeg(connection: http.client.HTTPConnection, url: str) -> tuple[http.client.HTTPResponse, bytes]:
    """GET ``url`` on ``connection``: the response and its multipart boundary (SourceError when it is no MJPEG)."""
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    headers = {"Accept": "multipart/x-mixed-replace, */*", "User-Agent": "cellwatch"}
    if parts.username is not None:
        userinfo = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(userinfo.encode()).decode("ascii")
    connection.request("GET", target, headers=headers)
    response = connection.getresponse()
    if response.status != 200:
        raise SourceError(f"HTTP {response.status} {response.reason}".strip())
    return response, parse_boundary(response.getheader("Content-Type", ""))


def parse_boundary(content_type: str) -> bytes:
    """The multipart boundary of a ``multipart/x-mixed-replace`` Content-Type."""
    media, *params = content_type.split(";")
    if media.strip().lower() != "multipart/x-mixed-replace":
        raise SourceError(f"expected Content-Type multipart/x-mixed-replace (MJPEG), got {content_type!r}")
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() == "boundary":
            # Some cameras declare the boundary with the "--" that, by the RFC,
            # only the delimiter lines carry; either way is accepted.
            boundary = value.strip().strip('"').lstrip("-")
            if boundary:
                return boundary.encode("latin-1")
    raise SourceError(f"Content-Type {content_type!r} has no boundary parameter")


class MultipartReader:
    """Parts of a multipart/x-mixed-replace body, read from a binary stream.

    A part's length comes from its Content-Length header when it has a valid
    one, else from scanning for the next delimiter line.
    """

    def __init__(self, stream: BinaryIO, boundary: bytes, max_part_bytes: int = MAX_PART_BYTES) -> None:
        self.stream = stream
        self.boundary = boundary
        self.max_part_bytes = max_part_bytes

    def parts(self) -> Iterator[tuple[dict[str, str], bytes]]:
        """Yield ``(headers, body)`` until the closing delimiter or the end of the stream."""
        more = self._skip_to_delimiter()
        while more:
            headers = self._read_headers()
            if headers is None:
                return
            length = _content_length(headers, self.max_part_bytes)
            if length is not None:
                body = self._read_exact(length)
                if body is None:
                    return  # cut in the middle of a part: the connection ended
                more = self._skip_to_delimiter()
            else:
                body, more = self._read_to_delimiter()
                if body is None:
                    return
            yield headers, body

    def _delimiter(self, line: bytes) -> str | None:
        """``"next"`` or ``"close"`` for a delimiter line, else None."""
        stripped = line.strip()
        name = stripped.lstrip(b"-")
        if len(name) == len(stripped):
            return None
        if name == self.boundary:
            return "next"
        if name == self.boundary + b"--":
            return "close"
        return None

    def _skip_to_delimiter(self) -> bool:
        skipped = 0
        while True:
            line = self.stream.readline(MAX_HEADER_LINE)
            if not line:
                return False
            kind = self._delimiter(line)
            if kind is not None:
                return kind == "next"
            skipped += len(line)
            if skipped > self.max_part_bytes:
                raise SourceError(f"no multipart boundary {self.boundary!r} within {skipped} bytes")

    def _read_headers(self) -> dict[str, str] | None:
        headers: dict[str, str] = {}
        for _ in range(MAX_PART_HEADERS):
            line = self.stream.readline(MAX_HEADER_LINE)
            if not line:
                return None
            if not line.endswith(b"\n"):
                raise SourceError("multipart part header line too long")
            line = line.strip()
            if not line:
                return headers
            name, sep, value = line.decode("latin-1").partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        raise SourceError(f"multipart part has more than {MAX_PART_HEADERS} header lines")

    def _read_exact(self, length: int) -> bytes | None:
        body = self.stream.read(length)
        return body if len(body) == length else None

    def _read_to_delimiter(self) -> tuple[bytes | None, bool]:
        chunks: list[bytes] = []
        size = 0
        at_line_start = True
        while True:
            chunk = self.stream.readline(1 << 16)
            if not chunk:
                return None, False
            if at_line_start:
                kind = self._delimiter(chunk)
                if kind is not None:
                    body = b"".join(chunks)
                    # the CRLF before a delimiter belongs to the delimiter
                    if body.endswith(b"\r\n"):
                        body = body[:-2]
                    elif body.endswith(b"\n"):
                        body = body[:-1]
                    return body, kind == "next"
            chunks.append(chunk)
            size += len(chunk)
            if size > self.max_part_bytes:
                raise SourceError(f"multipart part larger than {self.max_part_bytes} bytes without a boundary")
            at_line_start = chunk.endswith(b"\n")


def _content_length(headers: dict[str, str], limit: int) -> int | None:
    value = headers.get("content-length", "")
    if not value.isdigit():
        return None
    length = int(value)
    if length > limit:
        raise SourceError(f"multipart part of {length} bytes exceeds {limit}")
    return length


def part_timestamp(headers: dict[str, str], now: float) -> float:
    """The part's capture time from its timestamp header, or ``now``."""
    for name in TIMESTAMP_HEADERS:
        value = headers.get(name)
        if value is None:
            continue
        try:
            stamp = float(value)
        except ValueError:
            continue
        if math.isfinite(stamp) and abs(stamp - now) <= TIMESTAMP_MAX_SKEW_S:
            return stamp
    return now
