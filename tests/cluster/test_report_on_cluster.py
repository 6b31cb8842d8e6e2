"""The fanout report of runs that ran on Kubernetes (the harness): each try's node pool, the pod
and node of a failed try that Kubernetes still keeps, its OOMKilled reason in words, and the pod
start overhead, all as the report's JSON shows them to a user."""

from __future__ import annotations

import json
import time

import pytest

from fanout.storage import safe_key
from tests.cluster.stack import ClusterPipeline
from tests.report.reportkit import fetch, report_path

DAG_ID = "fanout_render"


def report_data(cp: ClusterPipeline, dag_id: str, run_id: str) -> dict:
    status, _, body = fetch(
        cp.stack.base_url, report_path(dag_id, run_id, "data.json"), token=cp.client.token()
    )
    assert status == 200, body[:300]
    return json.loads(body)


@pytest.fixture(scope="module")
def oom_killed_render(cp: ClusterPipeline, pipeline) -> tuple[str, int, str]:
    """A render run one of whose chunks is OOM-killed mid-task: (run id, map index, pod)."""
    model = f"train/{safe_key(pipeline.run_ids['fanout_train'])}/best/model.pt"
    run_id = cp.client.trigger(DAG_ID, {"model": model})
    deadline = time.monotonic() + 120
    while True:
        running = [
            ti
            for ti in cp.client.task_instances(DAG_ID, run_id)
            if ti["task_id"] == "render_chunk" and ti["state"] == "running"
        ]
        if running:
            break
        assert time.monotonic() < deadline, "no render chunk ran"
        time.sleep(0.05)
    ti = running[0]
    (pod,) = [
        r.name
        for r in cp.pods_of(DAG_ID, run_id)
        if (r.annotations["task_id"], r.annotations.get("map_index"), r.annotations["try_number"])
        == ("render_chunk", str(ti["map_index"]), str(ti["try_number"]))
    ]
    cp.cluster.faults.oom_kill(pod)
    assert cp.client.wait_run(DAG_ID, run_id, timeout=300)["state"] == "success"
    return run_id, ti["map_index"], pod


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
    from datetime import datetime

    run_id = pipeline.run_ids[DAG_ID]
    data = report_data(cp, DAG_ID, run_id)
    waits = [
        (datetime.fromisoformat(t["start_date"]) - datetime.fromisoformat(t["queued_when"])).total_seconds()
        for t in cp.client.task_instances(DAG_ID, run_id)
    ]
    assert data["summary"]["pod_start_mean"] == pytest.approx(sum(waits) / len(waits), abs=1e-3)
    assert data["summary"]["pod_start_max"] == pytest.approx(max(waits), abs=1e-3)


def test_an_oom_killed_try_shows_its_pod_node_and_reason(cp, oom_killed_render):
    run_id, map_index, pod = oom_killed_render
    record = cp.cluster.record(pod)
    data = report_data(cp, DAG_ID, run_id)
    (ti,) = [
        t for t in data["task_instances"] if (t["task_id"], t["map_index"]) == ("render_chunk", map_index)
    ]
    first, *later = ti["tries"]
    assert first["state"] == "failed" and later and later[-1]["state"] == "success"
    assert "ran out of memory" in first["reason"] and "OOMKilled" in first["reason"]
    # The failed pod is kept (delete_worker_pods_on_failure=False): the report finds it by its labels.
    assert first["pod"]["name"] == pod
    assert first["pod"]["node"] == record.node
    assert first["pod"]["pool"] == record.labels["fanout.io/pool"] == ti["node_pool"]
    assert first["pod"]["reason"] == "OOMKilled"
    assert data["summary"]["failed_tries"] >= 1
    assert not data["problems"], data["problems"]
