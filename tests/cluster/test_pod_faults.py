"""Pods that fail: before their task started, or killed mid-task; retried with identical outputs.

One render run (``disturbed_render``) of the same model and params as the pipeline's render run
takes faults on its render chunks while their tasks run:

- through the Kubernetes API, on any cluster: a chunk's pod is force-deleted
  (``kubectl delete --force --grace-period=0``), the next one evicted (the Eviction API, as
  ``kubectl drain`` does);
- on the harness also below the API, as a node would: before those, the first chunk's *task
  process* is SIGKILLed (``kill -9`` of the supervisor's child, as the OOM killer or a user on the
  node does); and before everything, the run's plan_chunks pod is evicted by its kubelet while its
  container is being created.

Memory-limit OOM kills and SIGKILLs from inside a task are in test_task_process_kills.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from fanout.storage import ArtifactStore, safe_key
from tests.cluster.stack import ClusterPipeline

DAG_ID = "fanout_render"


@dataclass(frozen=True)
class Fault:
    name: str
    inject: Callable[[ClusterPipeline, str], object]  # (cluster, pod name)
    note: str | None  # what the task instance's note then says of the try; None: not asserted
    kept_reason: str | None  # the kept pod's container reason; None: the pod is gone


def _evict(cp: ClusterPipeline, pod: str) -> None:
    cp.v1.create_namespaced_pod_eviction(
        pod, cp.namespace, {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": pod}}
    )


NODE_FAULTS = (  # the harness only
    Fault(
        "SIGKILL of the task process",
        lambda cp, pod: cp.harness.faults.kill(pod, target="child"),
        "The task process was killed by SIGKILL, not for memory",
        "Error",
    ),
)
API_FAULTS = (
    Fault(
        "forced delete",
        lambda cp, pod: cp.v1.delete_namespaced_pod(pod, cp.namespace, grace_period_seconds=0),
        "was deleted while the task ran",
        None,
    ),
    # Graceful: the task gets SIGTERM and may report its own failure before the pod is gone.
    Fault("eviction through the Eviction API", _evict, None, None),
)


@dataclass
class DisturbedRun:
    run_id: str
    evicted_pod: str | None  # plan_chunks' first pod, evicted before its container started (harness)
    faults: list[tuple[Fault, int, str]]  # (fault, map_index, pod) of each chunk disturbed mid-task
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


def _trigger_with_an_eviction_before_start(cp: ClusterPipeline, model: str) -> tuple[str, str]:
    """Harness: the run's first pod is evicted by its kubelet while its container is being created."""
    harness = cp.harness
    with harness.containers_held():  # bound pods stay Pending in ContainerCreating
        run_id = cp.client.trigger(DAG_ID, {"model": model})

        def planner_pods():
            return cp.pods_of(DAG_ID, run_id, "plan_chunks")

        first = cp.pods.wait_for(lambda: [r for r in planner_pods() if r.node], timeout=60)[0]
        harness.faults.evict(first.name)  # node-pressure eviction before the container started
        cp.pods.wait_for(lambda: len(planner_pods()) > 1, timeout=60, message="plan_chunks was not requeued")
    return run_id, first.name


@pytest.fixture(scope="module")
def disturbed_render(cp: ClusterPipeline, pipeline) -> DisturbedRun:
    model = f"{pipeline.prefixes['fanout_train']}/best/model.pt"
    if cp.harness is not None:
        run_id, evicted = _trigger_with_an_eviction_before_start(cp, model)
        faults = NODE_FAULTS + API_FAULTS
    else:
        run_id, evicted = cp.client.trigger(DAG_ID, {"model": model}), None
        faults = API_FAULTS

    disturbed = []
    for fault in faults:
        ti = wait_for_running_chunk(cp, run_id, skip={index for _, index, _ in disturbed})
        pod = running_pod_of(cp, run_id, ti)
        fault.inject(cp, pod)
        disturbed.append((fault, ti["map_index"], pod))

    run = cp.client.wait_run(DAG_ID, run_id, timeout=300)
    tis = {(ti["task_id"], ti["map_index"]): ti for ti in cp.client.task_instances(DAG_ID, run_id)}
    return DisturbedRun(run_id, evicted, disturbed, run, tis)


