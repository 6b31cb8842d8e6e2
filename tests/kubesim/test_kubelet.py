"""The kubelet runs each pod's container as a local process and reports it as a real kubelet does."""

import json
import sys
from pathlib import Path

import psutil

from tests.kubesim import Cluster
from tests.kubesim.kubelet import REPO_ROOT
from tests.kubesim.testing import SLEEP_FOREVER, python_pod

IGNORES_SIGTERM = (
    "import signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('started', flush=True)\n"
    "time.sleep(300)"
)


def container_state(pod):
    return pod["status"]["containerStatuses"][0]["state"]


def waiting_reason(pod):
    statuses = pod["status"].get("containerStatuses") or [{}]
    return (statuses[0].get("state") or {}).get("waiting", {}).get("reason")


def test_a_python_command_runs_to_succeeded(cluster, v1):
    v1.create_namespaced_pod("default", python_pod("ok", "print('hello from the pod')"))
    pod = cluster.wait_for_pod("ok", phase="Succeeded")

    status = pod["status"]["containerStatuses"][0]
    assert status["image"] == "apache/airflow:3.3.2"
    assert status["imageID"].startswith("docker.io/apache/airflow@sha256:")
    assert status["containerID"].startswith("containerd://")
    terminated = status["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (0, "Completed")
    assert terminated["startedAt"] <= terminated["finishedAt"]
    assert cluster.logs("ok") == "hello from the pod\n"
    record = cluster.record("ok")
    assert record.created_at <= record.scheduled_at <= record.started_at <= record.finished_at
    assert [phase for _, phase in record.phases] == ["Pending", "Running", "Succeeded"]
    reasons = [e["reason"] for e in cluster.events(involved="ok")]
    assert reasons == ["Scheduled", "Pulled", "Created", "Started"]


def test_a_failing_command_ends_failed_with_its_exit_code(cluster, v1):
    v1.create_namespaced_pod(
        "default", python_pod("bad", "import sys; print('oops', file=sys.stderr); sys.exit(3)")
    )
    pod = cluster.wait_for_pod("bad", phase="Failed")
    terminated = container_state(pod)["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (3, "Error")
    assert cluster.logs("bad") == "oops\n"  # stderr is captured with stdout
    typed = v1.read_namespaced_pod("bad", "default")  # the executor's watcher deserialises this
    assert typed.status.container_statuses[0].state.terminated.exit_code == 3


def test_container_env_cwd_and_interpreter(tmp_path):
    code = (
        "import os, sys, json; print(json.dumps({'python': sys.executable, 'cwd': os.getcwd(), "
        "'env': {k: os.environ.get(k) for k in ('HOME', 'HOSTNAME', 'PYTHONPATH', 'FROM_IMAGE', "
        "'FROM_POD', 'POD_NAME', 'GREETING', 'AIRFLOW_IS_K8S_EXECUTOR_POD')}}))"
    )
    env = [
        {"name": "AIRFLOW_IS_K8S_EXECUTOR_POD", "value": "True"},
        {"name": "FROM_POD", "value": "pod"},
        {"name": "FROM_IMAGE", "value": "overridden by the pod"},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "GREETING", "value": "hi $(POD_NAME)"},
    ]
    with Cluster(workdir=tmp_path, image_env={"FROM_IMAGE": "image"}) as cluster:
        cluster.core_v1().create_namespaced_pod("default", python_pod("env", code, container={"env": env}))
        cluster.wait_for_pod("env", phase="Succeeded")
        seen = json.loads(cluster.logs("env"))
    assert Path(seen["python"]).resolve() == Path(sys.executable).resolve()
    assert seen["cwd"] == seen["env"]["HOME"] and seen["cwd"].startswith(str(tmp_path / "pods"))
    assert seen["env"]["HOSTNAME"] == seen["env"]["POD_NAME"] == "env"
    assert seen["env"]["GREETING"] == "hi env"
    assert seen["env"]["FROM_POD"] == "pod" and seen["env"]["FROM_IMAGE"] == "overridden by the pod"
    assert seen["env"]["PYTHONPATH"].split(":") == [str(REPO_ROOT / "plugins"), str(REPO_ROOT)]
    assert seen["env"]["AIRFLOW_IS_K8S_EXECUTOR_POD"] == "True"


def test_a_secret_reference_leaves_the_pod_pending_in_create_container_config_error(cluster, v1):
    env = [{"name": "DB", "valueFrom": {"secretKeyRef": {"name": "airflow-db", "key": "url"}}}]
    v1.create_namespaced_pod("default", python_pod("needs-secret", container={"env": env}))
    cluster.wait_for(lambda: waiting_reason(cluster.pod("needs-secret")) == "CreateContainerConfigError")
    pod = cluster.pod("needs-secret")
    assert pod["status"]["phase"] == "Pending"
    assert container_state(pod)["waiting"] == {
        "reason": "CreateContainerConfigError",
        "message": 'secret "airflow-db" not found',
    }


def test_a_missing_executable_fails_with_start_error(cluster, v1):
    v1.create_namespaced_pod("default", python_pod("no-binary", container={"command": ["no-such-binary"]}))
    terminated = container_state(cluster.wait_for_pod("no-binary", phase="Failed"))["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (128, "StartError")


def test_graceful_delete_sends_sigterm_then_removes_the_pod(cluster, v1):
    v1.create_namespaced_pod("default", python_pod("long", SLEEP_FOREVER))
    cluster.wait_for(lambda: "started" in cluster.logs("long"))
    deleting = v1.delete_namespaced_pod("long", "default")
    assert (
        deleting.metadata.deletion_timestamp is not None
        and deleting.metadata.deletion_grace_period_seconds == 30
    )
    record = cluster.wait_for_deletion("long")
    assert (record.exit_code, record.reason) == (143, "Error")  # SIGTERM, Python's default handler
    assert [phase for _, phase in record.phases] == ["Pending", "Running", "Failed"]
    assert record.deletion_requested_at <= record.finished_at <= record.deleted_at
    assert "Killing" in [e["reason"] for e in cluster.events(involved="long")]


def test_a_process_ignoring_sigterm_is_killed_after_the_grace_period(cluster, v1):
    v1.create_namespaced_pod(
        "default", python_pod("stubborn", IGNORES_SIGTERM, terminationGracePeriodSeconds=1)
    )
    cluster.wait_for(lambda: "started" in cluster.logs("stubborn"))
    v1.delete_namespaced_pod("stubborn", "default")
    record = cluster.wait_for_deletion("stubborn", timeout=5)
    assert record.exit_code == 137
    assert record.finished_at - record.deletion_requested_at >= 0.9


def test_deleting_a_pod_kills_its_whole_container_even_processes_in_other_sessions(cluster, v1):
    code = (
        "import subprocess, sys, time\n"
        "sleeper = [sys.executable, '-c', 'import time; time.sleep(300)']\n"
        "child = subprocess.Popen(sleeper, start_new_session=True)\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(300)"
    )
    v1.create_namespaced_pod("default", python_pod("forks", code))
    child_pid = int(cluster.wait_for(lambda: cluster.logs("forks").strip()))
    assert psutil.pid_exists(child_pid)
    v1.delete_namespaced_pod("forks", "default", grace_period_seconds=0)  # force: the API forgets it at once
    assert cluster.pod("forks") is None
    cluster.wait_for(lambda: not _alive(child_pid), message="the child outlived its container")


def _alive(pid):
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_second_delete_can_shorten_the_grace_period(cluster, v1):
    v1.create_namespaced_pod("default", python_pod("slow-to-stop", IGNORES_SIGTERM))
    cluster.wait_for(lambda: "started" in cluster.logs("slow-to-stop"))
    v1.delete_namespaced_pod("slow-to-stop", "default")  # 30 s grace
    v1.delete_namespaced_pod("slow-to-stop", "default", grace_period_seconds=1)
    assert cluster.wait_for_deletion("slow-to-stop", timeout=5).exit_code == 137


PRINT_ENV = "import json, os; print(json.dumps(dict(os.environ)))"


def test_env_from_a_config_map_in_kubelet_order_env_last(cluster, v1):
    data = {"A": "from-map", "B": "from-map", "1-not-a-name": "skipped"}
    v1.create_namespaced_config_map("default", {"metadata": {"name": "settings"}, "data": data})
    container = {
        "envFrom": [
            {"configMapRef": {"name": "settings"}},
            {"configMapRef": {"name": "settings"}, "prefix": "P_"},
        ],
        "env": [
            {"name": "B", "value": "from-env"},
            {"name": "C", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "A"}}},
            {"name": "D", "value": "$(A)-expanded"},
        ],
    }
    v1.create_namespaced_pod("default", python_pod("env-from", PRINT_ENV, container=container))
    cluster.wait_for_pod("env-from", phase="Succeeded")
    env = json.loads(cluster.logs("env-from"))
    assert (env["A"], env["B"], env["C"], env["D"]) == (
        "from-map",
        "from-env",
        "from-map",
        "from-map-expanded",
    )
    assert (env["P_A"], env["P_B"]) == ("from-map", "from-map")
    assert "1-not-a-name" not in env


