"""``python -m models.evaluate``: YouTube-VIS video AP of a results file against an annotation file.

Owns the command line: arguments, reading a submission zip, error reporting
(the file and the problem, exit status 2, no traceback), the printed table and
the metrics JSON.
The figures come from :mod:`models.ytvis_eval` (official ``YTVOSeval``
semantics, numpy + pycocotools, no torch).
"""

from __future__ import annotations

import argparse
import json
import sys
import zipfile
from pathlib import Path
from typing import Any, NoReturn

from models.ytvis_eval import FIGURES, InputError, evaluate, load_json, parse_ground_truth, parse_results

__all__ = ["format_table", "load_results", "main"]


def load_results(path: Path) -> Any:
    """Results from a JSON file, or from a submission zip holding one ``results.json`` (any folder)."""
    if not (path.is_file() and zipfile.is_zipfile(path)):
        return load_json(path)
    with zipfile.ZipFile(path) as archive:
        members = [name for name in archive.namelist() if Path(name).name == "results.json"]
        if len(members) != 1:
            raise InputError(f"the zip must hold exactly one results.json, found {len(members)}")
        try:
            return json.loads(archive.read(members[0]).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise InputError(f"{members[0]} in the zip is not valid JSON: {error}") from None


def format_table(metrics: dict[str, float]) -> str:
    """The 12 figures, one a line, with what each one averages over."""
    lines = [f"{'figure':<6}  {'value':>7}  over"]
    for figure in FIGURES:
        iou = "0.50:0.95" if figure.iou is None else f"{figure.iou:.2f}"
        value = metrics[figure.name]
        # -1 is the official "no ground truth in this range", not a score
        shown = f"{value:7.4f}" if value != -1 else f"{'-1':>7}"
        lines.append(f"{figure.name:<6}  {shown}  IoU={iou:<9} area={figure.area:<6} maxDets={figure.max_dets}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m models.evaluate",
        description="YouTube-VIS video AP (mask IoU) as the official YTVOSeval computes it.")
    parser.add_argument("--gt", required=True, type=Path, help="YouTube-VIS annotation JSON")
    parser.add_argument("--results", required=True, type=Path,
                        help="results JSON (list of {video_id, category_id, score, segmentations}) "
                             "or a submission .zip holding results.json")
    parser.add_argument("--out", type=Path, help="write the figures and input paths here as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)

    def fail(path: Path, problem: object) -> NoReturn:
        parser.exit(2, f"{parser.prog}: error: {path}: {problem}\n")

    try:
        ground_truth = parse_ground_truth(load_json(args.gt))
    except (InputError, OSError) as error:
        fail(args.gt, error)
    try:
        results = load_results(args.results)
        detections = parse_results(results, ground_truth)
    except (InputError, OSError, zipfile.BadZipFile) as error:
        fail(args.results, error)

    metrics = evaluate(ground_truth, detections, progress=True)
    print(format_table(metrics))
    if args.out is not None:
        report = {"gt": str(args.gt), "results": str(args.results), "metrics": metrics}
        try:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2) + "\n")
        except OSError as error:
            fail(args.out, f"cannot write: {error}")
    where = f", figures in {args.out}" if args.out is not None else ""
    print(f"evaluated {len(results)} results on {len(ground_truth.video_ids)} videos and "
          f"{len(ground_truth.category_ids)} categories: AP {metrics['AP']:.4f}{where}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
