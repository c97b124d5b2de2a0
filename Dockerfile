# syntax=docker/dockerfile:1
#
# cellwatch container image: advisory person segmentation/tracking, NOT safety-rated.
#
#   builder  Python + PyTorch: installs the project from pyproject.toml, exports the
#            `lite` model to ONNX (+ its sidecar JSON) and builds the project wheel.
#   runtime  Python + ONNX Runtime on CPU, no PyTorch: the project wheel installed with
#            --no-deps plus deploy/requirements-runtime.txt, the exported model, deploy/.
#
# Checked statically only (tests/service/test_container.py, hadolint): the machines this
# project is developed and tested on have no Docker engine. See deploy/README.md.

# ------------------------------------------------------------------------------ builder
FROM python:3.11-slim-bookworm AS builder

# Optional: an extra wheel index, e.g. PyTorch's CPU-only index, so the builder does not
# download the CUDA build of torch (the runtime never contains torch either way).
ARG PIP_EXTRA_INDEX_URL=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# pyproject's `readme` is README.md: the build needs it.
COPY pyproject.toml README.md ./
COPY models/ models/
COPY export/ export/
COPY service/ service/
COPY client/ client/

# Everything pyproject.toml pins, torch==2.14.1 included (large; it stays in this stage).
RUN pip install . \
    && pip wheel --no-deps --wheel-dir /build/wheels .

# Run from /src so `models` resolves to the source tree: the shipped person model
# (models/weights/person-lite.pt, see models/weights/MODEL_CARD.md) is not package
# data and is not in the wheel. Naming it makes the build fail if it is missing,
# rather than export random heads. The exporter also checks ONNX Runtime against
# PyTorch on random frames. 768x576 is the frame size of the sample footage
# (opencv-doc's vtest.avi); other sizes are resized to the same working size.
RUN python -m export.onnx --preset lite --mode standard \
        --weights models/weights/person-lite.pt \
        --out /build/model/model.onnx --frame-size 768x576 \
    && test -s /build/model/model.onnx \
    && test -s /build/model/model.json

# ------------------------------------------------------------------------------ runtime
FROM python:3.11-slim-bookworm AS runtime

LABEL org.opencontainers.image.title="cellwatch" \
      org.opencontainers.image.description="Advisory person segmentation and proximity alerts for robot cells. NOT safety-rated." \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# No apt packages: opencv-python-headless, onnxruntime, numpy and pycocotools wheels
# bundle their native libraries and need only glibc, libstdc++ and zlib from the base.

# Dependencies first (their layer survives source changes). No torch, no torchvision.
COPY deploy/requirements-runtime.txt /tmp/requirements-runtime.txt
RUN pip install -r /tmp/requirements-runtime.txt \
    && rm /tmp/requirements-runtime.txt

# The project itself without its dependencies: pyproject's list includes torch.
COPY --from=builder /build/wheels/ /tmp/wheels/
RUN pip install --no-deps /tmp/wheels/cellwatch-*.whl \
    && rm -rf /tmp/wheels \
    && groupadd --system --gid 10001 cellwatch \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin cellwatch

WORKDIR /opt/cellwatch
# The ONNX model and its sidecar JSON (model.json beside model.onnx).
COPY --from=builder /build/model/ /opt/cellwatch/model/
# The camera simulator and example configuration (compose runs deploy/camera_sim.py).
COPY deploy/ /opt/cellwatch/deploy/
# A default configuration; docker-compose.yml mounts its own over it, read-only.
COPY deploy/cell.example.yaml /etc/cellwatch/cell.yaml

USER 10001:10001
EXPOSE 8080

# Liveness. The slim base has no curl; Python's urllib raises on anything but 2xx.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]

CMD ["cellwatch", "serve", "--config", "/etc/cellwatch/cell.yaml", "--host", "0.0.0.0", "--port", "8080"]
