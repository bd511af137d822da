# touchpoints: `make run` and `make test` work on a fresh machine (Python 3.11, JDK 17, Maven).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON     ?= python3
VENV       ?= .venv
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.installed
KAFKA_HOME ?= .local/kafka
REGISTRY_HOME ?= .local/registry
WITH_KAFKA := PYTHON=$(PY) LOCALKAFKA_HOME=$(abspath $(KAFKA_HOME)) deploy/local/with-kafka.sh
RUN_DIR    := .local/run

CUSTOMERS ?= 500
RATE      ?=
EVENTS    ?= 60000
LATENCY_RATE ?= 5000 1000
MEMORY_EVENTS ?= 500000
WORKERS   ?= 1

export PYTHONDONTWRITEBYTECODE := 1

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-z-]+:.*?## ' $(MAKEFILE_LIST) | awk -F':.*?## ' '{printf "  make %-10s %s\n", $$1, $$2}'

# Debian packages: a JDK + Maven (local Kafka broker), prometheus/promtool and kubectl (tests).
APT_NEEDS := $(if $(shell command -v java),,openjdk-17-jre-headless) $(if $(shell command -v mvn),,maven) \
             $(if $(shell command -v promtool),,prometheus) $(if $(shell command -v kubectl),,kubectl)

$(STAMP): pyproject.toml
	@if [ -n "$(strip $(APT_NEEDS))" ]; then \
	  echo "installing Debian packages: $(strip $(APT_NEEDS))"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_NEEDS)) >/dev/null; fi
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

.PHONY: install
install: $(STAMP) $(KAFKA_HOME)/libs/.complete ## create .venv, install the package, fetch the Kafka broker jars

$(KAFKA_HOME)/libs/.complete: deploy/local/kafka/pom.xml
	$(PY) deploy/local/localkafka.py install --workdir $(KAFKA_HOME)
	@touch $@

.PHONY: registry
registry: $(STAMP) ## build the Schema Registry the tests run (Apicurio, from Maven Central; cached)
	$(PY) deploy/local/localregistry.py install --workdir $(REGISTRY_HOME)

.PHONY: run
run: install ## start Kafka, WORKERS worker processes + the sink (embedded ClickHouse), generator; summary
	@rm -rf $(RUN_DIR) && mkdir -p $(RUN_DIR)
	@LOCALKAFKA_RUN_DIR=$(abspath $(RUN_DIR))/kafka \
	  CLICKHOUSE_CHDB_PATH=$${CLICKHOUSE_CHDB_PATH:-$(abspath $(RUN_DIR))/chdb} \
	  DATA_DIR=$(abspath $(RUN_DIR))/faust WEB_PORT=$${WEB_PORT:-0} \
	  AGGREGATE_LATENESS_SECONDS=$${AGGREGATE_LATENESS_SECONDS:-10800} \
	  $(WITH_KAFKA) $(VENV)/bin/touchpoints demo --customers $(CUSTOMERS) $(if $(RATE),--rate $(RATE)) \
	    --workers $(WORKERS)

.PHONY: test
test: install registry ## unit + integration tests (starts a real Kafka broker, Schema Registry, embedded ClickHouse)
	$(PY) -m pytest -q

.PHONY: unit
unit: $(STAMP) ## unit tests only (no broker)
	$(PY) -m pytest -q -m "not integration"

.PHONY: lint
lint: $(STAMP) ## ruff + mypy (strict on streams/)
	$(VENV)/bin/ruff check streams tests deploy/local
	$(VENV)/bin/ruff format --check streams tests
	$(VENV)/bin/mypy

.PHONY: check
check: lint test ## what CI runs

.PHONY: bench
bench: install ## CPU/event of 1 and 2 workers + sink vs a ceiling and the old runtime, alert latency, memory
	@rm -rf .local/bench && mkdir -p .local/bench
	@LOCALKAFKA_RUN_DIR=$(abspath .local/bench)/kafka CLICKHOUSE_CHDB_PATH=$(abspath .local/bench)/chdb \
	  DATA_DIR=$(abspath .local/bench)/faust WEB_PORT=0 \
	  $(WITH_KAFKA) $(VENV)/bin/touchpoints bench --events $(EVENTS) $(foreach r,$(LATENCY_RATE),--latency-rate $(r)) \
	    --memory-events $(MEMORY_EVENTS)

.PHONY: eval
eval: install ## labelled anomalies through the real pipeline: EVAL precision/recall per detector
	@rm -rf .local/eval && mkdir -p .local/eval
	@LOCALKAFKA_RUN_DIR=$(abspath .local/eval)/kafka CLICKHOUSE_CHDB_PATH=$(abspath .local/eval)/chdb \
	  DATA_DIR=$(abspath .local/eval)/faust WEB_PORT=0 \
	  $(WITH_KAFKA) $(VENV)/bin/touchpoints eval

.PHONY: deploy-check
deploy-check: $(STAMP) ## render every kustomize overlay, check and unit-test the Prometheus rules
	for o in deploy/k8s/overlays/*/; do kubectl kustomize $$o >/dev/null && echo "ok $$o"; done
	promtool check rules deploy/prometheus/rules.yml
	promtool test rules deploy/prometheus/rules.test.yml

.PHONY: clean
clean: ## remove local state (.local) and caches; keeps .venv and the Kafka jars
	rm -rf $(RUN_DIR) .local/bench .local/chdb .local/faust .pytest_cache .ruff_cache .mypy_cache
