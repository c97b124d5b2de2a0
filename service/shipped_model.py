"""Where the shipped person model lives once ``make model`` has exported it.

Owns that path and nothing else, and imports nothing from the project, so that
``service.cli`` (``cellwatch serve`` without ``--model``), the demo client
(``client.demo_setup``) and ``bench/bench_person_model.py`` read it from one
place without importing each other.
"""

from __future__ import annotations

from pathlib import Path

# The shipped person model as exported by `make model` (ONNX + its sidecar .json),
# from models/weights/person-lite.pt (see models/weights/MODEL_CARD.md).
SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "models" / "weights" / "person-lite.onnx"
