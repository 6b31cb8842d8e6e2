"""The whole pipeline through the KubernetesExecutor on the harness: where pods ran, what they held,
in which order they ran, that they were cleaned up, and how GPU tasks waited for the one GPU.

One undisturbed pipeline trigger (the session's ``pipeline`` fixture) serves every test here.
"""

from __future__ import annotations

import time
from datetime import datetime
from itertools import pairwise

import pytest
from kubernetes.utils import parse_quantity

from fanout.settings import settings
from tests.kubesim import POOL_LABEL

# DAG -> (planning task, mapped task, fan-in task)
FAN_OUT_FAN_IN = {
    "fanout_preprocess": ("ensure_dataset", "featurise_shard", "merge_stats"),
    "fanout_train": ("plan_trials", "train_trial", "select_best"),
    "fanout_render": ("plan_chunks", "render_chunk", "encode_video"),
}
GPU_TASKS = {"train_trial", "render_chunk"}  # sizes "trial" and "frames" (FANOUT_RENDER_POOL=gpu)
# A successful pod is deleted within a second of finishing (measured: 0.1-1.1 s).
DELETION_BOUND_S = 10.0


def ts(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def supervisor_exit_delay(cp) -> float:
    """How long a pod may outlive its task's success report, plus slack for 2 busy cores.

    The task supervisor (Airflow 3.3.2) reports success, then can wait one more
    ``[workers] min_heartbeat_interval`` in select() before it notices its child exited.
    """
    return float(cp.settings.get("AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL", 5)) + 3.0


def pods_by_task(cp, dag_id, run_id):
    pods = {}
    for record in cp.pods_of(dag_id, run_id):
        pods.setdefault(record.annotations["task_id"], []).append(record)
    return pods


def test_every_task_ran_in_its_own_pod_on_the_pool_its_executor_config_asked_for(cp, pipeline):
    gpu_node_tasks, cpu_node_tasks = set(), set()
    for dag_id, run_id in pipeline.run_ids.items():
        pods = cp.pods_of(dag_id, run_id)
        ran = sorted((p.annotations["task_id"], int(p.annotations.get("map_index", -1))) for p in pods)
        expected = sorted((ti["task_id"], ti["map_index"]) for ti in pipeline.task_instances[dag_id])
        assert ran == expected, f"{dag_id}: one pod per task instance, none retried"
        for pod in pods:
            node_pool = cp.pool_of_node(pod.node)
            # The pod_override (fanout.pods) labels the pod with the pool it asks for.
            asked = pod.labels[POOL_LABEL]
            assert node_pool == asked, (
                f"{pod.name} ({pod.annotations['task_id']}) asked for {asked}, ran on {pod.node}"
            )
            (gpu_node_tasks if node_pool == "gpu" else cpu_node_tasks).add(pod.annotations["task_id"])
    assert gpu_node_tasks == GPU_TASKS, "only GPU-sized tasks ran on the GPU node"
    assert not cpu_node_tasks & GPU_TASKS


def test_bound_pods_never_exceeded_any_nodes_capacity(cp, pipeline):
    """Only this namespace's pods are counted: on a shared cluster, a lower bound of what is bound."""
    samples = cp.pods.capacity_history()
    nodes = {node["metadata"]["name"]: node for node in cp.pods.nodes()}
    if cp.harness is not None:  # least-allocated scoring spread the pods over every node
        assert {s.node for s in samples} == set(nodes) == {"cpu-node-1", "cpu-node-2", "gpu-node-1"}
    for sample in samples:
        allocatable = nodes[sample.node]["status"]["allocatable"]
        for resource, requested in sample.requested.items():
            assert requested <= parse_quantity(allocatable.get(resource, "0")), (
                f"{sample.node}: {resource} requested {requested} > allocatable "
                f"{allocatable.get(resource)} by {sample.pods}"
            )
    # Every size fits its pool: no CPU pod ever waited for room (GPU pods: see the GPU test).
    for dag_id, run_id in pipeline.run_ids.items():
        for pod in cp.pods_of(dag_id, run_id):
            if pod.labels[POOL_LABEL] == "cpu":
                assert pod.unschedulable_message is None, f"{pod.name}: {pod.unschedulable_message}"


@pytest.mark.parametrize("dag_id", FAN_OUT_FAN_IN)
def test_each_fan_in_started_after_all_its_mapped_pods_finished(cp, pipeline, dag_id):
    planner, mapped, fan_in = FAN_OUT_FAN_IN[dag_id]
    pods = pods_by_task(cp, dag_id, pipeline.run_ids[dag_id])
    (planner_ti,) = pipeline.tis(dag_id, planner)
    (fan_in_ti,) = pipeline.tis(dag_id, fan_in)
    (fan_in_pod,) = pods[fan_in]
    mapped_tis = pipeline.tis(dag_id, mapped)
    assert len(mapped_tis) == len(pods[mapped]) > 1

    for pod in pods[mapped]:
        assert pod.created_at >= ts(planner_ti["end_date"]), f"{pod.name} started before its plan existed"
        assert (pod.exit_code, pod.reason) == (0, "Completed")
    last_mapped_task_end = max(ts(ti["end_date"]) for ti in mapped_tis)
    assert fan_in_pod.created_at >= last_mapped_task_end
    assert ts(fan_in_ti["start_date"]) >= last_mapped_task_end
    # The mapped pods exit a moment after their tasks report success; the fan-in's pod can start
    # in that moment (the supervisor's exit delay), never later.
    last_mapped_pod_exit = max(pod.finished_at for pod in pods[mapped])
    assert last_mapped_pod_exit - fan_in_pod.started_at <= supervisor_exit_delay(cp)


def test_finished_pods_were_deleted_per_delete_worker_pods(cp, pipeline):
    """delete_worker_pods=True (helm/airflow-values.yaml): successful task pods do not pile up."""
    for dag_id, run_id in pipeline.run_ids.items():
        for pod in cp.pods_of(dag_id, run_id):
            assert pod.phase == "Succeeded"
            cp.pods.wait_for(
                lambda pod=pod: pod.deleted_at,
                timeout=max(0.1, pod.finished_at + DELETION_BOUND_S - time.time()),
                message=f"{pod.name} ({pod.annotations['task_id']}) was not deleted after it succeeded",
            )
            assert pod.deleted_at - pod.finished_at <= DELETION_BOUND_S
            assert cp.pods.pod(pod.name) is None


def test_gpu_tasks_wait_for_the_single_gpu_in_the_airflow_pool_not_in_kubernetes(cp, pipeline):
    stack_settings = settings(cp.stack.env())
    pool_name, slots = stack_settings.gpu_airflow_pool, stack_settings.gpu_airflow_pool_slots
    gpu_tis = [ti for tis in pipeline.task_instances.values() for ti in tis if ti["pool"] == pool_name]
    assert {ti["task_id"] for ti in gpu_tis} == GPU_TASKS
    assert {(ti["state"], ti["try_number"]) for ti in gpu_tis} == {("success", 1)}
    # Airflow queued the next GPU task only once the previous one had finished: they waited
    # (scheduled) in the pool, never queued side by side with a pod Pending for the GPU.
    spans = sorted(
        (ts(ti["queued_when"]), ts(ti["end_date"]), ti["task_id"], ti["map_index"]) for ti in gpu_tis
    )
    for before, after in pairwise(spans):
        assert after[0] >= before[1], f"{after[2:]} was queued while {before[2:]} still held the GPU"

    # In Kubernetes a GPU pod waited at most for the previous GPU pod to exit, and only for the GPU.
    exit_delay = supervisor_exit_delay(cp)
    for dag_id, run_id in pipeline.run_ids.items():
        for pod in cp.pods_of(dag_id, run_id):
            if pod.annotations["task_id"] not in GPU_TASKS:
                continue
            assert cp.pool_of_node(pod.node) == "gpu"
            assert pod.scheduled_at - pod.created_at <= exit_delay, f"{pod.name}: {pod.unschedulable_message}"
            if pod.unschedulable_message:
                assert f"Insufficient {stack_settings.gpu_resource}" in pod.unschedulable_message
                assert "taint" not in pod.unschedulable_message

    assert cp.client.get(f"/pools/{pool_name}")["slots"] == slots == cp.gpus(), "one pool slot per GPU"
    stuck = cp.client.get(
        "/eventLogs",
        included_events=["stuck in queued reschedule", "stuck in queued tries exceeded"],
        limit=100,
    )
    assert stuck["event_logs"] == [], "no task sat in queued past [scheduler] task_queued_timeout"
