"""fanout.executors: a failed worker pod's reason in words, on the task's note and audit log."""

from __future__ import annotations

from types import SimpleNamespace
from unittest import mock

import pytest
from airflow.models.taskinstancekey import TaskInstanceKey
from airflow.providers.cncf.kubernetes.executors.kubernetes_executor_types import KubernetesResults
from airflow.utils.state import TaskInstanceState
from kubernetes.client import models as k8s

from fanout.executors import (
    NOTE_LIMIT,
    FanoutKubernetesExecutor,
    append_note,
    container_memory_limit,
    explain_pod_failure,
)

KEY = TaskInstanceKey("fanout_train", "train_trial", "manual__1", try_number=1, map_index=0)
OOM = {
    "pod_status": "Failed",
    "pod_reason": None,
    "pod_message": None,
    "container_state": "terminated",
    "container_reason": "OOMKilled",
    "exit_code": 137,
    "container_type": "main",
    "container_name": "base",
}


def test_an_oom_kill_is_explained_with_the_limit_and_what_to_do():
    text = explain_pod_failure("trial-abc", "fanout-workers", OOM, memory_limit="16Gi")
    assert text.startswith("The worker pod fanout-workers/trial-abc ran out of memory")
    assert "memory limit of 16Gi" in text and "(OOMKilled, exit code 137)" in text
    assert "larger size (fanout.pools.SIZES)" in text
    assert "memory limit," in explain_pod_failure("trial-abc", "ns", OOM)  # limit unknown


@pytest.mark.parametrize(
    ("details", "expected"),
    [
        (None, "was deleted while the task ran"),
        (
            {"pod_reason": "Evicted", "pod_message": "The node was low on resource: memory."},
            "was evicted by its node (The node was low on resource: memory.)",
        ),
        ({"pod_reason": "NodeLost", "pod_message": "Node x is unresponsive"}, "was lost with its node"),
        (
            {
                "container_state": "waiting",
                "container_reason": "ErrImagePull",
                "container_message": "no such",
            },
            "failed before container 'base' started (ErrImagePull: no such)",
        ),
        (
            {"container_state": "terminated", "container_reason": "Error", "exit_code": 137},
            "killed by SIGKILL (exit code 137, reason Error) from outside the task",
        ),
        (
            {"container_state": "terminated", "container_reason": "Error", "exit_code": 3},
            "exited with code 3 (Error)",
        ),
        ({"pod_status": "Failed", "pod_reason": "Weird"}, "failed (phase Failed, reason Weird)"),
    ],
)
def test_other_pod_failures_are_explained(details, expected):
    assert expected in explain_pod_failure("p", "ns", details)


def test_notes_gain_one_line_per_failed_try_and_keep_the_newest_within_the_column():
    note = append_note(None, "Try 1: a")
    note = append_note(note, "Try 2: b")
    assert note == "Try 1: a\nTry 2: b"
    assert append_note(note, "Try 2: b") == note  # the same failure reported twice
    long = append_note("x" * 600, "y" * 600)
    assert long == "y" * 600 and len(append_note(None, "z" * 2000)) == NOTE_LIMIT


def test_the_memory_limit_is_read_from_the_failed_container():
    pod = k8s.V1Pod(
        spec=k8s.V1PodSpec(
            containers=[
                k8s.V1Container(name="base", resources=k8s.V1ResourceRequirements(limits={"memory": "8Gi"}))
            ]
        )
    )
    assert container_memory_limit(pod, "base") == "8Gi"
    assert container_memory_limit(pod, "sidecar") is None
    assert container_memory_limit(None, "base") is None


@pytest.fixture
def executor():
    executor = FanoutKubernetesExecutor()
    executor.kube_scheduler = mock.Mock(kube_watchers={})
    executor.kube_client = mock.Mock()
    executor.running.add(KEY)
    return executor


def failed(details, pod="trial-abc"):
    return KubernetesResults(KEY, TaskInstanceState.FAILED, pod, "fanout-workers", "1", details)


def test_a_failed_pod_reaches_the_scheduler_and_the_note_in_words(executor):
    executor.kube_client.read_namespaced_pod.return_value = k8s.V1Pod(
        spec=k8s.V1PodSpec(
            containers=[
                k8s.V1Container(name="base", resources=k8s.V1ResourceRequirements(limits={"memory": "16Gi"}))
            ]
        )
    )
    ti = SimpleNamespace(note="checked by alice")
    session = mock.Mock(scalar=mock.Mock(return_value=ti))

    executor._change_state(failed(OOM), session=session)

    state, info = executor.event_buffer[KEY]
    assert state == TaskInstanceState.FAILED
    assert "ran out of memory" in info and "16Gi" in info and "because of None" not in info
    assert ti.note == f"checked by alice\nTry 1: {info}"
    assert KEY not in executor.running


def test_a_pod_lost_before_its_task_started_is_requeued_and_not_explained(executor):
    executor.pod_launch_attempts[KEY] = mock.Mock(attempts=0, requeued_for_pod=None, job="job")
    executor.task_queue = mock.Mock()
    session = mock.Mock()
    evicted = {"pod_reason": "Evicted", "container_state": "waiting", "container_reason": "ContainerCreating"}
    with mock.patch.object(executor, "_get_task_instance_state", return_value=TaskInstanceState.QUEUED):
        executor._change_state(failed(evicted), session=session)

    executor.task_queue.put.assert_called_once_with("job")
    assert KEY not in executor.event_buffer and KEY in executor.running
    session.scalar.assert_not_called()


def test_success_is_passed_through_untouched(executor):
    session = mock.Mock()
    with mock.patch.object(executor, "_get_task_instance_state", return_value=TaskInstanceState.SUCCESS):
        executor._change_state(KubernetesResults(KEY, None, "p", "ns", "1", None), session=session)
    assert executor.event_buffer[KEY] == (TaskInstanceState.SUCCESS, None)
    session.scalar.assert_not_called()


def test_shutdown_kills_the_pod_watcher_instead_of_waiting_20_seconds_for_it(executor):
    watcher = mock.Mock(is_alive=mock.Mock(return_value=True))
    executor.kube_scheduler.kube_watchers = {"fanout-workers": watcher}
    executor.end()  # never started: the parent's end() has nothing else to do
    watcher.kill.assert_called_once_with()


def test_a_task_size_becomes_its_pod_when_the_pod_is_made(executor):
    executor.task_queue = mock.Mock()
    executor.execute_async(KEY, ["workload"], executor_config={"fanout_size": "trial"})

    job = executor.task_queue.put.call_args.args[0]
    container = job.kube_executor_config.spec.containers[0]
    assert container.resources.limits["nvidia.com/gpu"] == "1"
    assert job.kube_executor_config.metadata.labels == {"fanout.io/size": "trial", "fanout.io/pool": "gpu"}


def test_an_unknown_task_size_fails_the_task_at_once_naming_the_sizes(executor):
    executor.task_queue = mock.Mock()
    executor.execute_async(KEY, ["workload"], executor_config={"fanout_size": "huge"})

    executor.task_queue.put.assert_not_called()
    state, info = executor.event_buffer[KEY]
    assert state == TaskInstanceState.FAILED
    assert "unknown task size 'huge'" in info and "bookkeeping" in info
