"""Service settings: a YAML file, overridden by ``CELLWATCH_*`` environment
variables, overridden by command-line flags.

The file's shape (``deploy/cell.example.yaml``)::

    server: {host: 127.0.0.1, port: 8080}
    model: {engine: onnxruntime, path: model.onnx, threads: 2}
    limits: {max_frame_bytes: 4000000, max_pixels: 16000000, max_side: 8192, max_streams: 16}
    batching: {max_batch: 4, max_wait_ms: 5}
    pipeline: {score_thresh: 0.5, max_track_age: 30, track_motion_gate: 0.5}
    safety: {watchdog_ms: 500, deadline_ms: 1000, clock_ahead_ms: 500}
    sources: {file_dirs: [/srv/videos]}      # file sources only from these directories
    streams:
      - {id: cam1, source: push}
      - {id: door, source: "rtsp://192.0.2.10:554/stream1", options: {reconnect_max_s: 10}}

Environment variables use ``__`` between levels, e.g.
``CELLWATCH_MODEL__PATH=/opt/model.onnx`` or ``CELLWATCH_LIMITS__MAX_STREAMS=4``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from models.defaults import DEFAULT_FRAME_SIZE

from .alerts import SafetyConfig
from .auth import AuthSettings
from .engines import ENGINE_KINDS

# \Z, not $: "$" also matches before a trailing newline, and "cam\n" is no id.
# Match with ``fullmatch``.
STREAM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
STREAM_ID_RULE = "1-64 letters, digits, '_', '.', '-', starting alphanumeric"

# Upper bounds of timings and distances. Each is far beyond any sensible
# setting, and finite: an infinite watchdog or deadline silently switches a
# safety check off, and a huge one overflows the timers it feeds.
MAX_SAFETY_MS = 60_000.0  # watchdog, deadline, heartbeat: a minute
MAX_HOLD_MS = 600_000.0  # clear hysteresis: ten minutes
MAX_BATCH_WAIT_MS = 1_000.0
MAX_SPEED_MM_S = 10_000.0  # 10 m/s: faster than any person or collaborative robot
MAX_TIME_S = 10.0  # reaction and stopping times
MAX_DISTANCE_MM = 100_000.0  # 100 m


class ConfigError(ValueError):
    """A configuration problem, with the file and the field it is in."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ServerSettings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"


class ModelSettings(_Strict):
    engine: Literal[ENGINE_KINDS] = "onnxruntime"  # type: ignore[valid-type]  # the one list of engines
    path: str | None = None
    threads: int | None = Field(None, ge=1, le=256)
    # torch engine only: the camera frame size the working size is derived from
    frame_size: str = DEFAULT_FRAME_SIZE
    # tensorrt engine only: the sidecar JSON of the ONNX file the engine came from
    sidecar: str | None = None


class LimitSettings(_Strict):
    max_frame_bytes: int = Field(4_000_000, ge=1, le=1_000_000_000)
    max_pixels: int = Field(16_000_000, ge=1, le=1_000_000_000)
    max_side: int = Field(8192, ge=1, le=65_535)
    max_streams: int = Field(16, ge=1, le=1024)
    max_json_bytes: int = Field(1_000_000, ge=1024, le=64_000_000,
                                description="largest JSON request body (zones, stream creation)")
    max_zone_vertices: int = Field(256, ge=3, le=4096,
                                   description="most vertices per zone polygon and most homography pairs")


class BatchingSettings(_Strict):
    max_batch: int = Field(4, ge=1, le=256)
    max_wait_ms: float = Field(5.0, ge=0, le=MAX_BATCH_WAIT_MS)


class PipelineSettings(_Strict):
    score_thresh: float = Field(0.5, gt=0, le=1)
    max_track_age: int | None = Field(30, ge=0, le=100_000)
    max_tracks: int | None = Field(64, ge=1, le=10_000)
    # a detection continues a track only within this many box heights per frame unseen (null: no gate)
    track_motion_gate: float | None = Field(0.5, gt=0, le=100)
    latency_window: int = Field(1000, ge=10, le=1_000_000)


