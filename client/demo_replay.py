"""The demo's replay: the video pushed into the service as a camera would, and
what comes back on ``/v1/alerts``.

Frames are read, JPEG-encoded and sent to ``/v1/streams/demo/ingest`` on the
camera's clock (framing: ``service.framing``); the alerts WebSocket (with masks)
fills a ``Run``, which prints each safety state transition as it arrives. The
service runs as a ``client.server_process.ServeProcess``; if it dies meanwhile,
its own error (with its log's last lines) is what the demo reports.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

import cv2
import httpx
from tqdm import tqdm
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from service.framing import encode_frame

from .demo_setup import STREAM, DemoError, Video, say
from .server_process import ServeProcess

JPEG_QUALITY = 90
SETTLE_TIMEOUT_S = 15.0  # for the last results after the last frame is sent


@dataclass
class Run:
    """What the replay sent and what came back."""

    progress: tqdm
    started: float = field(default_factory=time.time)
    sent_ts: list[float] = field(default_factory=list)  # capture_ts per sent frame
    frame_of: dict[float, int] = field(default_factory=dict)
    results: dict[int, dict] = field(default_factory=dict)  # frame -> its persons event (+ received_ts)
    states: list[dict] = field(default_factory=list)  # state events as received
    transitions: list[dict] = field(default_factory=list)
    state: str | None = None
    last_zones: tuple[float | None, dict] = (None, {})  # (capture_ts, zones) of the latest persons event
    ingest_errors: list[str] = field(default_factory=list)
    sending_done: float | None = None

    def on_event(self, event: dict, received: float) -> None:
        kind = event.get("type")
        if kind == "persons":
            frame = self.frame_of.get(event.get("capture_ts"))
            self.last_zones = (event.get("capture_ts"), event.get("zones") or {})
            if frame is not None:
                self.results[frame] = {**event, "received_ts": received}
                self._postfix()
        elif kind == "state":
            self.states.append(event)
            if self.state is not None and event["state"] != self.state:
                self._transition(event)
            self.state = event["state"]
            self._postfix()

    def _transition(self, event: dict) -> None:
        capture_ts = event.get("capture_ts")
        frame = self.frame_of.get(capture_ts)
        zones = self.last_zones[1] if capture_ts is not None and capture_ts == self.last_zones[0] else {}
        reason = event.get("reason") or ""
        if capture_ts is None and self.sending_done is not None and event["emit_ts"] > self.sending_done:
            reason += " (the video has ended)"
        origin = self.sent_ts[0] if self.sent_ts else self.started
        record = {"time_s": round((capture_ts or event["emit_ts"]) - origin, 3), "frame": frame,
                  "from": self.state, "to": event["state"], "latched": event.get("latched"), "reason": reason,
                  "zones": zones}
        self.transitions.append(record)
        tqdm.write(format_transition(record))

    def _postfix(self) -> None:
        self.progress.set_postfix_str(f"processed {len(self.results)}, {self.state}", refresh=False)


def format_transition(t: dict) -> str:
    frame = "-" if t["frame"] is None else str(t["frame"])
    zones = ", ".join(f"{name}: {ids}" for name, ids in sorted(t["zones"].items())) or "none"
    latched = " (latched)" if t["latched"] else ""
    return (f"  t={t['time_s']:7.2f}s frame {frame:>5}  {t['from']} -> {t['to']}{latched}  {t['reason']}  "
            f"[tracks in zones: {zones}]")


async def _read_frame(capture: cv2.VideoCapture) -> bytes | None:
    def read() -> bytes | None:
        ok, frame = capture.read()
        if not ok:
            return None
        ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise DemoError("OpenCV could not encode a frame as JPEG")
        return jpeg.tobytes()

    return await asyncio.to_thread(read)


async def _send(ws, video: Video, run: Run, fps: float, limit: int | None) -> None:
    """Push frames on the camera's clock: frame i is due at start + i / fps."""
    period = 1.0 / fps
    capture = cv2.VideoCapture(str(video.path))
    try:
        start = time.monotonic()
        index = 0
        while limit is None or index < limit:
            delay = start + index * period - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -period:  # fell behind (slow reads): no burst, the clock restarts here
                start -= delay
            capture_ts = time.time()  # the shutter; reading and encoding are the camera's latency
            jpeg = await _read_frame(capture)
            if jpeg is None:
                break
            run.sent_ts.append(capture_ts)
            run.frame_of[capture_ts] = index
            await ws.send(encode_frame(capture_ts, jpeg))
            run.progress.update(1)
            index += 1
    finally:
        capture.release()
        run.sending_done = time.time()


