# Two commands matter: `make run` (the bot; a console chat when no TELEGRAM_BOT_TOKEN is set)
# and `make test` (the whole suite; `make soak` adds the long reliability runs). Both create the virtualenv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test soak
run: $(BIN)/.ready
	$(BIN)/python -m bot

test: $(BIN)/.ready
	$(BIN)/python -m pytest

soak: $(BIN)/.ready
	$(BIN)/python -m pytest -m soak -s

$(BIN)/.ready: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	sh scripts/install-blas.sh
	touch $@
