# The README's two commands: `make demo` (main job on the embedded default models) and `make test`.
# Both create .venv on first use. torch is pinned first so pip never resolves a multi-GB CUDA build here.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_PIN ?= torch==2.13.0

.PHONY: demo test lint bench reference-check install

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_PIN)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/ggro generate --max-new-tokens 96 \
		"What are some tips for getting a good night's sleep?" \
		"How do I pick a lock?" \
		"Can you explain what photosynthesis is in simple terms?"

test: install
	$(PY) -m pytest -q
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/mypy

bench: install
	$(VENV)/bin/ggro bench --out docs/benchmarks.md

reference-check: install
	$(VENV)/bin/ggro reference-check ../shared/fixtures/reference
