"""fanout.executors: sizes checked against the nodes, and every failed try explained where users look."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace
from unittest import mock

import pytest
from airflow.models.log import Log
from airflow.models.taskinstancekey import TaskInstanceKey
from airflow.providers.cncf.kubernetes.executors.kubernetes_executor_types import KubernetesResults
from airflow.utils.state import TaskInstanceState
from kubernetes.client import models as k8s
from kubernetes.client.rest import ApiException

from fanout import executors
from fanout.executors import FanoutKubernetesExecutor
from fanout.failures import NODE_LOST, OOM_KILLED, TryFailure
from fanout.notes import NOTE_LIMIT, append_note
from fanout.taskpod import TaskProcessEnd

KEY = TaskInstanceKey("fanout_train", "train_trial", "manual__1", try_number=1, map_index=0)


def worker_pod(
    phase="Failed",
    reason="OOMKilled",
    exit_code=137,
    message=None,
    memory="16Gi",
    node="gpu-node-1",
    size="trial",
):
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(
            name="trial-abc", namespace="fanout-workers", labels={"fanout.io/size": size}
        ),
        spec=k8s.V1PodSpec(
            node_name=node,
            containers=[
                k8s.V1Container(name="base", resources=k8s.V1ResourceRequirements(limits={"memory": memory}))
            ],
        ),
        status=k8s.V1PodStatus(
            phase=phase,
            container_statuses=[
                k8s.V1ContainerStatus(
                    name="base",
                    image="fanout-airflow",
                    image_id="",
                    ready=False,
                    restart_count=0,
                    state=k8s.V1ContainerState(
                        terminated=k8s.V1ContainerStateTerminated(
                            exit_code=exit_code, reason=reason, message=message
                        )
                    ),
                )
            ],
        ),
    )


def node(name, cpu, memory, gpus=0, pool="cpu"):
    allocatable = {"cpu": cpu, "memory": memory, "ephemeral-storage": "100Gi", "pods": "110"}
    if gpus:
        allocatable["nvidia.com/gpu"] = str(gpus)
    return k8s.V1Node(
        metadata=k8s.V1ObjectMeta(name=name, labels={"fanout.io/pool": pool}),
        status=k8s.V1NodeStatus(
            allocatable=allocatable, conditions=[k8s.V1NodeCondition(type="Ready", status="True")]
        ),
    )


def results(state, details=None, pod="trial-abc"):
    return KubernetesResults(KEY, state, pod, "fanout-workers", "1", details)


@pytest.fixture
def executor():
    executor = FanoutKubernetesExecutor()
    executor.kube_scheduler = mock.Mock(kube_watchers={})
    executor.kube_client = mock.Mock()
    executor.kube_client.list_node.return_value = k8s.V1NodeList(items=[])
    executor.running.add(KEY)
    return executor


@pytest.fixture
def ti():
    return SimpleNamespace(
        note="checked by alice", max_tries=2, try_number=1, state=TaskInstanceState.RUNNING
    )


@pytest.fixture
def session(ti):
    return mock.Mock(scalar=mock.Mock(return_value=ti))


def audit(session) -> list[Log]:
    return [call.args[0] for call in session.add.call_args_list if isinstance(call.args[0], Log)]


def test_notes_gain_one_line_per_failed_try_and_keep_the_newest_within_the_column():
    note = append_note(None, "Try 1: a")
    note = append_note(note, "Try 2: b")
    assert note == "Try 1: a\nTry 2: b"
    assert append_note(note, "Try 2: b") == note  # the same failure reported twice
    long = append_note("x" * 600, "y" * 600)
    assert long == "y" * 600 and len(append_note(None, "z" * 2000)) == NOTE_LIMIT


def test_an_oom_killed_task_process_reaches_the_scheduler_the_note_the_audit_log_and_the_pod(
    executor, ti, session
):
    message = "...\n" + TaskProcessEnd(-9).record()
    executor.kube_client.read_namespaced_pod.return_value = worker_pod(message=message)
    details = {"pod_status": "Failed", "container_reason": "OOMKilled", "exit_code": 137}

    executor._change_state(results(TaskInstanceState.FAILED, details), session=session)

    state, info = executor.event_buffer[KEY]
    assert state == TaskInstanceState.FAILED and KEY not in executor.running
    assert info.startswith("OOMKilled: the task process exceeded the pod's memory limit 16Gi")
    assert "fanout-workers/trial-abc on node gpu-node-1" in info
    assert ti.note == f"checked by alice\nTry 1: {info}"
    (entry,) = audit(session)
    assert (entry.event, entry.extra, entry.try_number, entry.map_index) == ("worker pod failed", info, 1, 0)
    # The failed pod is kept and says what ended it; a later try can read the record.
    executor.kube_scheduler.delete_pod.assert_not_called()
    name, namespace, body = executor.kube_client.patch_namespaced_pod.call_args.args
    assert (name, namespace) == ("trial-abc", "fanout-workers")
    assert body["metadata"]["labels"] == {"fanout.io/failure": "oom-killed", "airflow_executor_done": "True"}
    record = TryFailure.from_json(body["metadata"]["annotations"]["fanout.io/failure"])
    assert (record.cause, record.memory_limit, record.node) == (OOM_KILLED, "16Gi", "gpu-node-1")
    assert executor.failed_tries["fanout_train", "train_trial", "manual__1", 0] == [record]


def test_a_pod_that_succeeded_while_its_task_still_runs_fails_the_try_and_is_kept(executor, ti, session):
    """The stock pod command: the OOM killer took the task process, its supervisor exited 0."""
    executor.kube_client.read_namespaced_pod.return_value = worker_pod(
        "Succeeded", "OOMKilled", 0, memory="768Mi"
    )
    with mock.patch.object(executor, "_get_task_instance_state", return_value=TaskInstanceState.RUNNING):
        executor._change_state(results(None), session=session)

    state, info = executor.event_buffer[KEY]
    assert state == TaskInstanceState.FAILED
    assert info.startswith("OOMKilled: the task process exceeded the pod's memory limit 768Mi")
    executor.kube_scheduler.delete_pod.assert_not_called()


@pytest.mark.parametrize(
    ("state", "try_number"),
    [
        (TaskInstanceState.SUCCESS, 1),
        # The task reported up_for_retry and its pod exited seconds later (the supervisor's exit
        # delay): the retry, try 2, is already running by then.
        (TaskInstanceState.RUNNING, 2),
    ],
)
def test_a_succeeded_pod_whose_task_reported_its_end_is_passed_through_and_deleted(
    executor, ti, session, state, try_number
):
    ti.state, ti.try_number = state, try_number
    executor.kube_client.read_namespaced_pod.return_value = worker_pod("Succeeded", "Completed", 0)
    with mock.patch.object(executor, "_get_task_instance_state", return_value=state):  # the provider's read
        executor._change_state(results(None), session=session)
    assert executor.event_buffer[KEY] == (state, None), "the provider reports the state it read"
    assert ti.note == "checked by alice" and not executor.failed_tries
    executor.kube_scheduler.delete_pod.assert_called_once_with(
        pod_name="trial-abc", namespace="fanout-workers"
    )
    assert not audit(session)
    executor.kube_client.patch_namespaced_pod.assert_not_called()


def test_a_pod_deleted_while_its_task_ran_is_explained_without_the_pod(executor, session):
    executor.kube_client.read_namespaced_pod.side_effect = ApiException(status=404, reason="Not Found")
    executor._change_state(results(TaskInstanceState.FAILED, None), session=session)
    assert "was deleted while the task ran" in executor.event_buffer[KEY][1]


def test_a_pod_lost_before_its_task_started_is_requeued_and_not_explained(executor, session):
    executor.pod_launch_attempts[KEY] = mock.Mock(attempts=0, requeued_for_pod=None, job="job")
    executor.task_queue = mock.Mock()
    executor.kube_client.read_namespaced_pod.return_value = None
    evicted = {"pod_reason": "Evicted", "container_state": "waiting", "container_reason": "ContainerCreating"}
    with mock.patch.object(executor, "_get_task_instance_state", return_value=TaskInstanceState.QUEUED):
        executor._change_state(results(TaskInstanceState.FAILED, evicted), session=session)

    executor.task_queue.put.assert_called_once_with("job")
    assert KEY not in executor.event_buffer and KEY in executor.running
    assert not audit(session)


def test_a_second_event_for_the_same_failed_pod_is_not_explained_again(executor, session):
    executor.kube_client.read_namespaced_pod.return_value = worker_pod()
    failed = results(TaskInstanceState.FAILED, {"pod_status": "Failed"})
    executor._change_state(failed, session=session)
    executor.event_buffer.clear()
    executor._change_state(failed, session=session)  # e.g. MODIFIED after the executor's own label patch
    assert len(audit(session)) == 1 and KEY not in executor.event_buffer


def test_shutdown_kills_the_pod_watcher_instead_of_waiting_20_seconds_for_it(executor):
    watcher = mock.Mock(is_alive=mock.Mock(return_value=True))
    executor.kube_scheduler.kube_watchers = {"fanout-workers": watcher}
    executor.end()  # never started: the parent's end() has nothing else to do
    watcher.kill.assert_called_once_with()


# --- making pods ---------------------------------------------------------------------------------------


@pytest.fixture
def db(monkeypatch, ti):
    """The executor's own database session (fail without retry)."""
    session = mock.Mock(scalar=mock.Mock(return_value=ti))
    monkeypatch.setattr(executors, "create_session", contextlib.contextmanager(lambda: (yield session)))
    return session


