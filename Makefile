# One word for each job. Every target sets itself up: a virtualenv in .venv with the
# project and its test/server extras, rebuilt when pyproject.toml changes.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: help setup demo test lint typecheck pytest clean

help:
	@echo "make demo   run the shipped reliances/ campaign through the embedded TLS server"
	@echo "make test   lint, type-check and run every test"
	@echo "make setup  create .venv with everything the above need"

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "asyncmailer needs Python 3.11 or newer; set PYTHON=python3.x")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

# The main job: start the local server (implicit TLS on 8465, STARTTLS on 8587, AUTH LOGIN as
# the config's sender with the password in reliances/your_pswd.txt), send the campaign, stop.
demo: $(STAMP)
	@chmod 600 reliances/your_pswd.txt
	$(BIN)/asyncmailer serve --dir .demo --user sender@example.com \
		--password-file reliances/your_pswd.txt -- \
		$(BIN)/asyncmailer --config reliances/config.json --report .demo/report.csv

test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check asyncmailer tests
	$(BIN)/ruff format --check asyncmailer tests

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache *.egg-info
