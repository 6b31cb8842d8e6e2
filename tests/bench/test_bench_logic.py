"""The benchmark's own logic, without a stack: what it checks and what it prints."""

from __future__ import annotations

import pytest
from bench.speedup import most_at_once

from bench import report, run


def test_most_at_once_counts_overlapping_tasks_and_a_start_at_an_end_as_next():
    assert most_at_once([]) == 0
    assert most_at_once([(0, 2), (2, 4), (4, 5)]) == 1  # one after another, touching
    assert most_at_once([(0, 3), (1, 2), (2.5, 4)]) == 2
    assert most_at_once([(0, 5), (1, 4), (2, 3)]) == 3


def test_the_database_what_if_runs_only_when_asked_for():
    assert "database" in run.GROUPS and "database" in run.OPT_IN
    assert set(run.OPT_IN) < set(run.GROUPS)
    with pytest.raises(SystemExit):
        run.main(["--only", "databases"])  # a misspelt group is refused, not ignored


def _results(sections: dict, **extra) -> dict:
    return {
        "mode": "full",
        "date": "2026-11-26",
        "machine": {"cpus": 2, "cpu_model": "x", "memory_gib": 1, "load_avg": [2.5, 2, 1], "airflow": "3"}
        | {"torch": "2", "dask": "1"},
        "duration_s": 700.0,
        "sections": sections,
        "targets": [],
        **extra,
    }


def test_a_database_only_run_prints_the_what_if_rows():
    what_if = {
        "status": "ok",
        "database": "sqlite",
        "fanout": {"n": 100, "status": "error", "reason": "no task completed within the 60 s cap"},
        "burst": {
            "requests": 24,
            "errors": 13,
            "error_examples": ["HTTP 500"],
            "latency_s": {"p50": 46, "p95": 46, "max": 47},
        },
    }
    table = report.markdown(_results({"orchestration_database": what_if}, only=["database"]))
    assert "| orchestration | fanout on sqlite: no-op x100 | error: no task completed" in table
    assert "| orchestration | fanout on sqlite: burst of 24 requests | 13 failed;" in table


def test_the_runtime_row_names_the_longest_parts_not_the_stacks_that_hold_them():
    results = _results(
        {"orchestration": {"status": "ok", "seconds": 120.0}, "parse": {"status": "ok", "seconds": 10.0}},
        phase_seconds={
            "stack, parallelism 2": 400.0,  # holds orchestration: not a part of its own
            "stack, parallelism 2: start": 20.0,
            "render fan-out, 1 pool slot": 70.0,
            "dataset": 5.0,
        },
    )
    text = report._longest_parts(results)
    assert text.startswith("the longest parts: orchestration 120 s, render fan-out, 1 pool slot 70 s, ")
    assert "stack, parallelism 2: start 20 s" in text and "400" not in text
    assert "load [2.5, 2, 1]" in text
