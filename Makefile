# The README's two commands: `make demo` (main job: greedy vs GGRO on the embedded defaults) and `make test`.
# Both create .venv on first use. torch is pinned first so pip never resolves a multi-GB CUDA build here.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_PIN ?= torch==2.13.0

.PHONY: demo test lint bench reference-check compare train-reward install

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_PIN)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/ggro demo --max-new-tokens 64

test: install
	$(PY) -m pytest -q
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/mypy

bench: install
	$(VENV)/bin/ggro bench --out docs/benchmarks.md

reference-check: install
	$(VENV)/bin/ggro reference-check ../shared/fixtures/reference

compare: install
	$(VENV)/bin/ggro compare --harmful 40 --benign 40 --max-new-tokens 32 --batch-size 8 --out docs/rewards.md \
		--jsonl docs/results/rewards.jsonl

train-reward: install
	$(VENV)/bin/python -m ggro.rewards.train_head