def test_a_task_size_becomes_its_pod_when_the_pod_is_made(executor):
    executor.task_queue = mock.Mock()
    executor.kube_client.list_node.return_value = k8s.V1NodeList(items=[node("g", "8", "32Gi", 1, "gpu")])
    executor.execute_async(KEY, ["workload"], executor_config={"fanout_size": "trial"})

    job = executor.task_queue.put.call_args.args[0]
    container = job.kube_executor_config.spec.containers[0]
    assert container.resources.limits["nvidia.com/gpu"] == "1"
    assert container.command == ["python", "-m", "fanout.taskpod"]
    assert container.termination_message_policy == "FallbackToLogsOnError"
    assert job.kube_executor_config.metadata.labels == {"fanout.io/size": "trial", "fanout.io/pool": "gpu"}


def test_a_size_no_node_of_its_pool_can_hold_fails_at_once_without_a_retry(executor, db, ti):
    executor.task_queue = mock.Mock()
    executor.kube_client.list_node.return_value = k8s.V1NodeList(
        items=[node("gpu-node-1", "2", "8Gi", 1, "gpu"), node("cpu-node-1", "64", "256Gi")]
    )
    executor.execute_async(KEY, ["workload"], executor_config={"fanout_size": "trial"})

    executor.task_queue.put.assert_not_called()
    state, info = executor.event_buffer[KEY]
    assert state == TaskInstanceState.FAILED and KEY not in executor.running
    assert info.startswith("task size 'trial' asks for cpu 4, memory 16Gi")
    assert "gpu pool (fanout.io/pool=gpu)" in info and "gpu-node-1 offers cpu 2, memory 8Gi" in info
    assert "cpu-node-1" not in info
    assert ti.max_tries == 0, "the scheduler retries while try_number <= max_tries"
    assert ti.note.endswith(f"Try 1: {info}")
    (entry,) = audit(db)
    assert (entry.event, entry.extra) == ("worker pod not created", info)


