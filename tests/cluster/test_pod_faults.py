"""Pods that fail: before their task started, killed mid-task, OOM-killed mid-task.

One render run (``disturbed_render``) of the same model and params as the pipeline's render
run takes three faults: its plan_chunks pod is evicted by the kubelet before its container
started, the first render chunk to run is SIGKILLed mid-task and the next one is OOM-killed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest

from fanout.pools import SIZES
from fanout.storage import ArtifactStore, safe_key
from tests.cluster.stack import ClusterPipeline

DAG_ID = "fanout_render"


@dataclass
class DisturbedRun:
    run_id: str
    evicted_pod: str  # plan_chunks' first pod, evicted before its container started
    killed: tuple[int, str]  # (map_index, pod) of the chunk SIGKILLed mid-task
    oom_killed: tuple[int, str]  # (map_index, pod) of the chunk OOM-killed mid-task
    run: dict
    task_instances: dict[tuple[str, int], dict]


def wait_for_running_chunk(cp: ClusterPipeline, run_id: str, skip: set[int], timeout: float = 120) -> dict:
    """The first render_chunk task instance of the run in state running, other than ``skip``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for ti in cp.client.task_instances(DAG_ID, run_id):
            if ti["task_id"] == "render_chunk" and ti["state"] == "running" and ti["map_index"] not in skip:
                return ti
        time.sleep(0.05)
    raise TimeoutError(f"no render_chunk of {run_id} ran within {timeout}s")


def running_pod_of(cp: ClusterPipeline, run_id: str, ti: dict) -> str:
    for record in cp.pods_of(DAG_ID, run_id):
        a = record.annotations
        if (a["task_id"], a.get("map_index"), a["try_number"]) == (
            ti["task_id"],
            str(ti["map_index"]),
            str(ti["try_number"]),
        ):
            return record.name
    raise LookupError(f"no pod for {ti['task_id']}[{ti['map_index']}] try {ti['try_number']}")


@pytest.fixture(scope="module")
def disturbed_render(cp: ClusterPipeline, pipeline) -> DisturbedRun:
    cluster, client = cp.cluster, cp.client
    model = f"train/{safe_key(pipeline.run_ids['fanout_train'])}/best/model.pt"
    with cluster.containers_held():  # bound pods stay Pending in ContainerCreating
        run_id = client.trigger(DAG_ID, {"model": model})

        def planner_pods():
            return [r for r in cp.pods_of(DAG_ID, run_id) if r.annotations["task_id"] == "plan_chunks"]

        first = cluster.wait_for(lambda: [r for r in planner_pods() if r.node], timeout=60)[0]
        cluster.faults.evict(first.name)  # node-pressure eviction before the container started
        cluster.wait_for(lambda: len(planner_pods()) > 1, timeout=60, message="plan_chunks was not requeued")

    victims = []
    for fault in (cluster.faults.kill, cluster.faults.oom_kill):
        ti = wait_for_running_chunk(cp, run_id, skip={index for index, _ in victims})
        pod = running_pod_of(cp, run_id, ti)
        fault(pod)
        victims.append((ti["map_index"], pod))

    run = client.wait_run(DAG_ID, run_id, timeout=300)
    tis = {(ti["task_id"], ti["map_index"]): ti for ti in client.task_instances(DAG_ID, run_id)}
    return DisturbedRun(run_id, first.name, victims[0], victims[1], run, tis)


def test_a_pod_lost_before_its_task_started_is_requeued_without_spending_a_retry(cp, disturbed_render):
    """[kubernetes_executor] pod_launch_failure_retries (provider >= 10.20, apache/airflow#69052)."""
    evicted = cp.cluster.record(disturbed_render.evicted_pod)
    assert (evicted.phase, evicted.pod_reason, evicted.started_at) == ("Failed", "Evicted", None)
    planner = disturbed_render.task_instances["plan_chunks", -1]
    assert (planner["state"], planner["try_number"]) == ("success", 1)
    pods = [
        r for r in cp.pods_of(DAG_ID, disturbed_render.run_id) if r.annotations["task_id"] == "plan_chunks"
    ]
    assert [(p.annotations["try_number"], p.phase) for p in pods] == [("1", "Failed"), ("1", "Succeeded")]


