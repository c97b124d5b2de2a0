"""A real uvicorn server on 127.0.0.1 (an ephemeral port) in a background thread."""

from __future__ import annotations

import threading
import time

import httpx
import uvicorn


class LiveServer:
    def __init__(self, app, ws_max_size: int = 16 * 2**20, wait_ready: bool = True,
                 ws_ping_interval: float | None = 20.0, ws_ping_timeout: float | None = 20.0) -> None:
        self.wait_ready = wait_ready
        self.app = app
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", ws_max_size=ws_max_size,
                                lifespan="on", ws_ping_interval=ws_ping_interval,
                                ws_ping_timeout=ws_ping_timeout)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the server thread died during start-up")
            if time.monotonic() > deadline:
                raise TimeoutError("the server did not start within 60 s")
            time.sleep(0.05)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.client = httpx.Client(base_url=self.url, timeout=30)
        if self.wait_ready:
            self.wait_for(lambda: self.client.get("/readyz").status_code == 200, timeout=60, what="/readyz")
        return self

    def __exit__(self, *exc) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def wait_for(self, predicate, timeout: float = 30.0, interval: float = 0.05, what: str = "condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(interval)
        raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
