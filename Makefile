# Two commands for a new user (Python >= 3.10 with pip and venv):
#   make demo   installs everything into .venv, compiles a zoo network, checks it, runs it
#   make test   runs the test suite
PYTHON ?= python3
MODEL ?= resnet18
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint install clean

$(BIN)/cnnc: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(BIN)/cnnc

install: $(BIN)/cnnc

demo: install
	$(BIN)/cnnc demo $(MODEL)

test: install
	$(BIN)/python -m pytest -n 2 --durations=30 tests

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info
