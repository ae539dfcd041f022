# Two commands do all set-up on a fresh machine:
#   make run    create .venv, install TTH, start the server (PROFILE=..., LISTEN=... to choose)
#   make test   install dev dependencies, buf and redis-server, lint the protos, check generated code, lint, type-check and check the import contracts, run the tests
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PROFILE ?=
LISTEN ?=

.PHONY: run test lint proto breaking bench bench-smoke redis services clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@ $(VENV)/.installed

# The otel extra, apart from the venv: one test runs a server with it (tests/test_metrics.py), while
# everything else, benchmarks included, runs as a default install does, with tracing absent.
$(VENV)/otel/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --target $(VENV)/otel "opentelemetry-api" "opentelemetry-sdk"
	touch $@

node_modules/.installed: package.json package-lock.json
	npm install --no-audit --no-fund --loglevel=error
	touch $@

run: $(VENV)/.installed
	$(BIN)/tth-server $(if $(PROFILE),--profile $(PROFILE)) $(if $(LISTEN),--listen $(LISTEN))

# The replica tests start their own redis-server (tests/test_replicas.py); this installs it when missing.
redis:
	scripts/redis.sh install

test: $(VENV)/.installed-dev $(VENV)/otel/.installed node_modules/.installed redis
	npx --no-install buf lint
	$(BIN)/python scripts/gen_protos.py --check
	$(BIN)/ruff check .
	$(BIN)/mypy tth_server adapters tth_client
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy tth_server adapters tth_client
	$(BIN)/lint-imports

proto: $(VENV)/.installed-dev
	$(BIN)/python scripts/gen_protos.py

# Compare the protos with the last commit (FILE rules); AGAINST=.git#branch=main to choose.
breaking: node_modules/.installed
	npx --no-install buf breaking --against '$(or $(AGAINST),.git#ref=HEAD~1)'

bench: $(VENV)/.installed-dev
	$(BIN)/python -m bench

# Every benchmark and component at its smallest: checks that they run from what the project installs.
bench-smoke: $(VENV)/.installed-dev
	$(BIN)/python -m bench --smoke

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
