"""Pulled video sources: RTSP, HTTP(S) MJPEG and files, each in its own thread.

``parse_source`` turns a stream's ``source`` URL and options into a validated
``SourceSpec``: every option within finite bounds (the ``MAX_*`` constants),
and a file only from inside the configured directories (``sources.file_dirs``),
so that no client can make the service open /etc/passwd or any other file it
may read. ``PullSource`` runs one worker thread per stream that opens the
source, reads frames and hands each to ``on_frame(frame_bgr, capture_ts)``.
What happens to the source is reported through ``on_event(kind, detail)``:

- ``connected``: after every (re)connect, and after a looped file rewinds, so
  the pipeline resets its tracker and support-feature cache (the frames before
  and after are not one continuous video);
- ``disconnected``: a live source that was connected stopped delivering;
- ``error``: an attempt to connect failed, or a file cannot be played;
- ``reconnecting``: a retry is scheduled (exponential backoff with jitter);
- ``ended``: a file (without ``loop``) reached its end; the worker exits.

Live sources (RTSP, HTTP) never end: whatever stops them is retried, from
``reconnect_initial_s`` doubling up to ``reconnect_max_s``; the schedule
restarts after a connection that delivered a frame. RTSP and files go through
``cv2.VideoCapture`` (FFmpeg backend; RTSP transport options can be set with
``OPENCV_FFMPEG_CAPTURE_OPTIONS``, e.g. ``rtsp_transport;tcp``). HTTP MJPEG is
requested and split into parts by ``service.mjpeg``, on ``http.client``: a
part whose image does not decode is counted (``bad_parts``) and skipped; a
broken multipart structure ends the connection, which is then retried.

``stop()`` returns promptly: waits are on an event, an HTTP socket is shut
down under a blocked read, and a cv2 capture (which cannot be interrupted) is
bounded by ``read_timeout_s`` and released by its own thread.
"""

from __future__ import annotations

import http.client
import logging
import math
import random
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import cv2
import numpy as np

from .mjpeg import MultipartReader, SourceError, mjpeg_connection, parse_boundary, part_timestamp, request_mjpeg

__all__ = ["MultipartReader", "PullSource", "SourceError", "SourceSpec", "allowed_file", "backoff_delay",
           "parse_boundary", "parse_source"]

log = logging.getLogger("cellwatch.sources")

FrameCallback = Callable[[np.ndarray, float], None]
EventCallback = Callable[[str, str], None]

LIVE_SCHEMES = {"rtsp": "rtsp", "rtsps": "rtsp", "http": "http", "https": "http"}
DEFAULT_FILE_FPS = 25.0  # when a file does not say its frame rate


# --------------------------------------------------------------------- spec
# Bounds of the source options. Each is finite: a huge timing overflows the
# millisecond timeouts handed to FFmpeg (the worker dies) or the waits of the
# worker, and a stream that waits hours to notice or retry a lost camera is as
# good as unwatched.
MAX_READ_TIMEOUT_S = 300.0  # a read blocked longer is a lost camera; the watchdog said FAULT long before
MIN_RECONNECT_S = 0.01  # faster retries are a busy loop against a dead camera
MAX_RECONNECT_INITIAL_S = 60.0  # the first retry after a loss comes within a minute
MAX_RECONNECT_S = 3600.0  # a lost camera is retried at least every hour, never given up
MAX_FPS = 1000.0  # no camera or file plays faster (0 = as fast as frames decode)


