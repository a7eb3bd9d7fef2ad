# Two commands: `make run` starts the broker on the embedded default,
# `make test` runs the whole test suite. Both set up .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint setup

$(STAMP): pyproject.toml setup.py src/shoal/protocol/_recordcheck.c
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/shoal serve --listen 127.0.0.1:9092 --data-dir ./shoal-data

# Two workers, each taking whole test files (module fixtures stay per worker).
# The end-to-end storage tests run a second time against an S3 endpoint (moto).
S3_SUITE := tests/test_confluent.py tests/test_restart.py tests/test_idempotence.py \
	tests/test_retention.py tests/test_reliability.py

test: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/pytest -q -n 2 --dist loadfile
	SHOAL_TEST_STORE=s3 $(BIN)/pytest -q -n 2 --dist loadfile $(S3_SUITE)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
