"""Memory limits, enforced as a node's kernel and runtime do: the OOM killer takes a container's
largest process, not its PID 1, and the container's status says OOMKilled with PID 1's exit code."""

from __future__ import annotations

from tests.kubesim import Cluster
from tests.kubesim.testing import python_pod

# A main process that runs a child and exits 0 whatever became of it, as Airflow's task supervisor
# does with its task process.
SUPERVISOR = (
    "import subprocess, sys\n"
    "child = subprocess.Popen([sys.executable, '-c', {task!r}])\n"
    "print('started', child.pid, flush=True)\n"
    "print('child exited', child.wait(), flush=True)\n"
)
# Allocates (and touches) mib MiB, then waits to be killed; exits 3 if it never is.
HOG = (
    "import time\n"
    "chunks = [b'x' * (16 << 20) for _ in range({mib} // 16)]\n"
    "print('allocated', flush=True)\n"
    "time.sleep(30)\n"
    "raise SystemExit(3)"
)


def limited(name, code, memory="200Mi"):
    return python_pod(name, code, container={"resources": {"limits": {"memory": memory}}})


def terminated(pod):
    return pod["status"]["containerStatuses"][0]["state"]["terminated"]


def test_past_its_limit_a_container_loses_its_largest_process_and_pid_1_lives_on(cluster, v1):
    v1.create_namespaced_pod("default", limited("hungry", SUPERVISOR.format(task=HOG.format(mib=400))))
    pod = cluster.wait_for_pod("hungry", phase="Succeeded", timeout=30)
    # The real node's report: the supervisor exited 0 after its child was killed.
    assert (terminated(pod)["exitCode"], terminated(pod)["reason"]) == (0, "OOMKilled")
    assert "child exited -9" in cluster.logs("hungry")


def test_pages_a_forked_child_shares_with_its_parent_are_charged_once(cluster, v1):
    # 150 MiB in the parent, shared with a forked child: resident sizes sum to ~300 MiB, the
    # cgroup is charged ~150 MiB, under the 250Mi limit.
    code = (
        "import os, time\n"
        "data = b'x' * (150 << 20)\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    time.sleep(1.5)\n"
        "    os._exit(0)\n"
        "print('child exited', os.waitpid(pid, 0)[1], flush=True)\n"
    )
    v1.create_namespaced_pod("default", limited("sharing", code, memory="250Mi"))
    pod = cluster.wait_for_pod("sharing", phase="Succeeded", timeout=30)
    assert (terminated(pod)["exitCode"], terminated(pod)["reason"]) == (0, "Completed")
    assert "child exited 0" in cluster.logs("sharing")


def test_a_single_process_past_its_limit_is_pid_1_killed(cluster, v1):
    v1.create_namespaced_pod("default", limited("alone", HOG.format(mib=400)))
    pod = cluster.wait_for_pod("alone", phase="Failed", timeout=30)
    assert (terminated(pod)["exitCode"], terminated(pod)["reason"]) == (137, "OOMKilled")


def test_with_memory_oom_group_the_whole_container_is_killed(tmp_path):
    """cgroup v2 nodes, Kubernetes >= 1.28: the kubelet sets memory.oom.group on containers."""
    with Cluster(workdir=tmp_path, oom_group_kill=True) as cluster:
        cluster.core_v1().create_namespaced_pod(
            "default", limited("grouped", SUPERVISOR.format(task=HOG.format(mib=400)))
        )
        pod = cluster.wait_for_pod("grouped", phase="Failed", timeout=30)
        assert (terminated(pod)["exitCode"], terminated(pod)["reason"]) == (137, "OOMKilled")
        assert "child exited" not in cluster.logs("grouped")
