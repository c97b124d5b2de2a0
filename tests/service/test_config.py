"""Settings: YAML file < CELLWATCH_* environment < command-line overrides; clear errors."""

from __future__ import annotations

import pytest

from service.config import ConfigError, load_settings


def _write(tmp_path, text: str):
    path = tmp_path / "cell.yaml"
    path.write_text(text)
    return path


def test_file_then_environment_then_overrides(tmp_path, monkeypatch):
    path = _write(tmp_path, "server: {port: 9000}\nlimits: {max_streams: 8}\nmodel: {path: m.onnx, threads: 1}\n"
                            "streams:\n  - {id: cam1}\n  - {id: door, source: 'rtsp://192.0.2.1/s'}\n")
    settings = load_settings(path)
    assert (settings.server.port, settings.limits.max_streams, settings.model.threads) == (9000, 8, 1)
    assert settings.server.host == "127.0.0.1", "binds loopback unless configured"
    assert [(s.id, s.source) for s in settings.streams] == [("cam1", "push"), ("door", "rtsp://192.0.2.1/s")]
    monkeypatch.setenv("CELLWATCH_SERVER__PORT", "9100")
    monkeypatch.setenv("CELLWATCH_MODEL__THREADS", "2")
    settings = load_settings(path)
    assert (settings.server.port, settings.model.threads, settings.limits.max_streams) == (9100, 2, 8)
    assert load_settings(path, server={"port": 7000}).server.port == 7000


@pytest.mark.parametrize(
    "text, message",
    [
        ("server: {port: 8080\n", "not valid YAML"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("serverr: {}\n", "serverr: Extra inputs are not permitted"),
        ("server: {port: 99999}\n", "server.port"),
        ("streams:\n  - {id: 'bad id'}\n", "streams.0.id"),
        ("streams:\n  - {id: a}\n  - {id: a}\n", "duplicate stream id(s) ['a']"),
        ("limits: {max_streams: 1}\nstreams:\n  - {id: a}\n  - {id: b}\n", "exceed limits.max_streams=1"),
        ("model: {engine: tensorflow}\n", "model.engine"),
    ],
)
def test_malformed_config_names_file_and_field(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(path) in str(info.value) and message in str(info.value)


def test_missing_file_and_bad_environment(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="no such config file"):
        load_settings(tmp_path / "none.yaml")
    monkeypatch.setenv("CELLWATCH_LIMITS__MAX_STREAMS", "many")
    with pytest.raises(ConfigError, match="limits.max_streams"):
        load_settings()
