"""A deployment's task sizes (FANOUT_TASK_SIZES) reach the executor; a size that no node of its pool
could hold fails its task at once, saying why, without spending a retry or creating a pod.

The scheduler is restarted with the ``shard`` size made larger than every CPU node (twice the
largest node's memory), the probe DAG fanout_probe_size's one shard-sized task is triggered, then
the scheduler is restarted with the defaults again and the same task runs.
"""

from __future__ import annotations

import json
import time
from datetime import datetime

from kubernetes.utils import parse_quantity

from tests.cluster.dags.fanout_probe import SIZE_DAG_ID
from tests.cluster.stack import TEST_SETTINGS, ClusterPipeline


def ts(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def oversized_shard(cp: ClusterPipeline) -> tuple[str, list[str]]:
    """A shard memory no CPU node has, and the CPU nodes."""
    cpu_nodes = [n for n in cp.pods.nodes() if cp.pool_of_node(n["metadata"]["name"]) == "cpu"]
    largest = max(parse_quantity(n["status"]["allocatable"]["memory"]) for n in cpu_nodes)
    return f"{int(2 * largest) >> 30}Gi", [n["metadata"]["name"] for n in cpu_nodes]


def test_a_size_no_node_of_its_pool_can_hold_fails_at_once_without_a_retry(cp):
    client = cp.client
    memory, cpu_nodes = oversized_shard(cp)
    deployed = json.loads(cp.stack.env().get("FANOUT_TASK_SIZES") or "{}")  # a real cluster's, if any
    sizes = {**deployed, "shard": {**deployed.get("shard", {}), "memory": memory}}
    client.unpause(SIZE_DAG_ID)
    cp.restart_scheduler({"FANOUT_TASK_SIZES": json.dumps(sizes)})
    try:
        began = time.time()
        run_id = client.trigger(SIZE_DAG_ID)
        run = client.wait_run(SIZE_DAG_ID, run_id, timeout=120)
        (ti,) = client.task_instances(SIZE_DAG_ID, run_id)
    finally:
        cp.restart_scheduler()

    assert run["state"] == "failed"
    assert (ti["state"], ti["try_number"], ti["max_tries"]) == ("failed", 1, 0), "no retry was spent"
    note = ti["note"] or ""
    assert note.startswith("Try 1: task size 'shard' asks for cpu ") and f", memory {memory}, " in note
    assert "more than any node of the cpu pool" in note and "FANOUT_TASK_SIZES" in note
    assert all(f"{node} offers cpu" in note for node in cpu_nodes[:5])
    audit = client.get("/eventLogs", dag_id=SIZE_DAG_ID, run_id=run_id, limit=100)["event_logs"]
    assert [e["extra"] for e in audit if e["event"] == "worker pod not created"] == [
        note.removeprefix("Try 1: ")
    ]
    assert cp.pods_of(SIZE_DAG_ID, run_id) == [], "no pod was created"
    queued_timeout = float(TEST_SETTINGS["AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT"])
    assert ts(ti["end_date"]) - began < queued_timeout, "failed before task_queued_timeout"

    # With the deployment's sizes back, the same task gets a pod and runs.
    run_id = client.trigger(SIZE_DAG_ID)
    assert client.wait_run(SIZE_DAG_ID, run_id, timeout=120)["state"] == "success"
    assert [r.labels["fanout.io/size"] for r in cp.pods_of(SIZE_DAG_ID, run_id)] == ["shard"]
