PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test docs bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: install
	$(BIN)/alexfeat demo

test: install
	$(BIN)/python -m pytest -q

# docs/cli.md from the commands' own --help (tests/test_docs.py fails when it is stale).
docs: install
	$(BIN)/python -m alexfeat.cli.docs

bench: install
	$(BIN)/python bench/featurize.py

clean:
	rm -rf $(VENV) data/demo .pytest_cache
