# fanout: one place for every command a developer or CI runs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help venv demo up down test lint format clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): requirements.txt requirements-dev.txt constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements-dev.txt -c constraints.txt
	touch $(STAMP)

venv: $(STAMP)  ## create the virtualenv with pinned dependencies

test: venv lint  ## run every test (unit, DAG integrity, end-to-end)
	$(PY) -m pytest

lint: venv  ## ruff (including Airflow's AIR rules)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:  ## remove local Airflow state and artifacts (keeps the virtualenv)
	rm -rf .airflow artifacts
