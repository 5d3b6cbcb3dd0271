PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: install
	$(BIN)/alexfeat demo

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python bench/featurize.py

clean:
	rm -rf $(VENV) data/demo .pytest_cache
