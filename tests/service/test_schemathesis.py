"""Schemathesis against the served OpenAPI document, on a real server with tokens on.

Bounded (a fixed seed, a few dozen cases per operation, ~10 s). Every check
runs, the undocumented-status-code, content-type and response-schema checks
among them, except ``positive_data_acceptance``: a schema cannot say that a
polygon must be simple or that a homography must be well conditioned, so
schema-valid zone sets (and a multipart body without a file) are rightly
answered 422/400, and that check would call each of those a failure.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from service.app import create_app
from service.config import load_settings

from .hog_engine import HogEngine
from .live import LiveServer

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
ADMIN = "admin-token-0123456789"


@pytest.mark.skipif(not SCHEMATHESIS.is_file(), reason="schemathesis is not installed (pip install -e '.[test]')")
def test_the_served_api_keeps_to_its_openapi_document(tmp_path):
    settings = load_settings(None, auth={"tokens": [{"name": "ops", "role": "admin", "token": ADMIN}]})
    with LiveServer(create_app(settings, engine=HogEngine())) as live:
        headers = {"Authorization": f"Bearer {ADMIN}"}
        assert live.client.post("/v1/streams", json={"id": "cam"}, headers=headers).status_code == 201
        run = subprocess.run(
            [str(SCHEMATHESIS), "run", f"{live.url}/openapi.json", "-H", f"Authorization: Bearer {ADMIN}",
             "--checks", "all", "--exclude-checks", "positive_data_acceptance", "--max-examples", "40",
             "--seed", "7", "--request-timeout", "20", "--no-color"],
            capture_output=True, text=True, timeout=300, cwd=tmp_path)  # its reports go there
        summary = run.stdout[-6000:]
        assert run.returncode == 0, summary
        assert "Tested: 15" in summary or "15/15" in summary, summary
        assert live.client.get("/healthz").status_code == 200