def test_optional_missing_config_maps_and_secrets_are_skipped(cluster, v1):
    container = {
        "envFrom": [
            {"configMapRef": {"name": "absent", "optional": True}},
            {"secretRef": {"name": "absent", "optional": True}},
        ],
        "env": [
            {
                "name": "X",
                "valueFrom": {"configMapKeyRef": {"name": "absent", "key": "x", "optional": True}},
            }
        ],
    }
    v1.create_namespaced_pod("default", python_pod("optional", PRINT_ENV, container=container))
    cluster.wait_for_pod("optional", phase="Succeeded")
    assert "X" not in json.loads(cluster.logs("optional"))


def test_a_missing_config_map_holds_the_container_until_it_is_created(cluster, v1):
    container = {"envFrom": [{"configMapRef": {"name": "late"}}]}
    v1.create_namespaced_pod("default", python_pod("waits", PRINT_ENV, container=container))
    cluster.wait_for(lambda: waiting_reason(cluster.pod("waits")) == "CreateContainerConfigError")
    waiting = container_state(cluster.pod("waits"))["waiting"]
    assert waiting["message"] == 'configmap "late" not found'
    assert cluster.pod("waits")["status"]["phase"] == "Pending"

    v1.create_namespaced_config_map("default", {"metadata": {"name": "late"}, "data": {"READY": "yes"}})
    cluster.wait_for_pod("waits", phase="Succeeded")
    assert json.loads(cluster.logs("waits"))["READY"] == "yes"


