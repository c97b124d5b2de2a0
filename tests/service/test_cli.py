"""The ``cellwatch`` console script."""

from __future__ import annotations

import subprocess
import sys

from service.cli import main


def test_presets_lists_every_model_preset(capsys) -> None:
    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["r50", "r101", "x101_32x4d", "x101_64x4d", "lite", "nano"]
    assert "resnext101_64x4d" in lines[3] and "classes=1" in lines[4]


def test_demo_refuses_a_speed_that_is_not_positive(capsys) -> None:
    assert main(["demo", "--speed", "0"]) == 2
    assert "--speed must be > 0" in capsys.readouterr().err


def test_serve_with_a_missing_model_file_names_it(capsys, tmp_path) -> None:
    assert main(["serve", "--model", str(tmp_path / "none.onnx")]) == 2
    assert "none.onnx: no such model file" in capsys.readouterr().err


def test_start_up_does_not_import_torch() -> None:
    code = "import sys; from service.cli import main; import contextlib, io\n" \
           "with contextlib.redirect_stdout(io.StringIO()):\n" \
           "    try: main(['--help'])\n" \
           "    except SystemExit: pass\n" \
           "print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
