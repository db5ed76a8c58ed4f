# Two commands for a new user (Python >= 3.10 with pip and venv):
#   make demo   installs everything into .venv, compiles a zoo network, checks it, runs it
#   make test   runs the test suite
PYTHON ?= python3
MODEL ?= resnet18
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint install graphviz bench-deps bench bench-gpu clean

$(BIN)/cnnc: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(BIN)/cnnc

install: $(BIN)/cnnc

# `cnnc show` renders pictures with Graphviz's `dot`, which is not a Python package: install the
# Debian package where this user may (root or password-less sudo); otherwise say how, and go on
# (without it `cnnc show` writes the DOT text and prints the command that renders it).
graphviz:
	@command -v dot >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then SUDO=; \
	  elif command -v apt-get >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO=sudo; \
	  else echo "note: Graphviz is not installed (apt install graphviz); cnnc show will write DOT"; exit 0; fi; \
	  echo "installing Graphviz (apt-get install graphviz) for cnnc show"; \
	  { timeout 300 $$SUDO apt-get install -y -qq graphviz >/dev/null 2>&1 || \
	    { timeout 300 $$SUDO apt-get update -qq >/dev/null 2>&1 && timeout 300 $$SUDO apt-get install -y -qq graphviz >/dev/null 2>&1; }; } || \
	  echo "note: could not install Graphviz; cnnc show will write DOT"; }

demo: install graphviz
	$(BIN)/cnnc demo $(MODEL)

test: install graphviz
	$(BIN)/python -m pytest -n 2 --dist worksteal --durations=30 tests

# The peers of bench/ (each runs in its own process on the same ONNX weights): PyTorch's CPU
# build and ONNX Runtime (test dependencies, pinned in pyproject.toml), OpenVINO.
bench-deps: install
	$(BIN)/pip install --quiet openvino matplotlib

bench: bench-deps
	$(BIN)/python bench/bench_networks.py --models resnet18 googlenet mobilenet_v2 --batches 1 \
	  --engines cnnc cnnc-O0 torch onnxruntime openvino

# On a machine with an NVIDIA GPU: CuPy (the `gpu` extra), then cnnc's CUDA target against
# PyTorch's CUDA build (bench/bench_gpu.py; a PyTorch without CUDA is compared on the CPU).
bench-gpu: install
	$(BIN)/pip install --quiet -e '.[gpu]'
	$(BIN)/python bench/bench_gpu.py --models resnet50 resnet18 --batches 1 32

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info