def test_a_missing_config_map_key_is_a_config_error(cluster, v1):
    v1.create_namespaced_config_map("default", {"metadata": {"name": "partial"}, "data": {"A": "1"}})
    ref = {"configMapKeyRef": {"name": "partial", "key": "B"}}
    container = {"env": [{"name": "B", "valueFrom": ref}]}
    v1.create_namespaced_pod("default", python_pod("no-key", container=container))
    cluster.wait_for(lambda: waiting_reason(cluster.pod("no-key")) == "CreateContainerConfigError")
    message = container_state(cluster.pod("no-key"))["waiting"]["message"]
    assert message == "couldn't find key B in ConfigMap default/partial"


def test_a_failed_containers_output_tail_becomes_its_termination_message(cluster, v1):
    """terminationMessagePolicy: FallbackToLogsOnError, as fanout's task pods set it."""
    code = "import sys\nfor i in range(100): print('line', i)\nsys.exit(2)"
    fallback = {"terminationMessagePolicy": "FallbackToLogsOnError"}
    v1.create_namespaced_pod("default", python_pod("says-why", code, container=fallback))
    v1.create_namespaced_pod("default", python_pod("says-nothing", code))
    v1.create_namespaced_pod("default", python_pod("fine", "print('ok')", container=fallback))
    message = container_state(cluster.wait_for_pod("says-why", phase="Failed"))["terminated"]["message"]
    assert message.splitlines() == [f"line {i}" for i in range(20, 100)]  # the kubelet's last 80 lines
    assert (
        "message" not in container_state(cluster.wait_for_pod("says-nothing", phase="Failed"))["terminated"]
    )
    assert "message" not in container_state(cluster.wait_for_pod("fine", phase="Succeeded"))["terminated"]
