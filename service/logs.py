"""Structured JSON logs: one JSON object per line on stderr.

Owns the line format (``JsonFormatter``) and the process's log set-up
(``configure``), including, when asked, capturing what native code writes to
file descriptor 2 (libjpeg's "Corrupt JPEG data" warnings from OpenCV, ONNX
Runtime's and TensorRT's messages) so that it arrives as JSON records too,
not as plain text between them that breaks a log collector's parsing.
Imports only the standard library.
"""

from __future__ import annotations

import atexit
import faulthandler
import json
import logging
import os
import sys
import threading
import time
from typing import TextIO

NATIVE_LOGGER = "cellwatch.native"
# Longer lines are cut here (and marked "truncated"): one runaway write without
# a newline must grow neither the reader's buffer nor a log record unboundedly.
MAX_NATIVE_LINE = 4096
# Bytes per read: a whole Linux pipe (64 KiB), so one read empties a full pipe.
_READ_SIZE = 65536
# How long stopping waits for the reader to log what the pipe still holds; a
# child process that inherited fd 2 keeps the pipe open, so it may never end.
_DRAIN_TIMEOUT_S = 2.0

# Attributes every LogRecord has; anything else came in through ``extra=``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + "Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class _JsonHandler(logging.StreamHandler):
    def handleError(self, record: logging.LogRecord) -> None:
        # With capture on, sys.stderr is the pipe: reporting a failed write of
        # a captured line there would capture the report, fail again, forever.
        if record.name != NATIVE_LOGGER:
            super().handleError(record)


class NativeStderrCapture:
    """Points fd 2 at a pipe and logs each line written to it as a record.

    ``stream`` writes to the original stderr (fd 2 duplicated before the
    switch); the log handler writes there, so records never pass through the
    pipe. A daemon thread reads the pipe and logs each line as a warning of
    ``cellwatch.native``; it does nothing else, so the pipe (64 KiB) is emptied
    as fast as records can be written, and a writer waits only when the real
    stderr is slow, which then holds up every Python log call as well.

    Python's ``sys.stderr`` is fd 2 too, so warnings and thread tracebacks
    become records, and so does a child process's stderr. What the process
    prints as it dies of a signal or ``abort`` may be lost with the reader
    thread; ``stop`` (also run at exit) restores fd 2 and logs what is left.
    """

    def __init__(self) -> None:
        sys.stderr.flush()
        # Never closed: the handler made on ``stream`` may outlive ``stop``.
        self._saved_fd = os.dup(2)
        self.stream: TextIO = open(self._saved_fd, "w", encoding="utf-8", errors="backslashreplace",
                                   buffering=1, closefd=False)
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        """Switches fd 2 to the pipe. Install the handler on ``stream`` first:
        a handler still writing to ``sys.stderr`` would feed the pipe its own
        output."""
        read_fd, write_fd = os.pipe()
        sys.stderr.flush()
        os.dup2(write_fd, 2)  # inheritable, so child processes' stderr is captured too
        os.close(write_fd)
        if faulthandler.is_enabled():
            # A crash dump is written as the process dies, too late for the
            # reader: send it to the real stderr, plain text, but not lost.
            faulthandler.enable(self.stream)
        self._reader = threading.Thread(target=_log_lines, args=(read_fd,), name="cellwatch-native-stderr",
                                        daemon=True)
        self._reader.start()
        atexit.register(self.stop)

    def stop(self) -> None:
        """Points fd 2 back at the original stderr and logs what the pipe still holds."""
        if self._reader is None:
            return
        atexit.unregister(self.stop)
        sys.stderr.flush()
        # Replacing fd 2 closes this process's write end: the reader drains the pipe, then sees its end.
        os.dup2(self._saved_fd, 2)
        self._reader.join(_DRAIN_TIMEOUT_S)
        self._reader = None


def _log_lines(fd: int) -> None:
    log = logging.getLogger(NATIVE_LOGGER)
    pending = b""
    cut = False  # the line now arriving was too long and its start already logged
    try:
        while chunk := os.read(fd, _READ_SIZE):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                if not cut:
                    _log_line(log, line)
                cut = False
            if len(pending) > MAX_NATIVE_LINE:
                if not cut:
                    _log_line(log, pending)
                cut, pending = True, b""
        if pending and not cut:
            _log_line(log, pending)
    finally:
        os.close(fd)


def _log_line(log: logging.Logger, line: bytes) -> None:
    text = line[:MAX_NATIVE_LINE].decode("utf-8", "replace").rstrip("\r")
    if text.strip():
        log.warning(text, extra={"truncated": True} if len(line) > MAX_NATIVE_LINE else None)


_native: NativeStderrCapture | None = None


def configure(level: str = "info", *, capture_native: bool = False) -> None:
    """Sends every record, uvicorn's included, to stderr as JSON lines.

    With ``capture_native`` (``cellwatch serve`` asks for it) what native
    code writes to fd 2 is logged as records too (``NativeStderrCapture``).
    Off by default: it rewires the whole process's fd 2, which a library user
    or a test runner that captures fd 2 has not asked for. A later call
    without it ends the capture.
    """
    global _native
    if not capture_native and _native is not None:
        _native.stop()
        _native = None
    starting = capture_native and _native is None
    if starting:
        _native = NativeStderrCapture()
    handler = _JsonHandler(_native.stream if _native is not None else sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    if starting:
        _native.start()
