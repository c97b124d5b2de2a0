"""What every benchmark in ``bench/`` shares: the machine description, the
arguments and exit statuses they all have, the JSON they print, a work
directory, reading the sample video, and percentile summaries.

Not a benchmark itself. The scripts import it as ``import bench_common``: ``python
bench/bench_x.py`` puts ``bench/`` first on ``sys.path`` by itself, and pytest's
``pythonpath = ["bench"]`` (pyproject.toml) does the same for ``tests/bench``;
every module here is named ``bench_*`` so that none can shadow a package. It
lives beside the scripts, not in an installed package, because it is about
measuring (``bench_troi_align.py`` and ``bench_export.py`` never talk to a
service) and should not ship in the wheel or the image.

Standard library only at import time (numpy and OpenCV inside the functions
that need them), so the torch benchmarks and the service benchmarks both load
it cheaply. Imports nothing from the project.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

# OpenCV's sample footage (Debian's opencv-doc): real people on a walkway, 768x576.
DEFAULT_VIDEO = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
# Exit statuses every benchmark uses: bad arguments or inputs, a run that failed.
BAD_INPUT, FAILED = 2, 1


# ----------------------------------------------------------------- progress
def logger(name: str) -> Callable[[str], None]:
    """A function that prints ``[bench.NAME] message`` on stderr (progress and summaries;
    stdout holds only the JSON)."""
    prefix = f"[bench.{name}]"

    def log(message: str) -> None:
        print(f"{prefix} {message}", file=sys.stderr, flush=True)

    return log


def size_text_hw(height: int, width: int) -> str:
    """``(576, 768)`` -> ``"768x576"``, as cameras name sizes."""
    return f"{width}x{height}"


def mib(n_bytes: float) -> float:
    """Bytes in MiB (2**20), one decimal."""
    return round(n_bytes / 2**20, 1)


# ----------------------------------------------------------------- the machine
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions(*distributions: str) -> dict[str, str | None]:
    """Installed versions of ``distributions``, keyed with ``_`` for ``-`` (None when missing)."""
    out = {}
    for name in distributions:
        try:
            out[name.replace("-", "_")] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name.replace("-", "_")] = None
    return out


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine(**extra: Any) -> dict:
    """What the figures were measured on; ``extra`` adds the benchmark's own (device,
    threads, library versions). ``finish`` adds the load average at the end."""
    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu": cpu_model(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        **extra,
        "load_average_at_start": load_average(),
    }


# ----------------------------------------------------------------- arguments
def parser(script: str, doc: str | None) -> argparse.ArgumentParser:
    """The benchmark's parser (``script`` is its ``__file__``, ``doc`` its ``__doc__``),
    with the ``--out`` every benchmark has."""
    p = argparse.ArgumentParser(prog=f"python bench/{Path(script).name}",
                                description=(doc or "").strip().splitlines()[0] if doc else None)
    p.add_argument("--out", type=Path, help="also write the JSON here")
    return p


def add_video(p: argparse.ArgumentParser, what: str = "footage") -> None:
    p.add_argument("--video", type=Path, default=DEFAULT_VIDEO, help=f"{what} (default {DEFAULT_VIDEO})")


def add_workdir(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--workdir", type=Path, help=f"where {what} go (default: a temporary directory, removed)")


def command(script: str, argv: Sequence[str] | None) -> str:
    """How the benchmark was run, for the report (``argv`` None: this process's own)."""
    return " ".join(["python", f"bench/{Path(script).name}", *(sys.argv[1:] if argv is None else argv)])


@contextmanager
def workdir(path: Path | None, prefix: str) -> Iterator[tuple[Path, bool]]:
    """``(directory, temporary)``: ``path`` (created), or a temporary directory removed afterwards."""
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path, False
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as temporary:
        yield Path(temporary), True


# ----------------------------------------------------------------- running and reporting
def guarded(run: Callable[..., dict], *args: Any) -> tuple[dict | None, int]:
    """``(report, 0)``, or ``(None, status)`` after an ``error:`` line on stderr:
    BAD_INPUT for bad arguments or a missing input (ValueError, FileNotFoundError),
    FAILED when the run failed (RuntimeError, OSError: e.g. the service did not start)."""
    try:
        return run(*args), 0
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None, BAD_INPUT
    except (RuntimeError, OSError) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None, FAILED


def finish(report: dict, started: float) -> dict:
    """The load average at the end and the wall time since ``started`` (``time.perf_counter``)."""
    report["machine"]["load_average_at_end"] = load_average()
    report["wall_s"] = round(time.perf_counter() - started, 1)
    return report


def emit(report: dict, out: Path | None) -> None:
    """The report as JSON on stdout (the benchmark's only stdout), and in ``out`` when given."""
    text = json.dumps(report, indent=2)
    print(text, flush=True)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n", encoding="utf-8")


# ----------------------------------------------------------------- inputs and figures
def open_video(path: Path):
    """An opened ``cv2.VideoCapture``; FileNotFoundError saying how to get the default
    footage, ValueError when OpenCV cannot open the file."""
    import cv2

    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: video not found; the default is OpenCV's sample footage "
            "(`apt-get install opencv-doc`), or pass --video PATH"
        )
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise ValueError(f"{path}: OpenCV cannot open this video")
    return capture


def summary(values: Iterable[float], keys: Sequence[str] = ("n", "p50", "p99", "max"), digits: int = 2,
            suffix: str = "") -> dict:
    """Figures of ``values`` by name: ``n``, ``min``, ``max``, ``mean``, ``median`` or
    ``pNN`` (numpy's linear percentile), rounded to ``digits``, each key + ``suffix``;
    every figure None (``n`` 0) when there are no values."""
    import numpy as np

    array = np.asarray(list(values), dtype=np.float64)
    out: dict[str, Any] = {}
    for key in keys:
        if key == "n":
            value: Any = int(array.size)
        elif array.size == 0:
            value = None
        elif key in ("min", "max", "mean", "median"):
            value = round(float(getattr(np, key)(array)), digits)
        elif key.startswith("p") and key[1:].isdigit():
            value = round(float(np.percentile(array, int(key[1:]))), digits)
        else:
            raise ValueError(f"unknown figure {key!r}")
        out[key + suffix] = value
    return out
