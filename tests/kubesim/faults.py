"""Fault injection, callable from tests: what goes wrong with pods and nodes on a real cluster.

Each fault leaves the API in the state a real cluster shows afterwards:

- ``kill``: a signal to the container's main process (``kill -9`` of PID 1: exit 137, reason Error,
  Failed), or with ``target="child"`` to its largest descendant (in an Airflow pod, the supervisor's
  task process): the main process lives on and decides the container's exit.
- ``oom_kill``: what the kernel does when the container passes its memory limit (see memory.py): its
  largest process is SIGKILLed (every process with the cluster's ``oom_group_kill``); the container
  ends with reason OOMKilled and its main process's exit code (137 if that was the one killed).
- ``evict``: kubelet node-pressure eviction: container killed, pod Failed with reason Evicted and a
  DisruptionTarget condition; works before the container started (it stays waiting) or after.
- ``evict_via_api``: the Eviction API (``kubectl drain``): a graceful delete.
- ``delete``: an API delete, graceful or forced (``grace_period_seconds=0``), before or after start.
- ``node_not_ready``: the node stops reporting: Ready=Unknown, unreachable taints, its kubelet stops,
  its pods' processes die and its pods are marked Failed (reason NodeLost, containers
  ContainerStatusUnknown), as the node lifecycle controller and pod GC leave them. ``node_ready`` undoes it.
- ``cordon`` / ``uncordon``: spec.unschedulable, as ``kubectl cordon`` does.

Faults run on the harness's event loop, so they never race the kubelet or the scheduler.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from typing import TYPE_CHECKING, Any, Literal

import psutil

from tests.kubesim import memory
from tests.kubesim.api import delete_pod
from tests.kubesim.kubelet import exit_code_of, kill_container_processes
from tests.kubesim.objects import event_object, set_condition, timestamp

if TYPE_CHECKING:
    from tests.kubesim.cluster import Cluster

UNREACHABLE_TAINTS = [
    {"key": "node.kubernetes.io/unreachable", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"},
]
UNSCHEDULABLE_TAINT = {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}


class FaultError(RuntimeError):
    """The fault cannot apply to the pod or node in its current state."""


class Faults:
    def __init__(self, cluster: Cluster):
        self.cluster = cluster

    # --- pods ------------------------------------------------------------------------------------------

    def kill(
        self,
        pod: str,
        namespace: str | None = None,
        sig: int = signal.SIGKILL,
        target: Literal["main", "child"] = "main",
    ) -> int:
        """Send ``sig`` to the main process (the runtime then kills the rest of the container when it
        dies) or to its largest descendant (``child``). Returns the pid signalled."""

        def run() -> int:
            container = self._running_container(pod, namespace)
            if target == "main":
                container.process.send_signal(sig)
                return container.process.pid
            # The tree changes while we look: a short-lived descendant may exit between the listing
            # and the signal. Pick again among those still there.
            for _ in range(5):
                sizes = {}
                for pid in memory.descendants(container.process.pid):
                    if pid != container.process.pid:
                        with contextlib.suppress(psutil.NoSuchProcess):
                            sizes[pid] = memory.resident(psutil.Process(pid))
                if not sizes:
                    raise FaultError(f"the container of pod {pod} has no process besides its main one")
                victim = max(sizes, key=sizes.__getitem__)
                with contextlib.suppress(psutil.NoSuchProcess):
                    psutil.Process(victim).send_signal(sig)
                    return victim
            raise FaultError(f"the processes of pod {pod} kept exiting before they could be signalled")

        return self.cluster.call(run)

    def oom_kill(self, pod: str, namespace: str | None = None) -> None:
        """As the kernel on a memory-limit breach, whatever the container's actual use."""

        def run() -> None:
            self.cluster.kubelet.oom_kill(self._running_container(pod, namespace))

        self.cluster.call(run)

    def evict(
        self, pod: str, namespace: str | None = None, message: str = "The node was low on resource: memory. "
    ) -> None:
        def run() -> None:
            obj = self._bound_pod(pod, namespace)
            container = self._stop_silently(obj)

            def evicted(current: dict[str, Any]) -> None:
                status = current["status"]
                status.update(phase="Failed", reason="Evicted", message=message)
                set_condition(status, "DisruptionTarget", "True", "TerminationByKubelet", message)
                set_condition(status, "Ready", "False", "PodFailed")
                set_condition(status, "ContainersReady", "False", "PodFailed")
                if container is not None:
                    self._mark_terminated(current, container, "Error")

            self.cluster.store.update("Pod", obj["metadata"]["namespace"], obj["metadata"]["name"], evicted)
            self.cluster.store.create(
                event_object(
                    obj,
                    reason="Evicted",
                    message=message,
                    event_type="Warning",
                    component="kubelet",
                    host=obj["spec"]["nodeName"],
                )
            )

        self.cluster.call(run)

    def evict_via_api(self, pod: str, namespace: str | None = None) -> None:
        def run() -> None:
            obj = self.cluster.store.get("Pod", namespace or self.cluster.namespace, pod)
            meta = obj["metadata"]
            self.cluster.store.update(
                "Pod",
                meta["namespace"],
                meta["name"],
                lambda p: set_condition(
                    p["status"], "DisruptionTarget", "True", "EvictionByEvictionAPI", "Eviction API: evicting"
                ),
            )
            delete_pod(self.cluster.store, meta["namespace"], meta["name"], {})

        self.cluster.call(run)

    def delete(self, pod: str, namespace: str | None = None, grace_period_seconds: int | None = None) -> None:
        options = {} if grace_period_seconds is None else {"gracePeriodSeconds": grace_period_seconds}
        self.cluster.call(
            lambda: delete_pod(self.cluster.store, namespace or self.cluster.namespace, pod, options)
        )

    # --- nodes -----------------------------------------------------------------------------------------

    def node_not_ready(self, node: str) -> None:
        def run() -> None:
            store = self.cluster.store
            self.cluster.kubelet.node_down(node)

            def unreachable(obj: dict[str, Any]) -> None:
                set_condition(
                    obj["status"],
                    "Ready",
                    "Unknown",
                    "NodeStatusUnknown",
                    "Kubelet stopped posting node status.",
                )
                taints = [t for t in obj["spec"].get("taints") or [] if t not in UNREACHABLE_TAINTS]
                obj["spec"]["taints"] = taints + [{**t, "timeAdded": timestamp()} for t in UNREACHABLE_TAINTS]

            node_obj = store.update("Node", None, node, unreachable)
            store.create(
                event_object(
                    node_obj,
                    reason="NodeNotReady",
                    message=f"Node {node} status is now: NodeNotReady",
                    component="node-controller",
                )
            )
            pods, _ = store.list("Pod", where=lambda p: p["spec"].get("nodeName") == node)
            for obj in pods:
                if obj["status"].get("phase") in ("Succeeded", "Failed"):
                    continue
                container = self._stop_silently(obj)
                message = f"Node {node} which was running pod {obj['metadata']['name']} is unresponsive"

                def lost(current: dict[str, Any], container: Any = container, message: str = message) -> None:
                    status = current["status"]
                    status.update(phase="Failed", reason="NodeLost", message=message)
                    set_condition(status, "Ready", "False", "PodFailed")
                    if container is not None:
                        self._mark_terminated(
                            current,
                            container,
                            "ContainerStatusUnknown",
                            exit_code=137,
                            message="The container could not be located when the pod was terminated",
                        )

                store.update("Pod", obj["metadata"]["namespace"], obj["metadata"]["name"], lost)

        self.cluster.call(run)

    def node_ready(self, node: str) -> None:
        def run() -> None:
            def ready(obj: dict[str, Any]) -> None:
                set_condition(
                    obj["status"], "Ready", "True", "KubeletReady", "kubelet is posting ready status"
                )
                taints = [
                    t
                    for t in obj["spec"].get("taints") or []
                    if {"key": t["key"], "effect": t["effect"]} not in UNREACHABLE_TAINTS
                ]
                obj["spec"]["taints"] = taints

            self.cluster.store.update("Node", None, node, ready)
            self.cluster.kubelet.node_up(node)

        self.cluster.call(run)

    def cordon(self, node: str) -> None:
        self._set_unschedulable(node, True)

    def uncordon(self, node: str) -> None:
        self._set_unschedulable(node, False)

    def _set_unschedulable(self, node: str, unschedulable: bool) -> None:
        def change(obj: dict[str, Any]) -> None:
            taints = [
                t for t in obj["spec"].get("taints") or [] if t.get("key") != UNSCHEDULABLE_TAINT["key"]
            ]
            if unschedulable:
                obj["spec"]["unschedulable"] = True
                taints.append({**UNSCHEDULABLE_TAINT, "timeAdded": timestamp()})
            else:
                obj["spec"].pop("unschedulable", None)
            obj["spec"]["taints"] = taints

        self.cluster.call(lambda: self.cluster.store.update("Node", None, node, change))

    # --- helpers (on the loop) -------------------------------------------------------------------------

    def _running_container(self, pod: str, namespace: str | None) -> Any:
        obj = self.cluster.store.get("Pod", namespace or self.cluster.namespace, pod)
        container = self.cluster.kubelet.containers.get(obj["metadata"]["uid"])
        if container is None or container.exit_code is not None or container.process.poll() is not None:
            raise FaultError(f"pod {pod} has no running container (phase {obj['status'].get('phase')})")
        return container

    def _bound_pod(self, pod: str, namespace: str | None) -> dict[str, Any]:
        obj = self.cluster.store.get("Pod", namespace or self.cluster.namespace, pod)
        if not obj["spec"].get("nodeName"):
            raise FaultError(f"pod {pod} is not bound to a node: a kubelet cannot evict it")
        if obj["status"].get("phase") in ("Succeeded", "Failed"):
            raise FaultError(f"pod {pod} already finished ({obj['status']['phase']})")
        return obj

    def _stop_silently(self, pod: dict[str, Any]) -> Any:
        """Kill the pod's container and take it from the kubelet, which will not report it: the fault does."""
        uid = pod["metadata"]["uid"]
        kubelet = self.cluster.kubelet
        kubelet.forget_pending(uid)
        container = kubelet.containers.pop(uid, None)
        if container is None:
            return None
        if container.exit_code is None:
            kill_container_processes(container.container_id, container.process)
            try:
                container.process.wait(timeout=5)
            except subprocess.TimeoutExpired as error:
                raise FaultError(f"container of {pod['metadata']['name']} survived SIGKILL") from error
            container.exit_code = exit_code_of(container.process.returncode)
            container.finished_at = time.time()
        return container

    @staticmethod
    def _mark_terminated(
        pod: dict[str, Any],
        container: Any,
        reason: str,
        exit_code: int | None = None,
        message: str | None = None,
    ) -> None:
        terminated = {
            "exitCode": exit_code if exit_code is not None else container.exit_code,
            "reason": reason,
            "startedAt": timestamp(container.started_at),
            "finishedAt": timestamp(container.finished_at),
            "containerID": container.container_id,
        }
        if message:
            terminated["message"] = message
        for status in pod["status"].get("containerStatuses") or []:
            if status["name"] == container.name:
                status.update(state={"terminated": terminated}, ready=False, started=False)
