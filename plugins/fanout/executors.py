"""fanout's KubernetesExecutor: when a worker pod fails, say why in words a user understands.

The stock executor reports a failed pod as "Pod failed because of None" whenever the pod itself
has no reason, which is the case for the most common failure, an OOMKilled container: the reason
sits in the container status (apache/airflow#73164). ``FanoutKubernetesExecutor`` turns the
failure details the executor's watcher already collected into one sentence (what happened, the
memory limit it hit, what to do) and puts it where users look:

- the task instance's **note** (shown on the task instance in the UI and in the REST API), one
  line per failed try, e.g. "Try 1: worker pod airflow/fanout-train-... ran out of memory ...";
- the executor event's info, which the scheduler writes to the task instance's **audit log**
  ("state mismatch" event) and passes to failure callbacks as their message.

Pods that fail before the task started are requeued without spending a retry by the provider
itself (``[kubernetes_executor] pod_launch_failure_retries``, apache/airflow#69052); such a
failure never reaches the scheduler, so nothing is explained or noted for it.

Configure it by module path, everything else as for the KubernetesExecutor::

    [core]
    executor = fanout.executors.FanoutKubernetesExecutor

Airflow puts ``[core] plugins_folder`` on ``sys.path`` before it loads executors, so the fanout
image (plugins in /opt/airflow/plugins) and the local stack (PYTHONPATH=plugins) both find it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.providers.cncf.kubernetes.executors.kubernetes_executor import KubernetesExecutor
from airflow.utils.session import NEW_SESSION, provide_session
from airflow.utils.state import TaskInstanceState
from kubernetes.client.rest import ApiException
from sqlalchemy import select

from fanout.pods import resolve_executor_config

if TYPE_CHECKING:
    from airflow.models.taskinstancekey import TaskInstanceKey
    from airflow.providers.cncf.kubernetes.executors.kubernetes_executor_types import (
        FailureDetails,
        KubernetesResults,
    )
    from sqlalchemy.orm import Session

NOTE_LIMIT = 1000  # task_instance_note.content is a VARCHAR(1000)
SIGNALS = {137: "SIGKILL", 143: "SIGTERM"}


def explain_pod_failure(
    pod_name: str,
    namespace: str,
    details: FailureDetails | None,
    memory_limit: str | None = None,
) -> str:
    """One sentence on why a worker pod failed, from the watcher's failure details."""
    pod = f"worker pod {namespace}/{pod_name}"
    if not details:
        # The watcher reports a running pod that vanished (deleted, drained) without details.
        return (
            f"The {pod} was deleted while the task ran (by a user, a node drain or a scale-down); "
            "the task was stopped from outside and did not finish."
        )
    container = details.get("container_name") or "base"
    reason = details.get("container_reason")
    exit_code = details.get("exit_code")
    pod_reason = details.get("pod_reason")
    pod_message = (details.get("pod_message") or "").strip()
    container_message = (details.get("container_message") or "").strip()

    if reason == "OOMKilled":
        limit = f" of {memory_limit}" if memory_limit else ""
        return (
            f"The {pod} ran out of memory: container '{container}' used more than its memory "
            f"limit{limit}, so the kernel killed it (OOMKilled, exit code {exit_code}). A retry gets "
            "the same limit: give the task a larger size (fanout.pools.SIZES) or make it use less memory."
        )
    if pod_reason == "Evicted":
        return (
            f"The {pod} was evicted by its node ({pod_message or 'node under resource pressure'}); "
            "the task was stopped from outside and did not finish."
        )
    if pod_reason == "NodeLost" or reason == "ContainerStatusUnknown":
        return (
            f"The {pod} was lost with its node ({pod_message or 'the node stopped responding'}); "
            "the task was stopped from outside and did not finish."
        )
    if details.get("container_state") == "waiting":
        detail = f": {container_message}" if container_message else ""
        return f"The {pod} failed before container '{container}' started ({reason}{detail})."
    if exit_code in SIGNALS:
        return (
            f"The {pod} was stopped: container '{container}' was killed by {SIGNALS[exit_code]} "
            f"(exit code {exit_code}, reason {reason}) from outside the task, not for running out of "
            "memory (that shows as OOMKilled)."
        )
    if exit_code:
        detail = f": {container_message}" if container_message else ""
        return (
            f"The {pod} failed: container '{container}' exited with code {exit_code} "
            f"({reason}{detail}). The task's log shows its last steps."
        )
    return (
        f"The {pod} failed (phase {details.get('pod_status')}, reason {pod_reason}"
        f"{', ' + pod_message if pod_message else ''})."
    )


