# The README's two commands: `make demo` (main job: the flagship cookbook, a LangChain RAG chain answered greedily
# and with GGRO on the embedded default models) and `make test`.
# Both create .venv on first use. torch is pinned first so pip never resolves a multi-GB CUDA build here.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_PIN ?= torch==2.13.0

.PHONY: demo test lint bench reference-check compare train-reward install

INTEGRATIONS := integrations/langchain-ggro integrations/llama-index-llms-ggro

$(VENV)/.installed: pyproject.toml $(addsuffix /pyproject.toml,$(INTEGRATIONS)) cookbooks/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_PIN)"
	$(PY) -m pip install --quiet -e ".[dev,eval,ray]" $(foreach pkg,$(INTEGRATIONS),-e "$(pkg)[test]") -r cookbooks/requirements.txt
	touch $@

install: $(VENV)/.installed

# Output: cookbooks/output/langchain_rag.{json,md} and the entropy plot cookbooks/output/langchain_rag_entropy.png.
demo: install
	$(PY) cookbooks/langchain_rag/rag_chain.py

# The core suite, then each integration package's own suite (run from its folder: its own conftest and config).
test: install
	$(PY) -m pytest -q
	set -e; for pkg in $(INTEGRATIONS); do (cd $$pkg && $(CURDIR)/$(PY) -m pytest -q); done
	cd cookbooks && $(CURDIR)/$(PY) -m pytest -q tests
	$(VENV)/bin/ruff check src tests scripts $(INTEGRATIONS) cookbooks
	$(VENV)/bin/mypy
	set -e; for pkg in $(INTEGRATIONS); do (cd $$pkg && $(CURDIR)/$(VENV)/bin/mypy); done

bench: install
	$(VENV)/bin/ggro bench --out docs/benchmarks.md

reference-check: install
	$(VENV)/bin/ggro reference-check ../shared/fixtures/reference

compare: install
	$(VENV)/bin/ggro compare --harmful 40 --benign 40 --max-new-tokens 32 --batch-size 8 --out docs/rewards.md \
		--jsonl docs/results/rewards.jsonl

train-reward: install
	$(VENV)/bin/python -m ggro.lab.train_head