def test_a_pod_lost_before_its_task_started_is_requeued_without_spending_a_retry(cp, disturbed_render):
    """[kubernetes_executor] pod_launch_failure_retries (provider >= 10.20, apache/airflow#69052)."""
    cp.require_harness("a kubelet eviction of a pod whose container is still being created")
    evicted = cp.pods.record(disturbed_render.evicted_pod)
    assert (evicted.phase, evicted.pod_reason, evicted.started_at) == ("Failed", "Evicted", None)
    planner = disturbed_render.task_instances["plan_chunks", -1]
    assert (planner["state"], planner["try_number"]) == ("success", 1)
    pods = cp.pods_of(DAG_ID, disturbed_render.run_id, "plan_chunks")
    assert [(p.annotations["try_number"], p.phase) for p in pods] == [("1", "Failed"), ("1", "Succeeded")]


def test_a_pod_killed_mid_task_is_retried_and_the_run_succeeds(cp, disturbed_render):
    assert disturbed_render.run["state"] == "success"
    for fault, map_index, pod in disturbed_render.faults:
        assert cp.pods.record(pod).started_at is not None
        ti = disturbed_render.task_instances["render_chunk", map_index]
        assert (ti["state"], ti["try_number"]) == ("success", 2), (
            f"chunk {map_index} ({fault.name}) retried once"
        )
    disturbed = {map_index for _, map_index, _ in disturbed_render.faults}
    untouched = [
        ti for (_, map_index), ti in disturbed_render.task_instances.items() if map_index not in disturbed
    ]
    assert {(ti["state"], ti["try_number"]) for ti in untouched} == {("success", 1)}


def test_the_disturbed_run_outputs_are_identical_to_the_undisturbed_run(cp, pipeline, disturbed_render):
    store = ArtifactStore(str(cp.artifact_root))
    undisturbed = pipeline.prefixes[DAG_ID]
    disturbed = f"render/{safe_key(disturbed_render.run_id)}"
    chunks = sorted(store.listdir(f"{undisturbed}/chunks"))
    assert chunks and sorted(store.listdir(f"{disturbed}/chunks")) == chunks
    for chunk in chunks:
        expected = store.verified(f"{undisturbed}/chunks/{chunk}")
        retried = store.verified(f"{disturbed}/chunks/{chunk}")
        assert retried is not None and retried["files"] == expected["files"], chunk
        assert not [name for name in store.listdir(f"{disturbed}/chunks/{chunk}") if ".tmp" in name]
    assert store.sha256(f"{disturbed}/video/render.mp4") == store.sha256(f"{undisturbed}/video/render.mp4")


def test_each_killed_try_is_explained_in_the_note_and_the_audit_log(cp, disturbed_render):
    audit = cp.client.get(
        "/eventLogs", dag_id=DAG_ID, run_id=disturbed_render.run_id, event="worker pod failed", limit=100
    )["event_logs"]
    for fault, map_index, pod in disturbed_render.faults:
        if fault.note is None:
            continue
        note = disturbed_render.task_instances["render_chunk", map_index]["note"] or ""
        (first_try,) = [line for line in note.splitlines() if line.startswith("Try 1: ")]
        assert fault.note in first_try and f"worker pod {cp.namespace}/{pod}" in first_try, fault.name
        (entry,) = [e for e in audit if e["map_index"] == map_index]
        assert fault.note in entry["extra"] and entry["try_number"] == 1
    assert "Pod failed because of None" not in str(audit)


def test_failed_pods_are_kept_for_inspection_per_delete_worker_pods_on_failure(cp, disturbed_render):
    """delete_worker_pods_on_failure=False (helm/airflow-values.yaml): kubectl describe still works."""
    kept = [(pod, fault.kept_reason) for fault, _, pod in disturbed_render.faults if fault.kept_reason]
    if disturbed_render.evicted_pod:
        kept.append((disturbed_render.evicted_pod, "Evicted"))
    for pod, reason in kept:
        obj = cp.pods.pod(pod)
        assert obj is not None and obj["status"]["phase"] == "Failed", pod
        state = obj["status"]["containerStatuses"][0]["state"]
        assert reason in (obj["status"].get("reason"), (state.get("terminated") or {}).get("reason"))
    for record in cp.pods_of(DAG_ID, disturbed_render.run_id):
        if record.phase == "Succeeded":
            cp.pods.wait_for(lambda record=record: record.deleted_at, timeout=10)
