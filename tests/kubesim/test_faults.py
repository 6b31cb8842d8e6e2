"""Each injected fault leaves pods and nodes as a real cluster shows them afterwards."""

import subprocess

import pytest

from tests.kubesim import FaultError, memory
from tests.kubesim.testing import SLEEP_FOREVER, python_pod, watch_events


@pytest.fixture
def running(cluster, v1):
    """A pod whose process is up (it printed 'started')."""
    v1.create_namespaced_pod("default", python_pod("victim", SLEEP_FOREVER))
    cluster.wait_for(lambda: "started" in cluster.logs("victim"))
    return "victim"


def terminated(cluster, name):
    return cluster.pod(name)["status"]["containerStatuses"][0]["state"]["terminated"]


def test_kill_of_the_main_process_exits_137_with_reason_error(cluster, running):
    cluster.faults.kill(running)
    cluster.wait_for_pod(running, phase="Failed")
    assert (terminated(cluster, running)["exitCode"], terminated(cluster, running)["reason"]) == (
        137,
        "Error",
    )


def test_oom_kill_exits_137_with_reason_oom_killed(cluster, v1, running):
    cluster.faults.oom_kill(running)
    cluster.wait_for_pod(running, phase="Failed")
    state = v1.read_namespaced_pod(running, "default").status.container_statuses[0].state.terminated
    assert (state.exit_code, state.reason) == (137, "OOMKilled")


def test_evicting_a_running_pod_fails_it_with_reason_evicted(cluster, running):
    cluster.faults.evict(running)
    pod = cluster.pod(running)
    assert (pod["status"]["phase"], pod["status"]["reason"]) == ("Failed", "Evicted")
    assert terminated(cluster, running)["exitCode"] == 137
    condition = next(c for c in pod["status"]["conditions"] if c["type"] == "DisruptionTarget")
    assert condition["reason"] == "TerminationByKubelet"
    assert cluster.events(reason="Evicted", involved=running)


def test_evicting_a_pod_before_its_container_started(cluster, v1):
    with cluster.containers_held():
        v1.create_namespaced_pod("default", python_pod("early", SLEEP_FOREVER))
        cluster.wait_for(lambda: cluster.pod("early")["status"].get("containerStatuses"))
        cluster.faults.evict("early")
    pod = cluster.wait_for_pod("early", phase="Failed")
    assert pod["status"]["containerStatuses"][0]["state"] == {"waiting": {"reason": "ContainerCreating"}}
    assert cluster.record("early").started_at is None  # the process never ran


def test_evicting_through_the_api_deletes_gracefully(cluster, running):
    cluster.faults.evict_via_api(running)
    record = cluster.wait_for_deletion(running)
    assert record.exit_code == 143 and record.deletion_requested_at is not None


def test_force_delete_of_a_running_pod_is_immediate(cluster, v1, running):
    since = v1.list_namespaced_pod("default").metadata.resource_version
    cluster.faults.delete(running, grace_period_seconds=0)
    assert cluster.pod(running) is None
    deleted = watch_events(v1, since, until=lambda e: e["type"] == "DELETED")[-1]["object"]
    # What the executor sees: "Pod ... deleted before it could complete".
    assert deleted.status.phase == "Running" and deleted.metadata.deletion_timestamp is not None
    cluster.wait_for(lambda: not cluster.pod_processes())


def test_deleting_a_pod_before_its_container_started_never_runs_it(cluster, v1):
    with cluster.containers_held():
        v1.create_namespaced_pod("default", python_pod("never", "print('ran')"))
        cluster.wait_for(lambda: cluster.pod("never")["status"].get("containerStatuses"))
        cluster.faults.delete("never")
        record = cluster.wait_for_deletion("never")
    assert record.phase == "Pending" and record.started_at is None
    assert cluster.logs("never") == ""


def test_node_not_ready_fails_its_pods_and_takes_no_new_ones(cluster, v1, running):
    node = cluster.record(running).node
    cluster.faults.node_not_ready(node)
    pod = cluster.pod(running)
    assert (pod["status"]["phase"], pod["status"]["reason"]) == ("Failed", "NodeLost")
    assert terminated(cluster, running)["reason"] == "ContainerStatusUnknown"
    assert not cluster.pod_processes()
    ready = next(c for c in cluster.node(node)["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "Unknown"

    other = "cpu-node-2" if node == "cpu-node-1" else "cpu-node-1"
    cluster.faults.cordon(other)
    v1.create_namespaced_pod("default", python_pod("after"))
    event = cluster.wait_for(lambda: cluster.events(reason="FailedScheduling", involved="after"))[0]
    assert "1 node(s) had untolerated taint {node.kubernetes.io/unreachable: }" in event["message"]

    cluster.faults.node_ready(node)
    cluster.wait_for_pod("after", phase="Succeeded")
    assert cluster.record("after").node == node


def test_a_fault_on_a_pod_that_is_not_running_is_refused(cluster, v1):
    v1.create_namespaced_pod("default", python_pod("done"))
    cluster.wait_for_pod("done", phase="Succeeded")
    with pytest.raises(FaultError):
        cluster.faults.kill("done")
    with pytest.raises(FaultError):
        cluster.faults.evict("done")


# The child holds 50 MiB, so it is the container's largest process.
CHILD = "import time; data = b'x' * (50 << 20); print('ready', flush=True); time.sleep(300)"
SUPERVISES_A_CHILD = (
    "import subprocess, sys\n"
    f"child = subprocess.Popen([sys.executable, '-c', {CHILD!r}])\n"
    "print('child exited', child.wait(), flush=True)\n"
)


@pytest.fixture
def supervising(cluster, v1):
    """A pod whose main process waits for a child and exits 0 whatever became of it (Airflow's supervisor)."""
    v1.create_namespaced_pod("default", python_pod("supervisor", SUPERVISES_A_CHILD))
    cluster.wait_for(lambda: "ready" in cluster.logs("supervisor"))
    return "supervisor"


def test_kill_of_the_child_leaves_the_main_process_to_decide_the_exit(cluster, supervising):
    cluster.faults.kill(supervising, target="child")
    cluster.wait_for_pod(supervising, phase="Succeeded")
    # As on a real node after kill -9 of the task process: exit 0, reason Completed.
    assert (terminated(cluster, supervising)["exitCode"], terminated(cluster, supervising)["reason"]) == (
        0,
        "Completed",
    )
    assert "child exited -9" in cluster.logs(supervising)


def test_kill_of_the_child_passes_over_a_process_that_exited_after_it_was_listed(
    cluster, supervising, monkeypatch
):
    # A short-lived descendant (a task's helper process) listed, then gone before it is looked at.
    gone = subprocess.Popen(["true"])
    gone.wait()
    listed = memory.descendants
    monkeypatch.setattr(memory, "descendants", lambda pid: [*listed(pid), gone.pid])
    cluster.faults.kill(supervising, target="child")
    cluster.wait_for_pod(supervising, phase="Succeeded")
    assert "child exited -9" in cluster.logs(supervising)


def test_oom_kill_takes_the_largest_process_and_the_reason_stays_oom_killed(cluster, supervising):
    cluster.faults.oom_kill(supervising)
    cluster.wait_for_pod(supervising, phase="Succeeded")
    assert (terminated(cluster, supervising)["exitCode"], terminated(cluster, supervising)["reason"]) == (
        0,
        "OOMKilled",
    )
    assert "child exited -9" in cluster.logs(supervising)


def test_kill_of_a_child_needs_one(cluster, running):
    with pytest.raises(FaultError, match="no process besides its main one"):
        cluster.faults.kill(running, target="child")
