"""Pod placement read from Kubernetes objects as the client returns them (the executor's labels)."""

from __future__ import annotations

from datetime import UTC, datetime

from kubernetes.client import (
    CoreV1Event,
    V1ContainerState,
    V1ContainerStateTerminated,
    V1ContainerStatus,
    V1ObjectMeta,
    V1ObjectReference,
    V1Pod,
    V1PodCondition,
    V1PodSpec,
    V1PodStatus,
)

from fanout.report import kube

T = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def worker_pod(name="fanout-render-render-chunk-x1", node="gpu-node-1", reason="OOMKilled") -> V1Pod:
    return V1Pod(
        metadata=V1ObjectMeta(
            name=name,
            creation_timestamp=T,
            labels={"dag_id": "fanout_render", "fanout.io/pool": "gpu", "fanout.io/size": "frames"},
            annotations={
                "dag_id": "fanout_render",
                "task_id": "render_chunk",
                "run_id": "r",
                "map_index": "2",
                "try_number": "1",
            },
        ),
        spec=V1PodSpec(containers=[], node_name=node),
        status=V1PodStatus(
            phase="Failed",
            conditions=[V1PodCondition(type="PodScheduled", status="True", last_transition_time=T)],
            container_statuses=[
                V1ContainerStatus(
                    name="base",
                    image="i",
                    image_id="",
                    ready=False,
                    restart_count=0,
                    state=V1ContainerState(
                        terminated=V1ContainerStateTerminated(exit_code=137, reason=reason, started_at=T)
                    ),
                )
            ],
        ),
    )


def test_a_worker_pod_says_which_try_it_ran_where_and_why_it_ended():
    key, pod = kube.pod_record(worker_pod())
    assert key == ("render_chunk", 2, 1)
    assert (pod.name, pod.node, pod.pool, pod.size) == (
        "fanout-render-render-chunk-x1",
        "gpu-node-1",
        "gpu",
        "frames",
    )
    assert (pod.scheduled, pod.started, pod.phase, pod.reason) == (T, T, "Failed", "OOMKilled")


def test_a_pod_without_the_executors_annotations_is_not_a_try():
    pod = worker_pod()
    pod.metadata.annotations = {"dag_id": "fanout_render"}
    assert kube.pod_record(pod) is None


def test_scheduled_events_name_the_node_of_pods_already_deleted():
    events = [
        CoreV1Event(
            metadata=V1ObjectMeta(name="e1"),
            involved_object=V1ObjectReference(kind="Pod", name="p1"),
            reason="Scheduled",
            message="Successfully assigned fanout-workers/p1 to cpu-node-2",
            first_timestamp=T,
        ),
        CoreV1Event(
            metadata=V1ObjectMeta(name="e2"),
            involved_object=V1ObjectReference(kind="Pod", name="p2"),
            reason="Scheduled",
            message="something else",
        ),
    ]
    assert kube.assignments(events) == {"p1": ("cpu-node-2", T)}


class _Listing:
    def __init__(self, items):
        self.items = items


class _ApiWithoutEventRights:
    """The two list calls the report makes, answered as a cluster whose Role grants pods but not events."""

    def list_namespaced_pod(self, namespace, label_selector, _request_timeout):
        assert label_selector == "dag_id=fanout_render,run_id=r"
        return _Listing([worker_pod()])

    def list_namespaced_event(self, namespace, field_selector, _request_timeout):
        from kubernetes.client.exceptions import ApiException

        raise ApiException(status=403, reason="Forbidden")


def test_without_rights_to_events_the_pods_still_show_and_the_page_says_what_is_missing(monkeypatch):
    monkeypatch.setattr(kube, "_client", _ApiWithoutEventRights)
    monkeypatch.setattr(kube, "_namespaces", lambda: ["fanout-workers"])
    problems: list[str] = []
    found = kube.pods_of_run("fanout_render", "r", {("render_chunk", 2, 1): "p"}, problems)
    assert found["render_chunk", 2, 1].node == "gpu-node-1"
    assert len(problems) == 1 and "scheduling events" in problems[0] and "403" in problems[0]


def test_a_failed_pod_carries_the_executors_account_of_what_ended_its_try():
    from fanout.failures import FAILURE_ANNOTATION, OOM_KILLED, TASK_PROCESS, TryFailure

    record = TryFailure(
        OOM_KILLED,
        "fanout-workers/fanout-render-render-chunk-x1",
        node="gpu-node-1",
        process=TASK_PROCESS,
        memory_limit="8Gi",
    )
    pod = worker_pod()
    pod.metadata.annotations[FAILURE_ANNOTATION] = record.to_json()
    _, placed = kube.pod_record(pod)
    assert placed.failure == record.explain() and "8Gi" in placed.failure
    pod.metadata.annotations[FAILURE_ANNOTATION] = "{not json"
    assert kube.pod_record(pod)[1].failure is None
