"""The one `cellwatch serve` harness (``client.server_process``): how it reports a
service that cannot start, that exits, or that is not ready in time, and that it
leaves nothing running. A ready service and its SIGTERM stop are exercised by the
demo's and the live benchmarks' end-to-end runs (tests/service/test_demo.py,
tests/bench/test_bench_service.py, tests/bench/test_bench_alerts.py)."""

from __future__ import annotations

import socket

import pytest

from client.server_process import HOST, ServeError, ServeProcess, free_port


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((HOST, port)) == 0


def test_a_service_that_exits_is_reported_with_its_log_tail(tmp_path) -> None:
    config = tmp_path / "cell.yaml"
    config.write_text("streams:\n  - id: [not, a, string]\n")
    with ServeProcess(tmp_path / "serve.log", config=config) as server:
        assert server.command[-4:] == ["--host", HOST, "--port", str(server.port)]
        with pytest.raises(ServeError) as raised:
            server.wait_ready(60)
    message = str(raised.value)
    # the exit status, the log named, and the service's own words from its log
    assert "the service exited with status 2" in message and str(tmp_path / "serve.log") in message
    assert str(config) in message and "streams.0.id" in message
    assert server.exit_status == 2


def test_a_service_not_ready_in_time_is_stopped_and_its_port_freed(tmp_path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"never loaded in 0.2 s")
    port = free_port()
    server = ServeProcess(tmp_path / "serve.log", model=model, port=port)
    try:
        with pytest.raises(ServeError, match=r"the service was not ready within 0.2 s; the last lines of .*serve\.log"):
            server.wait_ready(0.2)
        assert server.exit_error() is None  # still starting: not an exit
    finally:
        status = server.stop()
    assert status is not None and server.process.poll() is not None
    assert not _listening(port)
    assert server.stop() == status  # stopping twice is harmless