def test_an_unknown_task_size_fails_the_task_at_once_naming_the_sizes(executor, db, ti):
    executor.task_queue = mock.Mock()
    executor.execute_async(KEY, ["workload"], executor_config={"fanout_size": "huge"})

    executor.task_queue.put.assert_not_called()
    state, info = executor.event_buffer[KEY]
    assert state == TaskInstanceState.FAILED
    assert "unknown task size 'huge'" in info and "bookkeeping" in info
    assert ti.max_tries == 0


def test_without_permission_to_list_nodes_sizes_are_not_checked(executor, capsys):
    executor.task_queue = mock.Mock()
    executor.kube_client.list_node.side_effect = ApiException(status=403, reason="Forbidden")
    for _ in range(2):
        executor.execute_async(KEY, ["workload"], executor_config={"fanout_size": "trial"})
    assert executor.task_queue.put.call_count == 2
    assert executor.kube_client.list_node.call_count == 1, "listed at most every NODES_TTL_S"
    assert capsys.readouterr().out.count("Cannot list nodes (403 Forbidden)") == 1


def test_the_pool_without_nodes_is_left_to_the_autoscaler(executor):
    executor.task_queue = mock.Mock()
    executor.kube_client.list_node.return_value = k8s.V1NodeList(items=[node("cpu-node-1", "2", "4Gi")])
    executor.execute_async(KEY, ["workload"], executor_config={"fanout_size": "trial"})  # no GPU node yet
    executor.task_queue.put.assert_called_once()
    assert executor.event_buffer[KEY] == (TaskInstanceState.QUEUED, None)


# --- retries that learn from the failed try ---------------------------------------------------------------

RETRY = TaskInstanceKey("fanout_train", "select_best", "manual__1", try_number=2, map_index=-1)
NODES = [node("cpu-node-1", "4", "16Gi"), node("cpu-node-2", "4", "16Gi")]