async def _alerts(ws, run: Run) -> None:
    async for message in ws:
        event = json.loads(message)
        if "type" not in event:
            raise DemoError(f"the alerts WebSocket answered {event}")
        run.on_event(event, time.time())
    raise DemoError(f"the service closed the alerts WebSocket ({ws.close_code} {ws.close_reason!r})")


async def _ingest_replies(ws, run: Run) -> None:
    async for message in ws:
        if isinstance(message, str):
            reply = json.loads(message)
            if isinstance(reply, dict) and "error" in reply:
                run.ingest_errors.append(str(reply["error"]))
                if len(run.ingest_errors) <= 3:
                    say(f"the service rejected a frame: {reply['error']}")


async def _watch(server: ServeProcess) -> None:
    while True:
        error = server.exit_error()
        if error is not None:
            raise error
        await asyncio.sleep(0.3)


async def _settle(client: httpx.AsyncClient, run: Run) -> dict:
    """The stream's status once every sent frame is accounted for and its event is here (or on timeout)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        status = (await client.get(f"/v1/streams/{STREAM}")).json()
        frames = status["frames"]
        accounted = frames["processed"] + frames["dropped"] + frames["errors"] + len(run.ingest_errors)
        if accounted >= len(run.sent_ts) and len(run.results) >= frames["processed"]:
            return status
        if time.monotonic() > deadline:
            say(f"gave up waiting for the last results after {SETTLE_TIMEOUT_S:g} s")
            return status
        await asyncio.sleep(0.2)


async def _first(*tasks: asyncio.Task) -> Any:
    """The result of the first task to finish; any task's exception is raised; the rest are cancelled."""
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        return next(iter(done)).result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def replay(server: ServeProcess, video: Video, run: Run, fps: float, limit: int | None) -> tuple[dict, dict]:
    ws_url = server.ws_url
    try:
        async with connect(f"{ws_url}/v1/alerts?streams={STREAM}&masks=1&since=0", max_size=None,
                           open_timeout=10) as alerts, \
                connect(f"{ws_url}/v1/streams/{STREAM}/ingest", open_timeout=10) as ingest, \
                httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            listeners = [asyncio.create_task(_alerts(alerts, run)), asyncio.create_task(_ingest_replies(ingest, run))]
            try:
                await _first(asyncio.create_task(_send(ingest, video, run, fps, limit)), asyncio.create_task(_watch(server)),
                             *(asyncio.shield(task) for task in listeners))
                status = await _first(asyncio.create_task(_settle(client, run)), asyncio.create_task(_watch(server)),
                                      *(asyncio.shield(task) for task in listeners))
                safety = (await client.get(f"/v1/streams/{STREAM}/safety")).json()
            finally:
                for task in listeners:
                    task.cancel()
                await asyncio.gather(*listeners, return_exceptions=True)
    except (ConnectionClosed, OSError, InvalidHandshake, httpx.HTTPError) as exc:
        try:  # a connection lost because the service is going down: report why it went
            server.process.wait(3)
        except subprocess.TimeoutExpired:
            pass
        raise server.exit_error() or DemoError(f"lost the service: {type(exc).__name__}: {exc}") from exc
    return status, safety
