"""fanout.failures: what ended a try's worker pod, as a record and as one sentence."""

from __future__ import annotations

import pytest
from kubernetes.client import models as k8s

from fanout.failures import (
    CONTAINER,
    DELETED,
    EVICTED,
    EXITED,
    KILLED,
    NODE_LOST,
    NOT_STARTED,
    OOM_KILLED,
    TASK_PROCESS,
    UNREPORTED,
    TryFailure,
    diagnose,
    memory_limit,
    pod_end,
)
from fanout.taskpod import TaskProcessEnd

POD = "fanout-workers/render-chunk-abc"
SIGKILLED_TASK = TaskProcessEnd(-9).record()


def ended(reason, exit_code, message=None, phase="Failed", **pod):
    return {
        "pod_status": phase,
        "pod_reason": pod.get("pod_reason"),
        "pod_message": pod.get("pod_message"),
        "container_name": "base",
        "container_state": "terminated",
        "container_reason": reason,
        "container_message": message,
        "exit_code": exit_code,
    }


def test_the_oom_killer_ending_the_task_process_is_said_with_the_limit():
    # fanout.taskpod failed the container with its record; the kubelet saw the cgroup's OOM kill.
    failure = diagnose(
        ended("OOMKilled", 137, "...\n" + SIGKILLED_TASK), pod=POD, node="cpu-node-1", memory_limit="768Mi"
    )
    assert (failure.cause, failure.process, failure.exit_code) == (OOM_KILLED, TASK_PROCESS, 137)
    text = failure.explain()
    assert text.startswith("OOMKilled: the task process exceeded the pod's memory limit 768Mi")
    assert text.endswith(f"so the kernel killed it (worker pod {POD} on node cpu-node-1).")


def test_an_oom_kill_seen_only_by_the_kubelet_is_still_the_task_processs():
    # The stock command: the supervisor lived on and exited 0, the pod Succeeded.
    failure = diagnose(ended("OOMKilled", 0, phase="Succeeded"), pod=POD, memory_limit="8Gi", reported=False)
    assert (failure.cause, failure.process) == (OOM_KILLED, TASK_PROCESS)


def test_an_oom_kill_of_the_whole_container_says_so():
    # cgroup v2 with memory.oom.group (Kubernetes >= 1.28): every process of the container dies.
    failure = diagnose(ended("OOMKilled", 137), pod=POD, memory_limit="8Gi")
    assert (failure.cause, failure.process) == (OOM_KILLED, CONTAINER)
    assert failure.explain().startswith("OOMKilled: the pod's container exceeded its memory limit 8Gi")


def test_a_sigkilled_task_process_is_not_blamed_on_memory():
    failure = diagnose(ended("Error", 137, SIGKILLED_TASK), pod=POD, memory_limit="768Mi")
    assert (failure.cause, failure.process, failure.signal) == (KILLED, TASK_PROCESS, "SIGKILL")
    assert failure.explain().startswith("The task process was killed by SIGKILL, not for memory")


@pytest.mark.parametrize(
    ("details", "cause", "process", "words"),
    [
        (
            ended("Error", 1, TaskProcessEnd(1).record()),
            EXITED,
            TASK_PROCESS,
            "task process exited with code 1",
        ),
        (
            ended("Error", 137),
            KILLED,
            CONTAINER,
            "container was killed by SIGKILL (exit code 137, reason Error)",
        ),
        (ended("Error", 3, "boom"), EXITED, CONTAINER, "exited with code 3 (Error: boom)"),
        (ended("Completed", 0, phase="Succeeded"), UNREPORTED, None, "ended without reporting its state"),
        (
            {"pod_reason": "Evicted", "pod_message": "The node was low on resource: memory."},
            EVICTED,
            None,
            "was evicted (The node was low on resource: memory.)",
        ),
        (
            {"pod_reason": "NodeLost", "pod_message": "Node x is unresponsive"},
            NODE_LOST,
            None,
            "lost with its node",
        ),
        (
            {
                "container_state": "waiting",
                "container_reason": "ErrImagePull",
                "container_message": "no such",
            },
            NOT_STARTED,
            None,
            "failed before container 'base' started (ErrImagePull: no such)",
        ),
        (None, DELETED, None, "was deleted while the task ran"),
    ],
)
def test_other_ends_are_explained(details, cause, process, words):
    failure = diagnose(details, pod=POD, reported=cause != UNREPORTED)
    assert (failure.cause, failure.process) == (cause, process)
    assert words in failure.explain()


def test_the_record_survives_a_round_trip_through_json():
    failure = diagnose(
        ended("OOMKilled", 137, SIGKILLED_TASK), pod=POD, node="n", memory_limit="1Gi", try_number=2
    )
    assert failure.try_number == 2
    assert TryFailure.from_json(failure.to_json()) == failure


@pytest.mark.parametrize(
    ("details", "blamed"),
    [
        ({"pod_reason": "Evicted", "pod_message": "The node was low on resource: memory."}, True),
        ({"pod_reason": "NodeLost"}, True),
        (ended("ContainerStatusUnknown", 137), True),
        (ended("Error", 74, TaskProcessEnd(74).record()), True),  # listed: a node fault
        (ended("Error", 74), True),  # the container's own exit code, listed
        (ended("Error", 1, TaskProcessEnd(1).record()), False),  # an ordinary crash
        (ended("Error", 137, SIGKILLED_TASK), False),  # a kill, not listed
        (ended("OOMKilled", 137, SIGKILLED_TASK), False),  # the task's own memory
        (None, False),  # deleted by someone
    ],
)
def test_the_node_is_blamed_for_evictions_lost_nodes_and_the_listed_exit_codes(details, blamed):
    failure = diagnose(details, pod=POD, node="gpu-node-1")
    assert failure.blames_node(node_fault_exit_codes={74, 135}) is blamed


def test_a_pods_end_and_memory_limit_are_read_from_the_pod():
    pod = k8s.V1Pod(
        spec=k8s.V1PodSpec(
            node_name="cpu-node-2",
            containers=[
                k8s.V1Container(name="base", resources=k8s.V1ResourceRequirements(limits={"memory": "768Mi"}))
            ],
        ),
        status=k8s.V1PodStatus(
            phase="Succeeded",
            container_statuses=[
                k8s.V1ContainerStatus(
                    name="base",
                    image="i",
                    image_id="",
                    ready=False,
                    restart_count=0,
                    state=k8s.V1ContainerState(
                        terminated=k8s.V1ContainerStateTerminated(exit_code=0, reason="OOMKilled")
                    ),
                )
            ],
        ),
    )
    details = pod_end(pod)
    assert (details["pod_status"], details["container_reason"], details["exit_code"]) == (
        "Succeeded",
        "OOMKilled",
        0,
    )
    assert memory_limit(pod, "base") == "768Mi" and memory_limit(pod, "sidecar") is None
    assert pod_end(None) is None