class EventSettings(_Strict):
    history: int = Field(1000, ge=1, le=1_000_000, description="events kept per stream for replay")
    queue_size: int = Field(256, ge=1, le=1_000_000,
                            description="events a subscriber may fall behind before it is closed")
    heartbeat_ms: float = Field(250.0, ge=10, le=MAX_SAFETY_MS)


class SeparationSettings(_Strict):
    """Inputs of the ISO/TS 15066 protective separation distance (mm, mm/s, s)."""

    plc_and_robot_s: float = Field(0.1, ge=0, le=MAX_TIME_S, description="PLC + robot controller reaction time")
    v_h_mm_s: float = Field(1600.0, ge=0, le=MAX_SPEED_MM_S, description="person approach speed")
    v_r_mm_s: float = Field(1000.0, ge=0, le=MAX_SPEED_MM_S, description="robot speed towards the person")
    t_s_s: float = Field(0.3, ge=0, le=MAX_TIME_S, description="robot stopping time")
    s_s_mm: float = Field(200.0, ge=0, le=MAX_DISTANCE_MM, description="robot stopping distance")
    c_mm: float = Field(0.0, ge=0, le=MAX_DISTANCE_MM, description="intrusion distance")
    z_d_mm: float = Field(100.0, ge=0, le=MAX_DISTANCE_MM, description="position uncertainty of the person (this service)")
    z_r_mm: float = Field(20.0, ge=0, le=MAX_DISTANCE_MM, description="position uncertainty of the robot")
    protective_distance_mm: float | None = Field(None, ge=0, le=MAX_DISTANCE_MM, description="the configured protective distance")


class SourceSettings(_Strict):
    """Where pulled streams may read from (checked by ``service.sources.parse_source``)."""

    file_dirs: list[str] = Field(
        default_factory=list,
        description="absolute directories whose files (symlinks and '..' resolved) may be played as file "
        "sources; empty: every file source is refused",
    )

    @field_validator("file_dirs")
    @classmethod
    def _absolute(cls, dirs: list[str]) -> list[str]:
        for directory in dirs:
            if not Path(directory).is_absolute():  # relative would depend on where the service starts
                raise ValueError(f"file_dirs entry {directory!r} must be an absolute path")
        return dirs


class StreamConfig(_Strict):
    id: str
    source: str = "push"
    options: dict[str, Any] = Field(default_factory=dict)
    zones: dict[str, Any] | None = None

    @field_validator("id")
    @classmethod
    def _valid_id(cls, value: str) -> str:
        if not STREAM_ID.fullmatch(value):
            raise ValueError(f"stream ids are {STREAM_ID_RULE}")
        return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CELLWATCH_", env_nested_delimiter="__", extra="forbid")

    server: ServerSettings = Field(default_factory=ServerSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    streams: list[StreamConfig] = Field(default_factory=list)
    sources: SourceSettings = Field(default_factory=SourceSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    safety: SafetyConfig = Field(default_factory=SafetyConfig)
    events: EventSettings = Field(default_factory=EventSettings)
    separation: SeparationSettings = Field(default_factory=SeparationSettings)


class _Mapping(PydanticBaseSettingsSource):
    """Settings from an already-parsed mapping (the YAML file)."""

    def __init__(self, settings_cls: type[BaseSettings], values: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self.values = values

    def get_field_value(self, field, field_name):  # pragma: no cover - required by the base class
        return self.values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self.values)


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: the top level must be a mapping (server, model, limits, ...)")
    return values


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """File < environment < ``overrides`` (nested dicts, e.g. ``server={"port": 9000}``)."""
    values = read_yaml(path) if path is not None else {}

    class _FromFile(Settings):
        @classmethod
        def settings_customise_sources(
            cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
        ):
            return (init_settings, env_settings, _Mapping(settings_cls, values))

    try:
        settings = _FromFile(**overrides)
    except ValidationError as exc:
        where = f"{path}: " if path is not None else ""
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{where}invalid configuration: {problems}") from exc
    ids = [s.id for s in settings.streams]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ConfigError(f"{path or 'config'}: duplicate stream id(s) {duplicates}")
    if len(ids) > settings.limits.max_streams:
        raise ConfigError(f"{path or 'config'}: {len(ids)} streams exceed limits.max_streams={settings.limits.max_streams}")
    return Settings.model_validate(settings.model_dump())
