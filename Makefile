# edgexfer: the commands the README gives. `make demo` and `make test` set up on their own.
PYTHON ?= python3
VENV ?= .venv
# train: torch + torchvision (finetune, export); without it the venv is the torch-free device runtime;
# timm: the timm model source (--model timm/<name>), which the zoo and its tests use
EXTRAS ?= train,dev,openvino,timm,video
PY := $(VENV)/bin/python
STAMP := $(VENV)/.edgexfer-installed

.PHONY: setup test test-fast demo bench zoo lint clean gpu-check

setup: $(STAMP)

# A venv with the project installed editable. On a Jetson, TensorRT lives in the system Python and
# torch is not needed to build, verify and bench (add train only with NVIDIA's JetPack torch wheel):
#   make setup VENV_FLAGS=--system-site-packages EXTRAS=dev
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install -e ".[$(EXTRAS)]"
	touch $(STAMP)

# One pytest process per integration test file, then one for the GPU tests and one for the unit tests.
# A single process for all integration tests died with SIGSEGV late in the run, twice, with no Python
# traceback (native code: OpenVINO, ONNX Runtime, OpenCV and torch live in one process there); the files
# around the crash passed in a process of their own. Per-file processes also keep each file's temporary
# folders bounded. All files run even when one fails; the target fails if any did.
test: setup
	@status=0; for f in tests/integration/test_*.py tests/gpu tests/unit; do \
	  echo "== $$f"; $(PY) -m pytest -q -rs -p no:cacheprovider "$$f" || status=1; \
	done; exit $$status

test-fast: setup
	$(PY) -m pytest -q -rs -m "not slow"

demo: setup
	$(VENV)/bin/edgexfer demo --out runs/demo

bench: setup
	$(VENV)/bin/edgexfer bench

# The model matrix: every supported family through finetune, export, INT8, builds and verify; writes
# docs/models.md (+ .json). About an hour on a 2-core CPU.
zoo: setup
	nice -n 10 $(PY) benchmarks/zoo.py --out docs/models.md

# Run first on any machine with an NVIDIA GPU: sets up its own venv (edgexfer[tensorrt] + Polygraphy), builds,
# verifies and times TensorRT engines, writes benchmarks/results/<gpu>.md/.json. Without a GPU: one line, exit 0.
gpu-check:
	$(PYTHON) scripts/gpu_check.py --venv $(VENV)

lint: setup
	$(VENV)/bin/ruff check edgexfer tests benchmarks scripts

clean:
	rm -rf $(VENV) runs .pytest_cache