def test_a_pod_killed_mid_task_is_retried_and_the_run_succeeds(cp, disturbed_render):
    assert disturbed_render.run["state"] == "success"
    for map_index, pod in (disturbed_render.killed, disturbed_render.oom_killed):
        killed = cp.cluster.record(pod)
        assert killed.started_at is not None and killed.exit_code == 137
        ti = disturbed_render.task_instances["render_chunk", map_index]
        assert (ti["state"], ti["try_number"]) == ("success", 2), f"chunk {map_index} retried once"
    untouched = [
        ti
        for (task_id, map_index), ti in disturbed_render.task_instances.items()
        if map_index not in (disturbed_render.killed[0], disturbed_render.oom_killed[0])
    ]
    assert {(ti["state"], ti["try_number"]) for ti in untouched} == {("success", 1)}


def test_the_disturbed_run_outputs_are_identical_to_the_undisturbed_run(cp, pipeline, disturbed_render):
    store = ArtifactStore(str(cp.artifact_root))
    undisturbed = f"render/{safe_key(pipeline.run_ids[DAG_ID])}"
    disturbed = f"render/{safe_key(disturbed_render.run_id)}"
    chunks = sorted(store.listdir(f"{undisturbed}/chunks"))
    assert chunks and sorted(store.listdir(f"{disturbed}/chunks")) == chunks
    for chunk in chunks:
        expected = store.verified(f"{undisturbed}/chunks/{chunk}")
        retried = store.verified(f"{disturbed}/chunks/{chunk}")
        assert retried is not None and retried["files"] == expected["files"], chunk
        assert not [name for name in store.listdir(f"{disturbed}/chunks/{chunk}") if ".tmp" in name]
    assert store.sha256(f"{disturbed}/video/render.mp4") == store.sha256(f"{undisturbed}/video/render.mp4")


def test_an_oom_killed_pods_reason_reaches_the_user_in_words(cp, disturbed_render):
    map_index, pod = disturbed_render.oom_killed
    record = cp.cluster.record(pod)
    assert (record.reason, record.exit_code) == ("OOMKilled", 137)

    note = disturbed_render.task_instances["render_chunk", map_index]["note"] or ""
    assert f"Try 1: The worker pod {cp.namespace}/{pod} ran out of memory" in note
    assert f"memory limit of {SIZES['frames'].memory}" in note and "OOMKilled" in note
    audit = cp.client.get(
        "/eventLogs", dag_id=DAG_ID, run_id=disturbed_render.run_id, event="state mismatch", limit=100
    )["event_logs"]
    assert any(e["map_index"] == map_index and "ran out of memory" in (e["extra"] or "") for e in audit)
    assert "Pod failed because of None" not in str(audit)

    killed_index, killed_pod = disturbed_render.killed
    killed_note = disturbed_render.task_instances["render_chunk", killed_index]["note"] or ""
    assert f"{killed_pod} was stopped: container 'base' was killed by SIGKILL (exit code 137" in killed_note


def test_failed_pods_are_kept_for_inspection_per_delete_worker_pods_on_failure(cp, disturbed_render):
    """delete_worker_pods_on_failure=False (helm/airflow-values.yaml): kubectl describe still works."""
    for pod, reason in (
        (disturbed_render.evicted_pod, "Evicted"),
        (disturbed_render.killed[1], "Error"),
        (disturbed_render.oom_killed[1], "OOMKilled"),
    ):
        kept = cp.cluster.pod(pod)
        assert kept is not None and kept["status"]["phase"] == "Failed", pod
        state = kept["status"]["containerStatuses"][0]["state"]
        assert reason in (kept["status"].get("reason"), (state.get("terminated") or {}).get("reason"))
    for record in cp.pods_of(DAG_ID, disturbed_render.run_id):
        if record.phase == "Succeeded":
            cp.cluster.wait_for(lambda record=record: record.deleted_at, timeout=10)
