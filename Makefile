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

# Two processes (integration, then unit): one process once died with SIGSEGV late in the run, on a machine
# whose disk the tests' temporary folders had filled (a full run keeps ~20 GB under /tmp/pytest-of-$USER)
test: setup
	$(PY) -m pytest -q -rs tests/integration tests/gpu
	$(PY) -m pytest -q -rs tests/unit

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
