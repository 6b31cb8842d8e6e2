"""The fanout report of runs on Kubernetes: each task instance's node pool, the pod start overhead,
and for a try whose task process the OOM killer ended (the probe DAG's ``hog_memory``, on any
cluster) the pod, node and reason, all as the report's JSON shows them to a user."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from tests.cluster.dags.fanout_probe import KILLS_DAG_ID
from tests.cluster.stack import ClusterPipeline
from tests.report.reportkit import fetch, report_path

RUN_TIMEOUT_S = 150


def report_data(cp: ClusterPipeline, dag_id: str, run_id: str) -> dict:
    status, _, body = fetch(
        cp.stack.base_url, report_path(dag_id, run_id, "data.json"), token=cp.client.token()
    )
    assert status == 200, body[:300]
    return json.loads(body)


@pytest.fixture(scope="module")
def oom_killed(cp: ClusterPipeline) -> tuple[str, dict]:
    """A run of the probe DAG: ``hog_memory`` is OOM-killed on try 1, succeeds on try 2."""
    cp.client.unpause(KILLS_DAG_ID)
    run_id = cp.client.trigger(KILLS_DAG_ID)
    assert cp.client.wait_run(KILLS_DAG_ID, run_id, timeout=RUN_TIMEOUT_S)["state"] == "success"
    return run_id, report_data(cp, KILLS_DAG_ID, run_id)


def test_every_task_instance_shows_the_node_pool_its_pods_ran_on(cp, pipeline):
    for dag_id, run_id in pipeline.run_ids.items():
        data = report_data(cp, dag_id, run_id)
        pools = {
            (r.annotations["task_id"], int(r.annotations.get("map_index", -1))): r.labels["fanout.io/pool"]
            for r in cp.pods_of(dag_id, run_id)
        }
        shown = {(ti["task_id"], ti["map_index"]): ti["node_pool"] for ti in data["task_instances"]}
        assert shown == pools, dag_id


def test_pod_start_overhead_is_queued_to_running_of_every_pod(cp, pipeline):
    run_id = pipeline.run_ids["fanout_render"]
    data = report_data(cp, "fanout_render", run_id)
    waits = [
        (datetime.fromisoformat(t["start_date"]) - datetime.fromisoformat(t["queued_when"])).total_seconds()
        for t in cp.client.task_instances("fanout_render", run_id)
    ]
    assert data["summary"]["pod_start_mean"] == pytest.approx(sum(waits) / len(waits), abs=1e-3)
    assert data["summary"]["pod_start_max"] == pytest.approx(max(waits), abs=1e-3)


def test_an_oom_killed_try_shows_its_pod_node_and_reason(cp, oom_killed):
    run_id, data = oom_killed
    (ti,) = [t for t in data["task_instances"] if t["task_id"] == "hog_memory"]
    first, second = ti["tries"]
    assert (first["state"], second["state"]) == ("failed", "success")
    assert first["reason"].startswith("OOMKilled: the task process exceeded the pod's memory limit")
    # The failed pod is kept (delete_worker_pods_on_failure=False): the report finds it by its labels.
    (record,) = [
        r for r in cp.pods_of(KILLS_DAG_ID, run_id, "hog_memory") if r.annotations["try_number"] == "1"
    ]
    assert first["pod"]["name"] == record.name
    assert first["pod"]["node"] == record.node
    assert first["pod"]["pool"] == record.labels["fanout.io/pool"] == ti["node_pool"]
    assert first["pod"]["reason"] == "OOMKilled"
    assert first["pod"]["failure"].startswith("OOMKilled")
    assert data["summary"]["failed_tries"] == 2  # hog_memory's and kill_itself's first tries
    assert not data["problems"], data["problems"]