def append_note(existing: str | None, line: str) -> str:
    """The note with ``line`` added (once), kept within the column's size: newest lines win."""
    lines = [kept for kept in (existing or "").splitlines() if kept.strip()]
    if line not in lines:
        lines.append(line)
    note = "\n".join(lines)
    while len(note) > NOTE_LIMIT and len(lines) > 1:
        lines.pop(0)
        note = "\n".join(lines)
    return note[:NOTE_LIMIT]


def container_memory_limit(pod: Any, container_name: str) -> str | None:
    """The memory limit of a container of a ``V1Pod``, if it has one."""
    for container in (pod.spec.containers if pod and pod.spec else None) or []:
        if container.name == container_name and container.resources and container.resources.limits:
            return container.resources.limits.get("memory")
    return None


class FanoutKubernetesExecutor(KubernetesExecutor):
    """The KubernetesExecutor, plus task sizes made into pods and a readable reason for every failed pod."""

    def execute_async(self, key, command, queue=None, executor_config=None) -> None:
        # DAG files name a size (fanout.pools.placement), not a pod: the pod is built here, so
        # parsing never imports kubernetes and the settings are the scheduler's.
        try:
            config = resolve_executor_config(executor_config)
        except ValueError as err:  # an unknown size or a bad setting: no pod can be made
            self.log.error("Task %s: %s", key, err)
            self.fail(key=key, info=f"fanout could not size the task's pod: {err}")
            return
        super().execute_async(key, command, queue=queue, executor_config=config)

    @provide_session
    def _change_state(self, results: KubernetesResults, *, session: Session = NEW_SESSION) -> None:
        explanation = None
        if results.state == TaskInstanceState.FAILED:
            # Read before the parent may delete the pod ([kubernetes_executor] delete_worker_pods_on_failure).
            explanation = explain_pod_failure(
                results.pod_name,
                results.namespace,
                results.failure_details,
                self._memory_limit(results),
            )
        super()._change_state(results, session=session)
        reported = self.event_buffer.get(results.key)
        if explanation is None or reported is None or reported[0] != TaskInstanceState.FAILED:
            return  # not a failure, or requeued before the task started: the scheduler never sees it
        self.event_buffer[results.key] = (reported[0], explanation)
        self.log.warning("Task %s: %s", results.key, explanation)
        self._note(results.key, f"Try {results.key.try_number}: {explanation}", session)

    def end(self) -> None:
        # The pod watcher is a forked child that inherits the scheduler's SIGTERM handler, which
        # does nothing outside the main process; the parent then waits 20 s for it before killing
        # it. That is longer than a scheduler pod's grace period: the scheduler gets SIGKILLed with
        # its Job still "running", and its successor adopts none of its pods for minutes
        # ([scheduler] orphaned_tasks_check_interval). The watcher only reads: stop it at once.
        if self.kube_scheduler is not None:
            for watcher in self.kube_scheduler.kube_watchers.values():
                if watcher.is_alive():
                    watcher.kill()
        super().end()

    def _memory_limit(self, results: KubernetesResults) -> str | None:
        details = results.failure_details or {}
        if details.get("container_reason") != "OOMKilled" or self.kube_client is None:
            return None
        try:
            pod = self.kube_client.read_namespaced_pod(results.pod_name, results.namespace)
        except ApiException:
            return None  # already deleted: the explanation goes without the number
        return container_memory_limit(pod, details.get("container_name") or "base")

    def _note(self, key: TaskInstanceKey, line: str, session: Session) -> None:
        from airflow.models.taskinstance import TaskInstance

        query = select(TaskInstance).where(
            TaskInstance.dag_id == key.dag_id,
            TaskInstance.run_id == key.run_id,
            TaskInstance.task_id == key.task_id,
            TaskInstance.map_index == key.map_index,
        )
        ti = session.scalar(query)
        if ti is not None:
            ti.note = append_note(ti.note, line)
