# The same targets run on a laptop and in CI (.ci/run).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test test-fast lint format protos check-protos breaking release-protos check clean bench \
        deploy-check container-test audit

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/python -m compileall -q src >/dev/null
	touch $(STAMP)

install: $(STAMP)  ## create .venv with orderflow and the dev tools

run: $(STAMP)  ## one process, demo data: gateway on :8080, gRPC on :50051
	$(BIN)/orderflow run --demo

# Two pytest-xdist workers: most of the suite waits on processes, sockets and databases,
# not on the CPU. A module runs whole in one worker (its module-scoped systems start once),
# in file order, so the chaos soak and the container tests start first, side by side.
# TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2
test: $(STAMP)  ## every test: unit, integration (SQLite + PostgreSQL), end-to-end; coverage report
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder \
		--durations=25 --cov=orderflow --cov-report=term:skip-covered

test-fast: $(STAMP)  ## unit tests only
	$(BIN)/pytest -q tests/unit

# .pre-commit-config.yaml runs the same checks on each commit (`.venv/bin/pre-commit install`).
lint: $(STAMP) check-protos breaking  ## ruff, formatting, mypy (strict on src/, relaxed on tests/), buf lint and breaking
	$(BIN)/ruff check src tests scripts bench
	$(BIN)/ruff format --check src tests scripts bench
	$(BIN)/mypy
	$(BIN)/buf lint

format: $(STAMP)
	$(BIN)/ruff check --fix src tests scripts bench
	$(BIN)/ruff format src tests scripts bench

protos: $(STAMP)  ## regenerate the gRPC stubs from proto/
	$(BIN)/python scripts/gen_protos.py

check-protos: $(STAMP)  ## fail when the committed stubs are stale
	$(BIN)/python scripts/gen_protos.py --check

# proto/released.binpb is the protos as last released (an image from `buf build`, committed,
# so a clean clone checks without git history or a registry); refresh it at each release.
breaking: $(STAMP)  ## buf breaking: every package against the last released protos
	$(BIN)/buf breaking --against proto/released.binpb

release-protos: $(STAMP)  ## at a release: make the current protos the ones `breaking` keeps
	$(BIN)/buf build -o proto/released.binpb

audit: $(STAMP)  ## known vulnerabilities in the installed dependencies (pip-audit; ADR 15)
	$(BIN)/python scripts/audit.py

check: lint test

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache

bench: $(STAMP)  ## benchmark every mode against the floor; records bench/RESULTS.md
	@# Byte-compiled first, as an installed wheel is: where PYTHONDONTWRITEBYTECODE is set,
	@# an editable checkout would compile every module at every process start.
	$(BIN)/python -m compileall -q src >/dev/null
	$(BIN)/python -m bench.run --record bench/RESULTS.md --json bench/results.json

deploy-check: $(STAMP)  ## static checks of deploy/: hadolint, compose config, kubernetes-validate, policies
	$(BIN)/pytest -q tests/deploy -m "not containers"

container-test: $(STAMP)  ## build the images with podman and run the compose deployments (as root)
	$(BIN)/pytest -q tests/deploy -m containers
