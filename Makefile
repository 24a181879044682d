# lockgate: everything a fresh machine needs comes from this file and pyproject.toml.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.lockgate-installed
PYTEST_ARGS ?=

.PHONY: install demo test test-slow test-all lint lock conformance policy-test bench bench-cli bench-background mutation up down status worker clean

# Every dependency from requirements-ci.lock, hash-checked; then lockgate itself (editable). The
# second step installs nothing else unless pyproject.toml gained a dependency the lock lacks
# (tests/test_image.py then says to run `make lock`).
$(STAMP): pyproject.toml requirements-ci.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements-ci.lock
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/lockgate demo

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The slow, production-shaped scenarios only (tests/test_production.py: OpenBao raft+TLS, setup,
# restart, backup and restore; about 2.5 minutes here). CI runs them after `make test`.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q --run-slow -m slow $(PYTEST_ARGS)

test-all: $(STAMP)
	$(BIN)/python -m pytest -q --run-slow $(PYTEST_ARGS)

# Lint, format and types: what CI checks before the tests (a finding is fixed, not silenced).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pyright

# lockgate's policy pipeline against Cedar's integration corpus (../shared/data/cedar-integration-tests).
# python -m conformance exits 0 (none), 1 (a difference lockgate causes), 2 (corpus missing); make
# reports either failure as its own exit status 2.
conformance: $(STAMP)
	$(BIN)/python -m conformance

# The shipped policies against the test cases kept beside them (policies/*.tests.yaml).
policy-test: $(STAMP)
	$(BIN)/lockgate policy check policies
	$(BIN)/lockgate policy test policies

# The hash-pinned locks: requirements.lock (the image: runtime and the wheel's build tools) and
# requirements-ci.lock (CI and developers: the test extra). Regenerate after changing dependencies.
LOCK_ARGS := --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28 --quiet
lock:  # needs uv: `make install` first
	$(BIN)/uv pip compile pyproject.toml deploy/image-build.in $(LOCK_ARGS) -o requirements.lock
	$(BIN)/uv pip compile pyproject.toml --extra test $(LOCK_ARGS) -o requirements-ci.lock

bench: $(STAMP)
	$(BIN)/python -m bench.run

# Operator commands with both drop-in example apps declared vs none (bench/results.json "cli").
bench-cli: $(STAMP)
	$(BIN)/python -m bench.cli_timing

# One background cycle against 1,000,000 ledger entries and 10,000 open runs; one worker vs two
# (bench/results.json "background").
bench-background: $(STAMP)
	$(BIN)/python -m bench.background

# Mutation testing of the code that decides and enforces (mutation/targets.toml): score per module,
# survivors and equivalents (mutation/equivalents.toml); results in bench/mutation.json. Not in `test`.
mutation: $(STAMP)
	$(BIN)/python -m mutation $(MUTATION_ARGS)

up: $(STAMP)
	$(BIN)/lockgate dev up

down: $(STAMP)
	$(BIN)/lockgate dev down

status: $(STAMP)
	$(BIN)/lockgate dev status

worker: $(STAMP)
	$(BIN)/lockgate worker

clean:
	-$(BIN)/lockgate dev down
	rm -rf $(VENV) .lockgate *.egg-info
