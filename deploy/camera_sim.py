"""Camera simulator: replays a video file into cellwatch's push ingest.

    python deploy/camera_sim.py --video V --url ws://HOST:PORT/v1/streams/ID/ingest \\
        [--fps N] [--loop] [--token T] [--max-frames N] [--quality 80]

Frames are read at the video's own frame rate (or ``--fps``), encoded as JPEG
and sent over one WebSocket, as a networked camera would push them.

Push protocol (defined in ``service/framing.py``, which this script imports):

- each WebSocket BINARY message is one frame: an 8-byte header, ``capture_ts``
  as a big-endian IEEE-754 float64 (seconds since the Unix epoch, taken when
  the frame is captured), followed by the JPEG or PNG bytes;
- the server may send TEXT messages holding JSON: acks, or ``{"error": ...}``
  for a frame it rejected; errors are logged and counted, and sending goes on;
- ``--token T`` is sent as ``Authorization: Bearer T`` in the handshake.

If the connection drops, the simulator reconnects with exponential backoff
(the video pauses meanwhile); it gives up only on answers that a retry cannot
change (a handshake refused with 4xx, or a close code listed in
``FATAL_CLOSE_CODES``). Progress goes to stderr; a one-line summary (frames
sent, fps, server errors, reconnects) is printed at the end.

Exit status: 0 when frames were sent, 1 when none were, 2 on bad arguments,
an unreadable video or a fatal rejection.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import time
from dataclasses import dataclass

import cv2
from tqdm import tqdm
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

# The project is installed (`make` installs it into .venv; the image installs its
# wheel), so the service's own wire format and backoff are imported, never copied.
from service.framing import encode_frame
from service.sources import backoff_delay

# Close codes after which reconnecting cannot help.
FATAL_CLOSE_CODES = {
    1003: "the server takes no such messages",
    1008: "rejected by the server's policy",
    1009: "frame too large for the server",
    4401: "not authorised",
    4403: "forbidden",
    4409: "the stream is not a push stream",
}
RECONNECT_INITIAL_S = 0.5
RECONNECT_MAX_S = 10.0
DEFAULT_FPS = 25.0


class Fatal(Exception):
    """An error that ends the simulator (exit status 2)."""


@dataclass
class Counters:
    sent: int = 0
    acks: int = 0
    errors: int = 0
    reconnects: int = 0


class VideoFrames:
    """JPEG frames from a video file, paced at ``fps`` (0 = as fast as possible)."""

    def __init__(self, path: str, fps: float | None, loop: bool, quality: int) -> None:
        self.path = path
        self.loop = loop
        self.quality = quality
        self.capture = cv2.VideoCapture(path)
        if not self.capture.isOpened():
            raise Fatal(f"cannot open video {path!r}")
        if fps is None:
            fps = self.capture.get(cv2.CAP_PROP_FPS)
            if not (math.isfinite(fps) and 0 < fps <= 1000):
                fps = DEFAULT_FPS
        self.fps = fps
        self.period = 1.0 / fps if fps > 0 else 0.0
        count = self.capture.get(cv2.CAP_PROP_FRAME_COUNT)
        self.frame_count = int(count) if math.isfinite(count) and count > 0 else None
        self._due: float | None = None

    def resync(self) -> None:
        """Restart the pacing clock (after a pause such as a reconnect)."""
        self._due = None

    async def next(self) -> tuple[float, bytes] | None:
        """Wait until the next frame is due; ``(capture_ts, jpeg)`` or None at the end."""
        if self.period:
            now = time.monotonic()
            if self._due is None or now - self._due > self.period:
                self._due = now  # first frame, or fell behind: no burst
            elif self._due > now:
                await asyncio.sleep(self._due - now)
            self._due += self.period
        # The shutter fires on the frame clock; reading and encoding are the
        # camera's latency, so they come after the capture time.
        capture_ts = time.time()
        jpeg = await asyncio.to_thread(self._read_encoded)
        return None if jpeg is None else (capture_ts, jpeg)

    def _read_encoded(self) -> bytes | None:
        ok, frame = self.capture.read()
        if not ok and self.loop:
            self.capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = self.capture.read()
        if not ok:
            return None
        ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            raise Fatal("JPEG encoding failed")
        return jpeg.tobytes()

    def close(self) -> None:
        self.capture.release()


def say(message: str) -> None:
    tqdm.write(f"camera_sim: {message}", file=sys.stderr)


async def receive(websocket, counters: Counters, progress: tqdm) -> None:
    """Count the server's acks and log its errors, until the connection closes."""
    async for message in websocket:
        if isinstance(message, bytes):
            continue
        try:
            reply = json.loads(message)
        except ValueError:
            say(f"unparseable server message {message[:200]!r}")
            continue
        if isinstance(reply, dict) and "error" in reply:
            counters.errors += 1
            progress.set_postfix(errors=counters.errors, refresh=False)
            if counters.errors <= 5 or counters.errors % 100 == 0:
                say(f"server error #{counters.errors}: {reply['error']}")
        else:
            counters.acks += 1


