# One word for each job. Every target sets itself up: a virtualenv in .venv with the
# project and its test/server extras, rebuilt when pyproject.toml changes.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: help setup demo test lint typecheck pytest fuzz soak bench clean

help:
	@echo "make demo   run the shipped reliances/ campaign through the embedded TLS server"
	@echo "make test   lint, type-check and run every test"
	@echo "make bench  measure speed, CPU and memory against Postfix smtp-sink/smtp-source"
	@echo "            (BENCH_QUICK=1 leaves out the 1,000,000-recipient run)"
	@echo "make fuzz   the property tests of hostile input, with many more examples"
	@echo "make soak   4 workers on a shared PostgreSQL ledger, 100,000 recipients, kills and a"
	@echo "            database restart (SOAK=N recipients)"
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
# Then the list campaign (reliances/list.yaml: 1,200 addresses, groups of 100, STARTTLS).
demo: $(STAMP)
	@chmod 600 reliances/your_pswd.txt
	@rm -rf .demo
	$(BIN)/asyncmailer serve --dir .demo --user sender@example.com \
		--password-file reliances/your_pswd.txt -- sh -c '\
		$(BIN)/asyncmailer --config reliances/config.json --state-dir .demo/state \
			--report .demo/report.csv && \
		$(BIN)/asyncmailer --config reliances/list.yaml --state-dir .demo/state \
			--report .demo/list-report.csv'
	@echo "Open the messages: ls .demo/mail/*/new/ (one Maildir per recipient); reports: .demo/*.csv"

test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check asyncmailer tests bench
	$(BIN)/ruff format --check asyncmailer tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest

# Not part of `make test`: the property tests of hostile input with many more examples
# (about 40 times as many; several minutes).
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/pytest tests/test_properties.py

# Not part of `make test`: the shared ledger's "done when" (tests/pg/test_soak.py): four
# workers, 100,000 recipients, two killed, one started again, PostgreSQL restarted (about a
# minute at the soak's rate).
SOAK ?= 100000
soak: $(STAMP)
	ASYNCMAILER_SOAK=$(SOAK) $(BIN)/pytest -q -s tests/pg/test_soak.py

# Not a test: prints a table and the target ratios, writes bench/results.json, exits 0 whatever
# the numbers. Installs Postfix's smtp-sink/smtp-source (unconfigured), GNU time and stunnel4
# (for the implicit-TLS rows) if missing and root.
# `make bench BENCH_QUICK=1` leaves out the 1,000,000-recipient memory run.
bench: $(STAMP)
	$(BIN)/python bench/run.py $(if $(filter-out 0,$(BENCH_QUICK)),--quick)

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache *.egg-info
