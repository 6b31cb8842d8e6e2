# fanout: one place for every command a developer or CI runs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help venv postgres demo cluster-demo up test test-quick test-images images lock lint format clean helm helm-lint bench bench-quick

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): requirements.txt requirements-dev.txt constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements-dev.txt -c constraints.txt
	touch $(STAMP)

venv: $(STAMP)  ## create the virtualenv with pinned dependencies

postgres: venv  ## install the PostgreSQL server of the local stack if missing (apt-get as root; FANOUT_LOCAL_DATABASE=sqlite skips)
	@PYTHONPATH=plugins $(PY) -m fanout.localdb install

demo: venv postgres  ## run the whole pipeline through a local Airflow (LocalExecutor) and print a summary
	PYTHONPATH=plugins $(PY) -m fanout.demo run

cluster-demo: venv postgres  ## run the pipeline with the KubernetesExecutor on the local cluster harness; show which pod ran where
	PYTHONPATH=plugins:. $(PY) -m tests.cluster.demo

up: venv postgres  ## keep a local Airflow running (components restarted if they die), web UI on http://127.0.0.1:8080; Ctrl-C stops it
	PYTHONPATH=plugins $(PY) -m fanout.demo up

test: venv lint postgres  ## run every test: lint, unit, DAG integrity, end-to-end, S3, cluster harness, report, images and compose (Docker)
	$(PY) -m pytest

test-quick: venv lint postgres  ## every test but the Docker ones (no image builds, no compose stack)
	$(PY) -m pytest -m "not docker"

# The official base by default; AIRFLOW_BASE=standin builds a local stand-in of it first
# (images/airflow-base: for machines that cannot pull it).
AIRFLOW_BASE ?= apache/airflow:3.3.2-python3.11
IMAGES ?= airflow gpu-worker

images:  ## build fanout-airflow and fanout-gpu-worker (several GB) with a local Docker engine
	images/build.sh --base $(AIRFLOW_BASE) $(IMAGES)

test-images: venv  ## only the Docker tests: build and test the airflow image, then the compose stack end to end (base: FANOUT_AIRFLOW_BASE, else a local stand-in)
	$(PY) -m pytest -m docker

lock: venv  ## re-resolve constraints.txt after changing a requirements file (images/lock.sh)
	images/lock.sh

bench: venv postgres  ## run every benchmark (~10 min on 2 cores): bench/results/<date>.json, table, bench/README.md
	PYTHONPATH=plugins $(PY) -m bench

bench-quick: venv postgres  ## every benchmark at tiny sizes (< 2 min; make test runs it too)
	PYTHONPATH=plugins $(PY) -m bench --quick

lint: venv  ## ruff (including Airflow's AIR rules)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

helm: venv  ## install the pinned helm binary into .tools/bin (helm/get-helm.sh)
	@helm/get-helm.sh

helm-lint: venv  ## lint and render helm/fanout (helm lint --strict) and the other packaging checks
	$(PY) -m pytest tests/packaging -q

clean:  ## remove local Airflow state (its PostgreSQL cluster too) and artifacts (keeps the virtualenv)
	@if [ -L .airflow/postgres ]; then rm -rf "$$(readlink .airflow/postgres)"; fi
	rm -rf .airflow artifacts
