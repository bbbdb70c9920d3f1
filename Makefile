# Two commands set everything up on a fresh machine:
#   make demo   creates .venv, installs, trains every rule on Fashion-MNIST and prints the comparison
#   make test   creates .venv if needed, installs with the test extras, runs make lint, then the whole
#               suite: the main suite in .venv (with a coverage report), then the tests marked xla in the
#               xla environment (.ci/xla-env builds it, or reuses it from ~/.cache/neural-alignment) on
#               torch-xla's CPU device
#   make style  ruff check and ruff format --check (configured in pyproject.toml)
#   make lint   make style, then mypy (configured in pyproject.toml)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist
RULES ?= bp,fa,wm,ia,sa,aa,kp

.PHONY: demo style lint test test-main test-xla xla-env data install clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Debian's dataset-fashion-mnist; without it (no root, no apt) the demo falls back to digits.
data:
	@if [ ! -d $(FMNIST) ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	fi

demo: $(STAMP) data
	$(VENV)/bin/nalign compare fmnist-convnet --rules $(RULES) --out runs/demo

style: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

lint: style
	$(VENV)/bin/mypy

# lint first: make runs the prerequisites in order and stops at the first that fails
test: lint test-main test-xla

# coverage of the package by the main suite, printed per file (no minimum)
test-main: $(STAMP) data
	$(PY) -m pytest -v --cov=neural_alignment --cov-report=term

# Fails (never skips) when the xla environment cannot be built; pytest exits 5 if no test is marked xla.
test-xla: $(STAMP)
	@python=$$(.ci/xla-env) && echo "xla tests in $$python" && PJRT_DEVICE=CPU $$python -m pytest -v -m xla

xla-env:
	.ci/xla-env

clean:
	rm -rf $(VENV) .venv-xla runs build *.egg-info