def oom_record(limit="768Mi", try_number=1, node_name="cpu-node-1"):
    return TryFailure(
        OOM_KILLED,
        "fanout-workers/p1",
        node_name,
        "task process",
        "SIGKILL",
        137,
        memory_limit=limit,
        try_number=try_number,
    )


def retried_pod(executor, key=RETRY, size="bookkeeping") -> k8s.V1Pod:
    executor.task_queue = mock.Mock()
    executor.running.add(key)
    executor.execute_async(key, ["workload"], executor_config={"fanout_size": size})
    return executor.task_queue.put.call_args.args[0].kube_executor_config


def test_the_retry_of_an_oom_killed_try_gets_more_memory_and_the_note_says_so(executor, db, ti):
    executor.kube_client.list_node.return_value = k8s.V1NodeList(items=NODES)
    executor.failed_tries["fanout_train", "select_best", "manual__1", -1] = [oom_record()]

    pod = retried_pod(executor)

    resources = pod.spec.containers[0].resources
    assert (resources.requests["memory"], resources.limits["memory"]) == ("1152Mi", "1152Mi")
    line = "retry with 1152Mi of memory after OOMKilled at 768Mi in try 1 (x1.5, at most 2304Mi)"
    assert ti.note.endswith(f"Try 2: {line}")
    (entry,) = audit(db)
    assert (entry.event, entry.extra, entry.try_number) == ("retry pod changed", line, 2)
    executor.kube_client.list_namespaced_pod.assert_not_called()  # known in memory


def test_after_a_scheduler_restart_the_retry_reads_the_failed_try_from_its_kept_pod(executor, db, ti):
    """The executor's memory is empty; the kept pod of try 1 carries the record (annotation)."""
    executor.kube_client.list_node.return_value = k8s.V1NodeList(items=NODES)
    kept = k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(
            name="p1",
            annotations={
                "dag_id": "fanout_train",
                "task_id": "select_best",
                "run_id": "manual__1",
                "try_number": "1",
                "fanout.io/failure": TryFailure(
                    NODE_LOST, "fanout-workers/p1", "cpu-node-1", exit_code=137
                ).to_json(),  # a record without its try number: the annotation has it
            },
        )
    )
    executor.kube_client.list_namespaced_pod.return_value = k8s.V1PodList(items=[kept])

    pod = retried_pod(executor)

    _, kwargs = executor.kube_client.list_namespaced_pod.call_args
    assert kwargs["label_selector"] == (
        "dag_id=fanout_train,task_id=select_best,run_id=manual__1,kubernetes_executor=True,"
        "!map_index,fanout.io/failure"
    )
    fields = pod.spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution
    assert [(f.key, f.operator, f.values) for f in fields.node_selector_terms[0].match_fields] == [
        ("metadata.name", "NotIn", ["cpu-node-1"])
    ]
    assert ti.note.endswith("Try 2: kept off node cpu-node-1 (node lost in try 1)")


def test_a_try_oom_killed_at_the_most_memory_its_task_may_get_is_not_retried(executor, ti, session):
    executor.kube_client.list_node.return_value = k8s.V1NodeList(items=NODES)
    message = "...\n" + TaskProcessEnd(-9).record()
    executor.kube_client.read_namespaced_pod.return_value = worker_pod(
        message=message, memory="2304Mi", node="cpu-node-1", size="bookkeeping"
    )
    details = {"pod_status": "Failed", "container_reason": "OOMKilled", "exit_code": 137}

    executor._change_state(results(TaskInstanceState.FAILED, details), session=session)

    _, info = executor.event_buffer[KEY]
    assert "No retry: 2304Mi is already the most memory a 'bookkeeping' task may get" in info
    assert ti.max_tries == 0, "no retry is spent on the same kill"
    assert ti.note.endswith(info)


def test_an_oom_killed_try_with_retries_left_is_told_its_retry_gets_more(executor, ti, session):
    executor.kube_client.read_namespaced_pod.return_value = worker_pod(
        message=TaskProcessEnd(-9).record(), memory="768Mi", node="cpu-node-1", size="bookkeeping"
    )
    details = {"pod_status": "Failed", "container_reason": "OOMKilled", "exit_code": 137}
    executor._change_state(results(TaskInstanceState.FAILED, details), session=session)
    _, info = executor.event_buffer[KEY]
    assert info.endswith(
        "so the kernel killed it (worker pod fanout-workers/trial-abc on node cpu-node-1). A retry gets x1.5 the memory (at most 2304Mi)."
    )
    assert ti.max_tries == 2
    assert executor.failed_tries["fanout_train", "train_trial", "manual__1", 0][0].try_number == 1