@dataclass(frozen=True)
class SourceSpec:
    """A validated source. Build it with ``parse_source``: a spec made by hand
    skips the ``file_dirs`` check. For files ``url`` is the resolved real path."""

    url: str
    loop: bool = False
    fps: float | None = None
    reconnect_initial_s: float = 0.5
    reconnect_max_s: float = 10.0
    read_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if self.fps is not None:
            _check_range("fps", self.fps, 0.0, MAX_FPS, "0 = as fast as possible; unset = the file's own rate")
        _check_range("read_timeout_s", self.read_timeout_s, 0.0, MAX_READ_TIMEOUT_S, low_open=True)
        _check_range("reconnect_initial_s", self.reconnect_initial_s, MIN_RECONNECT_S, MAX_RECONNECT_INITIAL_S)
        _check_range("reconnect_max_s", self.reconnect_max_s, MIN_RECONNECT_S, MAX_RECONNECT_S)
        if self.reconnect_initial_s > self.reconnect_max_s:
            raise ValueError(
                "need reconnect_initial_s <= reconnect_max_s, got "
                f"{self.reconnect_initial_s!r} and {self.reconnect_max_s!r}"
            )

    @property
    def kind(self) -> str:
        """``rtsp``, ``http`` (MJPEG over HTTP or HTTPS) or ``file``."""
        return LIVE_SCHEMES.get(urlsplit(self.url).scheme.lower(), "file")

    @property
    def path(self) -> str:
        """The file to play (file sources only)."""
        parts = urlsplit(self.url)
        return unquote(parts.path) if parts.scheme.lower() == "file" else self.url


def _check_range(name: str, value: float, low: float, high: float, note: str = "", low_open: bool = False) -> None:
    inside = math.isfinite(value) and (low < value if low_open else low <= value) and value <= high
    if not inside:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise ValueError(f"{name} must be a finite number in {interval}{f' ({note})' if note else ''}, got {value!r}")


def parse_source(
    url: str, options: Mapping[str, Any] | None = None, *, file_dirs: Iterable[str | Path] = ()
) -> SourceSpec:
    """Validate a source URL and its options; ValueError says what is wrong.

    A file (a path or a ``file://`` URL) is accepted only when its real path,
    symlinks and ``..`` resolved, lies inside one of ``file_dirs`` (resolved
    the same way); with none, no file is. The spec then names the resolved
    file, so the worker opens what was checked. ``file_dirs`` is a separate
    argument so that no option sent by a client can widen it.
    """
    if not isinstance(url, str) or not url.strip():
        raise ValueError("a source URL is required: rtsp://..., http(s)://... (MJPEG), file:///path or a path")
    url = url.strip()
    options = dict(options or {})
    allowed = {f.name for f in fields(SourceSpec)} - {"url"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"unknown source option(s) {unknown}; accepted: {sorted(allowed)}")
    values = {}
    for name, value in options.items():
        if name == "loop":
            if not isinstance(value, bool):
                raise ValueError(f"loop must be true or false, got {value!r}")
        elif name == "fps" and value is None:
            pass  # the file's own frame rate
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{name} must be a number, got {value!r}")
        else:
            try:
                value = float(value)
            except OverflowError:  # an integer beyond any float: JSON allows one
                bits = value.bit_length()
                raise ValueError(f"{name} must be a finite number, got an integer of {bits} bits") from None
        values[name] = value

    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in LIVE_SCHEMES:
        if not parts.hostname:
            raise ValueError(f"source URL {redact(url)!r} has no host")
        for name in ("loop", "fps"):
            if name in values and values[name] not in (None, False):
                raise ValueError(f"option {name} applies to file sources only, not {scheme}://")
        return SourceSpec(url, **values)
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"file URL {url!r} names host {parts.netloc!r}; use file:///absolute/path")
        path = Path(unquote(parts.path))
    elif scheme == "" or len(scheme) == 1:  # a plain path (or a Windows drive letter)
        path = Path(url)
    else:
        raise ValueError(
            f"unsupported source scheme {scheme!r}: use rtsp://, http(s):// (MJPEG), file:///path or a plain path"
        )
    # Checked before the file's existence, so that a refused path tells nothing about what is there.
    real = allowed_file(path, file_dirs)
    if not real.exists():
        raise ValueError(f"video file {str(path)!r} does not exist")
    if not real.is_file():
        raise ValueError(f"video source {str(path)!r} is not a file")
    return SourceSpec(str(real), **values)


