# Targets for people and CI alike; `make help` lists them.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: bench-audit bench-console help run test test-external lint bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 16

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP) ## install into .venv, seed the demo and serve on 127.0.0.1:8080
	$(BIN)/gateway demo > /dev/null
	$(BIN)/gateway serve

test: $(STAMP) ## run the whole suite (embedded PostgreSQL, or GATEWAY_TEST_DATABASE_URL)
	$(BIN)/pytest -q

lint: $(STAMP) ## ruff and mypy
	$(BIN)/pip install --quiet ruff mypy
	$(BIN)/ruff check gateway keys tests loadtests
	$(BIN)/mypy keys

bench: $(STAMP) ## the benchmarks under loadtests/ (prints figures): hot path vs bare Starlette, then publish
	$(BIN)/python -m loadtests.bench
	$(BIN)/python -m loadtests.bench_publish

bench-audit: $(STAMP) ## the audit benchmarks (prints figures): writer and verify, then the p99 added at half load
	$(BIN)/python -m loadtests.bench_audit
	$(BIN)/python -m loadtests.bench_audit_latency

bench-console: $(STAMP) ## every console page's p95 with 1,000 members, 10,000 keys, 1,000,000 audit events
	$(BIN)/python -m loadtests.bench_console

clean: ## remove the venv and the local gateway home
	rm -rf $(VENV) .gateway
