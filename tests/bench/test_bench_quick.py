"""``make bench-quick`` once, so the benchmarks never rot: it completes and writes a well-formed result.

No timing is asserted: the numbers of a quick run on a shared CI machine mean nothing.
The run is the session fixture ``quick_run`` (conftest.py), shared with the other modules here.
"""

from __future__ import annotations

import pytest

SECTIONS = (
    "parse",
    "task_start",
    "kernels",
    "dask",
    "speedup",
    "orchestration",
    "orchestration_anchor",
    "memory",
    "kubernetes",
)
TARGET_IDS = {
    "render_speedup",
    "render_efficiency",
    "render_vs_pool",
    "preprocess_vs_pandas",
    "preprocess_efficiency",
    "preprocess_vs_pool",
    "noop_queued_to_success_p50",
    "noop_1000_wall",
    "burst_errors",
    "dask_vs_pandas",
    "dask_returned_bytes",
    "peak_memory",
    "bench_runtime",
}

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(660)]  # starts real Airflow stacks


def test_every_section_ran_or_says_why_not(quick_run):
    result, _ = quick_run
    assert result["mode"] == "quick"
    assert result["machine"]["cpus"] >= 1
    for name in SECTIONS:
        section = result["sections"][name]
        assert section["status"] in ("ok", "skipped"), (name, section.get("reason"), section.get("traceback"))
        if section["status"] == "skipped":
            assert section["reason"], name


def test_the_kubernetes_benchmark_runs_on_the_harness_in_this_repo(quick_run):
    """Only hardware may be missing (CUDA); the cluster harness ships here, so it must run."""
    result, _ = quick_run
    section = result["sections"]["kubernetes"]
    assert section["status"] == "ok", (section.get("reason"), section.get("traceback"))


def test_every_target_is_reported_with_value_and_verdict(quick_run):
    result, _ = quick_run
    by_id = {row["id"]: row for row in result["targets"]}
    assert by_id.keys() >= TARGET_IDS
    assert any(key.startswith("parse_") for key in by_id)
    assert any(key.startswith("task_start_") for key in by_id)
    for row in result["targets"]:
        assert {"figure", "value", "unit", "target", "met"} <= row.keys(), row
        assert row["met"] in (True, False, None), row


def test_the_anchor_is_plain_airflow_beside_every_orchestration_figure(quick_run):
    result, stdout = quick_run
    shipped, anchor = result["sections"]["orchestration"], result["sections"]["orchestration_anchor"]
    assert shipped["stack"] == "fanout" and anchor["stack"] == "plain Airflow (anchor)"
    assert [f["n"] for f in anchor["fanouts"]] == [f["n"] for f in shipped["fanouts"]]
    assert "plain Airflow: no-op x" in stdout


def test_a_fan_out_stopped_at_its_cap_reports_what_it_reached_not_a_projection(quick_run):
    """Quick mode gives one fan-out (40 no-ops) 2 s: too little to finish on any machine."""
    result, _ = quick_run
    probe = result["sections"]["orchestration"]["capped_probe"]
    assert not probe["completed"]
    assert probe["wall_s"] is None and probe["wall_per_1000_tasks_s"] is None
    reached = probe["reached"]
    assert reached["expanded"] in (0, 40) and reached["done"] == probe["tasks_done"] < 40
    assert reached["done"] <= reached["started"] <= reached["queued"] <= reached["expanded"]
    if probe["tasks_done"] == 0:
        assert probe["status"] == "error" and "reached" in probe["reason"]


def test_the_table_is_printed(quick_run):
    _, stdout = quick_run
    assert "| Benchmark | Figure | Measured | Target | Status |" in stdout
    assert "| Benchmark | Figure | Value |" in stdout


def test_the_sequential_render_ran_one_chunk_at_a_time_on_the_parallel_runs_stack(quick_run):
    result, _ = quick_run
    render = result["sections"]["speedup"]["render"]
    sequential, parallel = render["sequential"], render["parallel"]
    assert sequential["parallelism"] == 1 and sequential["most_at_once"] == 1
    assert sequential["stack_parallelism"] == parallel["parallelism"] == result["machine"]["cpus"]
    assert sequential["pools"] == parallel["pools"] and len(sequential["pools"]) == 1
    assert sequential["tasks"] == parallel["tasks"] == result["sizes"]["render_chunks"]


def test_a_run_without_only_leaves_the_database_what_if_out_and_says_where_its_time_went(quick_run):
    result, _ = quick_run
    assert "orchestration_database" not in result["sections"]
    phases = result["phase_seconds"]
    for label in (f"stack, parallelism {result['machine']['cpus']}", "plain Airflow"):
        assert phases[f"{label}: start"] > 0 and phases[f"{label}: stop"] >= 0, phases
    assert "render fan-out, 1 pool slot" in phases
    assert set(result["sections"]["orchestration"]["phase_seconds"]) >= {"single task", "burst"}