def allowed_file(path: str | Path, file_dirs: Iterable[str | Path]) -> Path:
    """``path``'s real path if it lies inside one of ``file_dirs``, else ValueError."""
    real = _real_path(path)
    roots = [_real_path(d) for d in file_dirs]
    if any(real.is_relative_to(root) for root in roots):
        return real
    shown = repr(str(path)) + (f" (resolved: {str(real)!r})" if str(real) != str(path) else "")
    listed = ", ".join(repr(str(root)) for root in roots) or "none configured"
    raise ValueError(
        f"file source {shown} is outside sources.file_dirs ({listed}); "
        "to play it, add its directory to sources.file_dirs in the configuration"
    )


def _real_path(path: str | Path) -> Path:
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop: RuntimeError before Python 3.13, OSError since
        raise ValueError(f"path {str(path)!r} cannot be resolved: {exc}") from None


def redact(url: str) -> str:
    """The URL without its password, for logs and events."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def backoff_delay(attempt: int, initial_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry ``attempt`` (0 = the first retry after a success).

    The ceiling doubles from ``initial_s`` per attempt and stops at ``max_s``;
    the delay is drawn from [ceiling / 2, ceiling] so that streams cut by one
    network fault do not all reconnect in the same instant, while the wait
    still grows with every failure.
    """
    ceiling = min(max_s, initial_s * 2.0 ** min(max(attempt, 0), 64))
    return ceiling * (0.5 + 0.5 * (rng or random).random())


