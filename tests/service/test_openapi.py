"""The served OpenAPI document against a committed snapshot (data/openapi_snapshot.json).

Clients and schemathesis are built from this document, so its structure
(paths, methods, operationIds, parameters, request bodies, response codes and
content, component schemas, security) must change only on purpose. Wording
may change freely: ``description`` and ``summary`` texts are stripped on both
sides before comparing.

After an intended change, regenerate the snapshot and review its diff:
``python -m tests.service.test_openapi``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from service.app import create_app
from service.config import load_settings

from .hog_engine import HogEngine
from .live import LiveServer

SNAPSHOT = Path(__file__).with_name("data") / "openapi_snapshot.json"
WORDING = ("description", "summary")
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def without_wording(node: Any, in_properties: bool = False) -> Any:
    """``node`` without description/summary texts; in a ``properties`` map the
    keys are field names, so a field called "description" is kept."""
    if isinstance(node, list):
        return [without_wording(item) for item in node]
    if not isinstance(node, dict):
        return node
    return {key: without_wording(value, in_properties=key == "properties" and not in_properties)
            for key, value in node.items()
            if in_properties or not (key in WORDING and isinstance(value, str))}


def served_document() -> dict[str, Any]:
    return without_wording(create_app(load_settings(None), engine=HogEngine()).openapi())


@pytest.fixture(scope="module")
def served() -> dict[str, Any]:
    return served_document()


@pytest.fixture(scope="module")
def snapshot() -> dict[str, Any]:
    return json.loads(SNAPSHOT.read_text())


def _operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(path, method): operation for path, item in document["paths"].items()
            for method, operation in item.items() if method in HTTP_METHODS}


def _aspect(document: dict[str, Any], name: str) -> dict[str, Any]:
    """One aspect of every operation, keyed "METHOD path" (JSON-comparable)."""
    return {f"{method.upper()} {path}": operation.get(name)
            for (path, method), operation in _operations(document).items()}


def test_the_same_paths_and_methods(served, snapshot):
    assert sorted(_operations(served)) == sorted(_operations(snapshot))


@pytest.mark.parametrize("aspect", ["operationId", "parameters", "requestBody", "security"])
def test_each_operation_keeps_its(aspect, served, snapshot):
    assert _aspect(served, aspect) == _aspect(snapshot, aspect)


def test_each_operation_keeps_its_response_codes(served, snapshot):
    def codes(document):
        return {key: sorted(responses) for key, responses in _aspect(document, "responses").items()}

    assert codes(served) == codes(snapshot)


def test_each_response_keeps_its_content(served, snapshot):
    assert _aspect(served, "responses") == _aspect(snapshot, "responses")


def test_the_same_component_schemas(served, snapshot):
    assert sorted(served["components"]["schemas"]) == sorted(snapshot["components"]["schemas"])
    for name, schema in snapshot["components"]["schemas"].items():
        assert served["components"]["schemas"][name] == schema, name


def test_the_whole_document_but_its_wording(served, snapshot):
    assert served == snapshot


def test_a_wrong_method_is_405_naming_every_documented_method_of_the_path(snapshot):
    # The routes live in included routers; Allow must still list each path's methods from all of them.
    with LiveServer(create_app(load_settings(None), engine=HogEngine()), wait_ready=False) as live:
        for path, item in snapshot["paths"].items():
            answer = live.client.request("PATCH", path.replace("{stream_id}", "cam"))
            assert answer.status_code == 405, path
            assert answer.headers["allow"] == ", ".join(sorted(m.upper() for m in item if m in HTTP_METHODS)), path


def test_only_wording_is_stripped():
    document = {"info": {"title": "t", "description": "gone"},
                "paths": {"/x": {"get": {"summary": "gone", "responses": {"200": {"description": "gone"}}}}},
                "components": {"schemas": {"M": {"description": "gone", "properties": {
                    "description": {"type": "string", "description": "gone"}, "summary": {"type": "integer"}}}}}}
    assert without_wording(document) == {
        "info": {"title": "t"}, "paths": {"/x": {"get": {"responses": {"200": {}}}}},
        "components": {"schemas": {"M": {"properties": {"description": {"type": "string"},
                                                        "summary": {"type": "integer"}}}}}}
    assert "description" in json.dumps(create_app(load_settings(None), engine=HogEngine()).openapi())


if __name__ == "__main__":
    SNAPSHOT.parent.mkdir(exist_ok=True)
    SNAPSHOT.write_text(json.dumps(served_document(), indent=1) + "\n")
    print(f"wrote {SNAPSHOT} ({len(served_document()['paths'])} paths)")
