"""JSON logs (service.logs), above all that native code's stderr stays JSON.

libjpeg (inside OpenCV) prints warnings such as "Corrupt JPEG data: premature
end of data segment" with fprintf on fd 2, below Python's logging. Each test
runs a fresh interpreter, because capturing rewires the process's fd 2, and
reads that interpreter's stderr as a log collector would.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

LIBJPEG_WARNING = "Corrupt JPEG data: premature end of data segment"

# A real JPEG cut short and closed with an EOI marker: libjpeg meets the
# marker inside the entropy-coded data and warns (cut without the marker,
# OpenCV 4.14 refuses the buffer silently, which would prove nothing).
DECODE_TRUNCATED_JPEG = """
import cv2, numpy as np
gradient = (np.arange(64 * 64 * 3) % 251).astype(np.uint8).reshape(64, 64, 3)
ok, encoded = cv2.imencode(".jpg", cv2.resize(gradient, (320, 240)))
data = encoded.tobytes()
cut = data[: len(data) // 2] + b"\\xff\\xd9"
image = cv2.imdecode(np.frombuffer(cut, np.uint8), cv2.IMREAD_COLOR)
assert image is not None, "the cut JPEG should still decode (with a warning)"
"""


def _run(body: str, capture_native: bool) -> subprocess.CompletedProcess:
    code = (
        "import logging\nfrom service import logs\n"
        f"logs.configure('info', capture_native={capture_native})\n"
        + textwrap.dedent(body)
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)


def _records(stderr: str) -> list[dict]:
    """Every stderr line as a JSON object; fails naming the first line that is not one."""
    records = []
    for line in stderr.splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise AssertionError(f"stderr line is not JSON: {line!r}") from None
    return records


def test_libjpeg_warnings_become_json_records_when_captured() -> None:
    out = _run(DECODE_TRUNCATED_JPEG + "logging.getLogger('cellwatch.test').info('decoded', extra={'frame': 7})\n",
               capture_native=True)
    records = _records(out.stderr)
    native = [r for r in records if r["logger"] == "cellwatch.native"]
    assert [(r["level"], r["message"]) for r in native] == [("warning", LIBJPEG_WARNING)]
    normal = [r for r in records if r["logger"] == "cellwatch.test"]
    assert [(r["message"], r["frame"]) for r in normal] == [("decoded", 7)]


def test_without_capture_libjpeg_prints_plain_text() -> None:
    # The same decode without capture_native: what the fix is for.
    out = _run(DECODE_TRUNCATED_JPEG, capture_native=False)
    assert LIBJPEG_WARNING in out.stderr.splitlines()


def test_long_native_lines_are_cut_and_a_burst_does_not_block_the_writer() -> None:
    # 1.2 MB of short lines is far more than a pipe holds (64 KiB on Linux):
    # the writer finishes only if the reader keeps draining the pipe.
    out = _run("""
        import os
        os.write(2, b"x" * 100_000 + b" tail\\n")
        os.write(2, b"no newline at first, ")
        os.write(2, b"then the rest\\n\\n")
        burst = b"".join(b"burst %06d\\n" % i for i in range(100_000))
        os.write(2, burst)
        os.write(2, b"last line, no newline")
        """, capture_native=True)
    records = _records(out.stderr)
    assert {r["logger"] for r in records} == {"cellwatch.native"}
    messages = [r["message"] for r in records]
    assert messages[0] == "x" * 4096 and records[0]["truncated"] is True
    assert messages[1] == "no newline at first, then the rest" and "truncated" not in records[1]
    assert messages[2:-1] == ["burst %06d" % i for i in range(100_000)]
    assert messages[-1] == "last line, no newline"


def test_capture_ends_when_configured_without_it() -> None:
    out = _run("""
        import os
        os.write(2, b"while captured\\n")
        logs.configure('info')
        os.write(2, b"after capture\\n")
        """, capture_native=True)
    lines = out.stderr.splitlines()
    assert lines[-1] == "after capture"
    assert [(r["logger"], r["message"]) for r in _records("\n".join(lines[:-1]))] == [
        ("cellwatch.native", "while captured")]


def test_python_stderr_writes_are_captured_too() -> None:
    # sys.stderr is fd 2 as well: warnings and thread tracebacks stay JSON.
    out = _run("""
        import sys, threading
        print("from sys.stderr", file=sys.stderr)
        thread = threading.Thread(target=lambda: 1 / 0)
        thread.start(); thread.join()
        """, capture_native=True)
    messages = [r["message"] for r in _records(out.stderr)]
    assert messages[0] == "from sys.stderr"
    assert "ZeroDivisionError: division by zero" in messages
