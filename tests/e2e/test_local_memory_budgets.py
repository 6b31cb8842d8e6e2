"""The OOM rule on the embedded default: fanout.local_executor.FanoutLocalExecutor gives each sized
task its size's memory as a budget, stops a task that passes it and retries it with more.

Its own small stack (the probe DAGs only), through the real scheduler: the probe ``needs_more_memory``
(tests/cluster/dags) needs 1.25x its size's memory on every try, so only a retry with a larger budget
succeeds; with Airflow's LocalExecutor it would simply succeed on its first try, taking whatever
memory it wants.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fanout.localstack import AirflowStack
from tests.cluster.dags.fanout_probe import MEMORY_DAG_ID

PROBE_DAGS = Path(__file__).resolve().parents[1] / "cluster" / "dags"
EXECUTOR = "fanout.local_executor.FanoutLocalExecutor"


@pytest.fixture(scope="module")
def budgeted(tmp_path_factory):
    dags = tmp_path_factory.mktemp("probe-dags")
    (dags / "fanout_probe.py").symlink_to(PROBE_DAGS / "fanout_probe.py")
    stack = AirflowStack(
        home=tmp_path_factory.mktemp("airflow-home"),
        dags_folder=dags,
        parallelism=2,
        extra_env={
            "AIRFLOW__CORE__EXECUTOR": EXECUTOR,
            "FANOUT_ARTIFACT_ROOT": str(tmp_path_factory.mktemp("artifacts")),
            "FANOUT_RETRY_DELAY_SECONDS": "1",
        },
    )
    client = stack.start()
    try:
        client.wait_for_dags([MEMORY_DAG_ID])
        client.unpause(MEMORY_DAG_ID)
        run_id = client.trigger(MEMORY_DAG_ID)
        run = client.wait_run(MEMORY_DAG_ID, run_id, timeout=180)
        (ti,) = client.task_instances(MEMORY_DAG_ID, run_id)
        audit = client.get("/eventLogs", dag_id=MEMORY_DAG_ID, run_id=run_id, limit=100)["event_logs"]
        yield run, ti, audit
    finally:
        stack.stop()


def test_a_task_past_its_memory_budget_is_stopped_and_retried_with_a_larger_one(budgeted):
    run, ti, audit = budgeted
    assert run["state"] == "success"
    assert (ti["state"], ti["try_number"]) == ("success", 2)
    note = ti["note"] or ""
    (try1,) = [line for line in note.splitlines() if line.startswith("Try 1: ")]
    assert try1.startswith("Try 1: OOMKilled: the task's processes held ")
    assert ", past its memory budget 768Mi (its 'bookkeeping' size's memory), so fanout stopped" in try1
    assert try1.endswith("A retry gets x1.5 the memory (at most 2304Mi).")
    assert "Try 2: retry with 1152Mi of memory budget after OOMKilled at 768Mi in try 1" in note
    events = {
        e["event"]: e for e in audit if e["event"] in ("memory budget exceeded", "retry budget changed")
    }
    assert (events["memory budget exceeded"]["try_number"], events["retry budget changed"]["try_number"]) == (
        1,
        2,
    )
