"""The push-ingest wire format: one WebSocket binary message per frame.

A message is an 8-byte header followed by the encoded image::

    offset 0   8 bytes   capture_ts: big-endian IEEE-754 float64, seconds since
                         the Unix epoch, taken when the camera captured the frame
    offset 8   N bytes   the frame as JPEG or PNG (N >= 1)

The capture time travels with the frame so that latency is measured from the
camera, not from the server's receipt. The server may answer with TEXT
messages holding JSON (acks, or ``{"error": "..."}`` for a frame it rejected).

This module is the single definition of the format: the server
(``service.app``) and the camera simulator (``deploy/camera_sim.py``) both
import it. It needs nothing beyond the standard library.
"""

from __future__ import annotations

import math
import struct

HEADER = struct.Struct(">d")
MIN_MESSAGE_BYTES = HEADER.size + 1


def encode_frame(capture_ts: float, payload: bytes) -> bytes:
    """One binary message: ``capture_ts`` (float64, big-endian) then ``payload``."""
    capture_ts = float(capture_ts)
    if not math.isfinite(capture_ts):
        raise ValueError(f"capture_ts must be a finite number of seconds, got {capture_ts!r}")
    if not payload:
        raise ValueError("the frame payload (JPEG or PNG bytes) is empty")
    return HEADER.pack(capture_ts) + bytes(payload)


def decode_frame(message: bytes | bytearray | memoryview) -> tuple[float, bytes]:
    """Split a binary message into ``(capture_ts, payload)``; ValueError if malformed."""
    if len(message) < MIN_MESSAGE_BYTES:
        raise ValueError(
            f"frame message of {len(message)} bytes is too short: expected an 8-byte big-endian float64 "
            f"capture time followed by at least 1 byte of JPEG/PNG"
        )
    (capture_ts,) = HEADER.unpack_from(message, 0)
    if not math.isfinite(capture_ts):
        raise ValueError(f"capture time in the frame header is not finite ({capture_ts!r})")
    return capture_ts, bytes(message[HEADER.size:])
