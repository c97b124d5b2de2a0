"""``cellwatch serve`` as a child process on 127.0.0.1: the one harness that the
demo, the benchmarks and the tests use to run the real service.

It starts ``python -m service.cli serve`` (this interpreter, so this venv) on
127.0.0.1 and a free port (or the one given), with a config file and/or
``--model``/``--threads``; its stdout and stderr go to a log file. ``wait_ready``
polls ``/readyz`` until the service says ready, and raises ``ServeError`` with the
last lines of that log when the service reports a failed start, exits, or is not
ready in time. ``stop`` sends SIGTERM (uvicorn's graceful shutdown: connections
closed, the app's shutdown run) and SIGKILL if that takes too long.

Imports nothing from the project: the service is reached over HTTP only, as any
client would reach it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Self

import httpx

HOST = "127.0.0.1"
READY_POLL_S = 0.1
STOP_TIMEOUT_S = 20.0  # SIGTERM -> exit: the graceful shutdown closes every WebSocket first
KILL_WAIT_S = 10.0
LOG_TAIL_LINES = 12


class ServeError(RuntimeError):
    """The service could not start, exited, or was not ready in time; the message
    names the log file and ends with its last lines."""


def free_port() -> int:
    """A TCP port nothing listens on at 127.0.0.1 now (the OS's choice)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class ServeProcess:
    """``cellwatch serve`` in a subprocess on 127.0.0.1; its log in ``log_path``.

    ``config``, ``model`` and ``threads`` become ``--config``, ``--model`` and
    ``--threads`` (the flags win over the file); ``port`` defaults to a free one.
    Use as a context manager, or call ``stop``.
    """

    def __init__(self, log_path: Path, *, config: Path | None = None, model: Path | None = None,
                 threads: int | None = None, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.ws_url = f"ws://{HOST}:{self.port}"
        self.log_path = Path(log_path)
        self.command = [sys.executable, "-m", "service.cli", "serve"]
        if config is not None:
            self.command += ["--config", str(Path(config).resolve())]
        self.command += ["--host", HOST, "--port", str(self.port)]
        if model is not None:
            self.command += ["--model", str(Path(model).resolve())]
        if threads is not None:
            self.command += ["--threads", str(threads)]
        self._log = open(self.log_path, "wb")
        # Unbuffered, so the log tail in an error is what the service last said.
        self.process = subprocess.Popen(self.command, stdout=self._log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.exit_status: int | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The log's last ``lines`` lines, indented; "(nothing)" for an empty log."""
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError as exc:
            return f"    (the log cannot be read: {exc})"
        return "\n".join(f"    {line}" for line in text) or "    (nothing)"

    def exit_error(self) -> ServeError | None:
        """The error to report when the process has ended; None while it runs."""
        status = self.process.poll()
        if status is None:
            return None
        return ServeError(f"the service exited with status {status}; the last lines of {self.log_path}:\n"
                          f"{self.log_tail()}")

    def wait_ready(self, timeout: float) -> dict:
        """``/readyz``'s answer once it says ready (it names the engine); ServeError
        when the service reports a failed start, exits, or is not ready within ``timeout`` s."""
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while time.monotonic() < deadline:
                error = self.exit_error()
                if error is not None:
                    raise error
                try:
                    body = client.get("/readyz").json()
                except (httpx.HTTPError, ValueError):
                    body = {}  # not listening yet, or not answering JSON yet
                if body.get("status") == "ready":
                    return body
                if body.get("status") == "failed":
                    raise ServeError(f"the service could not start: {body.get('error')}; the last lines of "
                                     f"{self.log_path}:\n{self.log_tail()}")
                time.sleep(READY_POLL_S)
        raise ServeError(f"the service was not ready within {timeout:g} s; the last lines of {self.log_path}:\n"
                         f"{self.log_tail()}")

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, then SIGKILL after ``timeout`` s; the exit status (``-15`` when the
        SIGTERM ended it: uvicorn re-raises the signal after its graceful shutdown)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                print(f"cellwatch serve (pid {self.pid}) did not stop within {timeout:g} s of SIGTERM; killing it",
                      file=sys.stderr, flush=True)
                self.process.kill()
                self.process.wait(KILL_WAIT_S)
        self._log.close()
        self.exit_status = self.process.returncode
        return self.exit_status