async def stream(args: argparse.Namespace, frames: VideoFrames, counters: Counters, progress: tqdm) -> None:
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else None
    rng = random.Random()
    attempt = 0
    while True:
        try:
            async with connect(args.url, additional_headers=headers, open_timeout=10, max_size=2**20) as websocket:
                receiver = asyncio.create_task(receive(websocket, counters, progress))
                frames.resync()
                try:
                    while args.max_frames is None or counters.sent < args.max_frames:
                        item = await frames.next()
                        if item is None:
                            return
                        await websocket.send(encode_frame(*item))
                        counters.sent += 1
                        attempt = 0
                        progress.update(1)
                    return
                finally:
                    if receiver.done():
                        receiver.result()
                    else:
                        await websocket.close()
                        await asyncio.wait_for(receiver, timeout=5)
        except InvalidURI as exc:
            raise Fatal(str(exc)) from exc
        except InvalidStatus as exc:
            status = exc.response.status_code
            if 400 <= status < 500:
                raise Fatal(f"handshake refused with HTTP {status}") from exc
            reason = f"handshake refused with HTTP {status}"
        except ConnectionClosed as exc:
            close = exc.rcvd
            if close is not None and close.code in FATAL_CLOSE_CODES:
                raise Fatal(f"closed by the server ({close.code} {close.reason!r}): {FATAL_CLOSE_CODES[close.code]}")
            reason = f"connection closed ({close.code} {close.reason!r})" if close else "connection lost"
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
        delay = backoff_delay(attempt, RECONNECT_INITIAL_S, RECONNECT_MAX_S, rng)
        attempt += 1
        counters.reconnects += 1
        say(f"{reason}; reconnecting in {delay:.1f} s")
        await asyncio.sleep(delay)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Replay a video into cellwatch's WebSocket push ingest.")
    parser.add_argument("--video", required=True, help="video file to replay")
    parser.add_argument("--url", required=True, help="ws(s)://HOST:PORT/v1/streams/ID/ingest")
    parser.add_argument("--fps", type=float, default=None, help="frame rate (default: the video's; 0 = unpaced)")
    parser.add_argument("--loop", action="store_true", help="start over at the end of the video")
    parser.add_argument("--token", default=None, help="sent as 'Authorization: Bearer TOKEN'")
    parser.add_argument("--max-frames", type=int, default=None, help="stop after sending this many frames")
    parser.add_argument("--quality", type=int, default=80, help="JPEG quality, 1-100 (default 80)")
    args = parser.parse_args(argv)
    if not args.url.startswith(("ws://", "wss://")):
        parser.error(f"--url must be ws:// or wss://, got {args.url!r}")
    if args.fps is not None and not (math.isfinite(args.fps) and args.fps >= 0):
        parser.error("--fps must be >= 0")
    if args.max_frames is not None and args.max_frames < 1:
        parser.error("--max-frames must be >= 1")
    if not 1 <= args.quality <= 100:
        parser.error("--quality must be within 1-100")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    counters = Counters()
    started = time.monotonic()
    status = 0
    try:
        frames = VideoFrames(args.video, args.fps, args.loop, args.quality)
    except Fatal as exc:
        say(str(exc))
        return 2
    total = args.max_frames if args.max_frames or args.loop else frames.frame_count
    progress = tqdm(total=total, unit="frame", file=sys.stderr, desc="camera_sim", mininterval=1.0)
    try:
        asyncio.run(stream(args, frames, counters, progress))
    except Fatal as exc:
        say(str(exc))
        status = 2
    except KeyboardInterrupt:
        status = 130
    finally:
        progress.close()
        frames.close()
    elapsed = time.monotonic() - started
    print(
        f"camera_sim: sent {counters.sent} frames in {elapsed:.1f} s ({counters.sent / max(elapsed, 1e-9):.1f} fps), "
        f"{counters.acks} acks, {counters.errors} server errors, {counters.reconnects} reconnects"
    )
    if status == 0 and counters.sent == 0:
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