# ------------------------------------------------------------------- worker
class PullSource:
    """One stream's pulling worker thread (see the module docstring)."""

    def __init__(
        self,
        stream_id: str,
        spec: SourceSpec,
        on_frame: FrameCallback,
        on_event: EventCallback,
        rng: random.Random | None = None,
    ) -> None:
        self.stream_id = stream_id
        self.spec = spec
        self.on_frame = on_frame
        self.on_event = on_event
        self._rng = rng or random.Random()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._frames = 0
        self._reconnects = 0
        self._bad_parts = 0
        self._callback_errors = 0
        self._state = "idle"
        self._last_error: str | None = None
        self._connected = False
        self._delivered = False

    # -- control
    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"source of stream {self.stream_id!r} was already started")
        self._state = "connecting"
        self._thread = threading.Thread(target=self._run, name=f"source-{self.stream_id}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop the worker; True if it exited within ``timeout`` seconds."""
        self._stop.set()
        with self._lock:
            sock = self._socket
        if sock is not None:
            try:  # wakes a read blocked on this socket in the worker
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is None:
            self._state = "stopped"
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stats(self) -> dict:
        return {
            "frames": self._frames,
            "reconnects": self._reconnects,
            "bad_parts": self._bad_parts,
            "state": self._state,
            "last_error": self._last_error,
        }

    # -- worker
    def _run(self) -> None:
        try:
            if self.spec.kind == "file":
                self._run_file()
            else:
                self._run_live(self._session_http if self.spec.kind == "http" else self._session_rtsp)
        except Exception as exc:  # a defect here must show, not kill the stream silently
            log.exception("source worker failed", extra={"stream": self.stream_id})
            self._fail(f"source worker failed: {type(exc).__name__}: {exc}")
        finally:
            if self._stop.is_set():
                self._state = "stopped"

    def _run_live(self, session: Callable[[], str]) -> None:
        attempt = 0
        while not self._stop.is_set():
            self._connected = self._delivered = False
            try:
                reason = session()
            except (OSError, SourceError, http.client.HTTPException, cv2.error) as exc:
                reason = _describe(exc)
            if self._stop.is_set():
                return
            self._last_error = reason
            if self._connected:
                self._state = "disconnected"
                self._emit("disconnected", reason)
            else:
                self._emit("error", reason)
            if self._delivered:
                attempt = 0
            delay = backoff_delay(attempt, self.spec.reconnect_initial_s, self.spec.reconnect_max_s, self._rng)
            attempt += 1
            self._reconnects += 1
            self._state = "reconnecting"
            self._emit("reconnecting", f"attempt {attempt} in {delay:.2f} s")
            log.info("source reconnecting", extra={"stream": self.stream_id, "reason": reason, "delay_s": delay})
            if self._stop.wait(delay):
                return

    def _run_file(self) -> None:
        path = self.spec.path
        passes = 0
        while not self._stop.is_set():
            try:
                capture = self._open_capture(path)
            except SourceError as exc:
                self._fail(str(exc))
                return
            try:
                self._mark_connected(path if passes == 0 else f"{path} (rewound, pass {passes + 1})")
                count = self._play_file(capture)
            finally:
                capture.release()
            if self._stop.is_set():
                return
            if count == 0:
                self._fail(f"no frame could be decoded from {path!r}")
                return
            passes += 1
            if not self.spec.loop:
                self._state = "ended"
                self._emit("ended", f"{path}: end of file after {count} frames")
                return

    def _play_file(self, capture: cv2.VideoCapture) -> int:
        fps = self.spec.fps
        if fps is None:
            fps = capture.get(cv2.CAP_PROP_FPS)
            if not (math.isfinite(fps) and 0 < fps <= MAX_FPS):
                fps = DEFAULT_FILE_FPS
        period = 1.0 / fps if fps > 0 else 0.0
        count = 0
        due = time.monotonic()
        while not self._stop.is_set():
            if period:
                wait = due - time.monotonic()
                if wait > 0:
                    if self._stop.wait(wait):
                        break
                elif wait < -period:
                    due = time.monotonic()  # fell behind: carry on at pace, never in a burst
                due += period
            ok, frame = capture.read()
            if not ok:
                break
            self._deliver(frame, time.time())
            count += 1
        return count

    def _session_rtsp(self) -> str:
        capture = self._open_capture(self.spec.url)
        try:
            self._mark_connected(redact(self.spec.url))
            while not self._stop.is_set():
                ok, frame = capture.read()
                if not ok:
                    return f"no frame within {self.spec.read_timeout_s:g} s, or the stream ended"
                self._deliver(frame, time.time())
            return "stopped"
        finally:
            capture.release()

    def _session_http(self) -> str:
        connection = mjpeg_connection(self.spec.url, self.spec.read_timeout_s)
        try:
            connection.connect()
            with self._lock:
                self._socket = connection.sock
            if self._stop.is_set():  # stop() ran before the socket was registered
                return "stopped"
            response, boundary = request_mjpeg(connection, self.spec.url)
            self._mark_connected(redact(self.spec.url))
            for part_headers, body in MultipartReader(response, boundary).parts():
                now = time.time()
                image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR) if body else None
                if image is None:
                    self._bad_parts += 1
                    log.warning(
                        "undecodable MJPEG part skipped",
                        extra={"stream": self.stream_id, "bytes": len(body), "bad_parts": self._bad_parts},
                    )
                    continue
                self._deliver(image, part_timestamp(part_headers, now))
                if self._stop.is_set():
                    return "stopped"
            return "the server ended the MJPEG stream"
        finally:
            with self._lock:
                self._socket = None
            connection.close()

    # -- helpers
    def _open_capture(self, target: str) -> cv2.VideoCapture:
        timeout_ms = int(self.spec.read_timeout_s * 1000)
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms]
        capture = cv2.VideoCapture(target, cv2.CAP_FFMPEG, params)
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"could not open {redact(target)!r} with the FFmpeg backend")
        return capture

    def _mark_connected(self, detail: str) -> None:
        self._connected = True
        self._state = "connected"
        self._emit("connected", detail)
        log.info("source connected", extra={"stream": self.stream_id, "source": detail})

    def _deliver(self, frame: np.ndarray, capture_ts: float) -> None:
        self._frames += 1
        self._delivered = True
        try:
            self.on_frame(frame, capture_ts)
        except Exception:  # the consumer's failure is its own; keep reading
            self._callback_errors += 1
            if self._callback_errors == 1 or self._callback_errors % 100 == 0:
                log.exception("on_frame failed", extra={"stream": self.stream_id, "count": self._callback_errors})

    def _fail(self, reason: str) -> None:
        self._last_error = reason
        self._state = "failed"
        self._emit("error", reason)

    def _emit(self, kind: str, detail: str) -> None:
        try:
            self.on_event(kind, detail)
        except Exception:
            log.exception("on_event failed", extra={"stream": self.stream_id, "event": kind})


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SourceError):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return "read timed out"
    return f"{type(exc).__name__}: {exc}"
