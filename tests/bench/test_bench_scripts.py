"""The benchmark scripts as scripts: named ``bench_*`` (none shadows a package), no
``sys.path`` edits or importlib loading, runnable from any directory, and every
benchmark in ``make bench`` (but the person-model one, which needs held-out labels)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted((ROOT / "bench").glob("*.py"))
BENCHMARKS = [p for p in SCRIPTS if 'if __name__ == "__main__"' in p.read_text()]
NOT_IN_MAKE_BENCH = {"bench_person_model.py"}  # needs labels from python -m models.autolabel


def _imported(tree: ast.AST) -> list[tuple[int, str]]:
    """``(line, dotted name)`` of everything a module imports."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            out += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return out


def test_every_file_is_named_bench_and_edits_no_import_path() -> None:
    assert len(BENCHMARKS) == 5, [p.name for p in BENCHMARKS]
    for path in SCRIPTS:
        assert path.name.startswith("bench_"), f"{path.name} could shadow a module: name it bench_*"
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", None) == "sys":
                pytest.fail(f"{path.name}:{node.lineno} uses sys.path")
        for line, name in _imported(tree):
            loads = name.split(".")[0] == "importlib" and name != "importlib.metadata"
            assert not loads, f"{path.name}:{line} imports {name}: import the module by its name instead"


def test_make_bench_runs_every_benchmark() -> None:
    makefile = (ROOT / "Makefile").read_text()
    target = re.search(r"^bench:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert target, "no bench target in the Makefile"
    run = set(re.findall(r"bench/(bench_\w+\.py)", target.group(1)))
    assert run == {p.name for p in BENCHMARKS} - NOT_IN_MAKE_BENCH


@pytest.mark.parametrize("script", [p.name for p in BENCHMARKS])
def test_script_runs_from_another_directory(script: str, tmp_path) -> None:
    # As `python bench/bench_x.py` runs it: only bench/ is added to sys.path, by Python itself.
    done = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--help"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: python bench/{script}") and "--out" in done.stdout
