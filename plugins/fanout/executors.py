"""fanout's KubernetesExecutor: tasks sized to the deployment's nodes, every failed pod explained, and
retries that learn from it.

What ``FanoutKubernetesExecutor`` adds to the provider's KubernetesExecutor:

- **Sizes become pods when the pod is made** (``execute_async``): a task names a size
  (``fanout.pools.placement``); ``fanout.pods`` turns it into the pod override, with this
  deployment's ``FANOUT_TASK_SIZES``. A size no node of its pool could hold (requests above every
  node's allocatable) fails the task at once, saying what it asks and what the nodes offer,
  instead of a pod Pending until ``task_queued_timeout``; as an unknown size does. Neither spends a
  retry: the executor lowers the try's ``max_tries`` so the scheduler fails it for good.
- **A task process killed inside its pod ends the try within seconds.** The pod's command
  (``fanout.taskpod``) fails the pod when the supervisor's task process was killed (the kernel's
  OOM killer, ``kill -9``) or exited without reporting; a pod that still ``Succeeded`` while its
  task instance is ``running`` (another image's command; a supervisor stopped by SIGTERM) is
  treated the same way. Without this, Airflow 3.3.2 leaves such a try ``running`` until the
  heartbeat timeout (apache/airflow#70572) and deletes the pod as a success.
- **Every failed pod is explained** (``fanout.failures``): one sentence, e.g. "OOMKilled: the task
  process exceeded the pod's memory limit 768Mi, ..." instead of "Pod failed because of None"
  (apache/airflow#73164), in:

  - the task instance's **note** (UI, REST API), one line per failed try: "Try 1: ...";
  - the **audit log**: an event ``worker pod failed`` per failed pod, and the executor event's info,
    which the scheduler adds to its own ``state mismatch`` event and passes to failure callbacks;
  - the kept pod itself: label and annotation ``fanout.io/failure`` (the cause; the structured
    record), where a later try can read what ended this one. The pod is also labelled
    ``airflow_executor_done=True``, so restarted schedulers stop trying to adopt it.
- **A retry learns from the failed tries** (``fanout.retries``): after an OOM kill its pod gets more
  memory (and an OOM kill at the most a task may get ends the task without spending retries); after
  a node fault it keeps off that node. The earlier tries' records come from this executor's memory,
  or after a scheduler restart from their kept pods; the note says what the retry got ("Try 2: retry
  with 1152Mi of memory after OOMKilled at 768Mi in try 1 ..."), as does a ``retry pod changed``
  audit event.

Pods that fail before the task started are requeued without spending a retry by the provider
itself (``[kubernetes_executor] pod_launch_failure_retries``, apache/airflow#69052); such a
failure never reaches the scheduler, so nothing is explained or noted for it.

Configure it by module path, everything else as for the KubernetesExecutor::

    [core]
    executor = fanout.executors.FanoutKubernetesExecutor

Airflow puts ``[core] plugins_folder`` on ``sys.path`` before it loads executors, so the fanout
image (plugins in /opt/airflow/plugins) and the local stack (PYTHONPATH=plugins) both find it.
The scheduler's service account needs ``get``/``list`` on nodes for the size check (helm/fanout
grants it); without it the check is skipped with one warning.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from airflow.models.log import Log
from airflow.providers.cncf.kubernetes.executors.kubernetes_executor import KubernetesExecutor
from airflow.providers.cncf.kubernetes.executors.kubernetes_executor_types import POD_EXECUTOR_DONE_KEY
from airflow.providers.cncf.kubernetes.pod_generator import make_safe_label_value
from airflow.utils.session import NEW_SESSION, create_session, provide_session
from airflow.utils.state import TaskInstanceState
from kubernetes.client.rest import ApiException

from fanout.failures import (
    FAILURE_ANNOTATION,
    FAILURE_LABEL,
    OOM_KILLED,
    TryFailure,
    diagnose,
    memory_limit,
    pod_end,
)
from fanout.notes import note_try, task_instance
from fanout.pods import SIZE_LABEL, resolve_executor_config, size_fit_problem
from fanout.pools import SIZE_KEY, SIZES
from fanout.retries import after_oom, plan_retry

if TYPE_CHECKING:
    from airflow.models.taskinstancekey import TaskInstanceKey
    from airflow.providers.cncf.kubernetes.executors.kubernetes_executor_types import KubernetesResults
    from sqlalchemy.orm import Session

POD_FAILED_EVENT = "worker pod failed"
POD_NOT_CREATED_EVENT = "worker pod not created"
RETRY_CHANGED_EVENT = "retry pod changed"
NODES_TTL_S = 30.0  # how long a list of nodes serves the size check
RETRY_NODES_TTL_S = 2.0  # ... and a retry that learns from earlier failures
FAILED_TRIES_KEPT = 10_000  # task instances whose failed tries the executor remembers


class FanoutKubernetesExecutor(KubernetesExecutor):
    """The KubernetesExecutor, plus task sizes made into pods and a readable reason for every failed try."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._nodes: tuple[float, list[Any] | None] = (float("-inf"), None)
        self.failed_tries: dict[tuple, list[TryFailure]] = {}
        """Per task instance (dag, task, run, map index): what ended each failed try, oldest first."""

    # --- making pods -----------------------------------------------------------------------------------

    def execute_async(self, key, command, queue=None, executor_config=None) -> None:
        # DAG files name a size (fanout.pools.placement), not a pod: the pod is built here, so
        # parsing never imports kubernetes and the settings are the scheduler's. A retry's pod
        # also answers what ended the earlier tries (fanout.retries): more memory, another node.
        size = (executor_config or {}).get(SIZE_KEY)
        plan = None
        try:
            nodes = self._nodes_now() if size else None
            if size and key.try_number > 1 and (failures := self._failures_before(key)):
                # Which nodes are Ready now decides where a retry may go: not a list 30 s old.
                nodes = self._nodes_now(max_age=RETRY_NODES_TTL_S)
                plan = plan_retry(size, key.try_number, failures, nodes)
            config = resolve_executor_config(executor_config, plan)
            memory = plan.memory if plan else None
            problem = size_fit_problem(size, nodes, memory=memory) if size and nodes else None
        except ValueError as err:  # an unknown size or a bad setting: no pod can be made
            problem = f"fanout could not size the task's pod: {err}"
        if problem:
            self.log.error("Task %s: %s", key, problem)
            self._fail_without_retry(key, problem)
            return
        if plan is not None and plan.changes:
            note = plan.note()
            self.log.info("Task %s: %s", key, note)
            with create_session() as session:
                note_try(key, f"Try {key.try_number}: {note}", session)
                session.add(Log(event=RETRY_CHANGED_EVENT, task_instance=key, extra=note))
        super().execute_async(key, command, queue=queue, executor_config=config)

    def _nodes_now(self, max_age: float = NODES_TTL_S) -> list[Any] | None:
        """The cluster's nodes, listed at most every ``max_age`` seconds; None when they cannot be read."""
        listed_at, nodes = self._nodes
        if time.monotonic() - listed_at < max_age or self.kube_client is None:
            return nodes
        try:
            nodes = self.kube_client.list_node().items
        except Exception as err:  # forbidden, or the API unreachable: never fail a task for it
            if nodes is None and listed_at == float("-inf"):  # say it once, not per task
                detail = f"{err.status} {err.reason}" if isinstance(err, ApiException) else repr(err)
                self.log.warning(
                    "Cannot list nodes (%s): task sizes are not checked against the nodes. "
                    "Grant the scheduler get/list on nodes (helm/fanout rbac.create).",
                    detail,
                )
            nodes = None
        self._nodes = (time.monotonic(), nodes)
        return nodes

    def _fail_without_retry(self, key: TaskInstanceKey, message: str) -> None:
        """Fail the try for good: retrying cannot fix a size (the next try gets the same pod)."""
        with create_session() as session:
            note_try(key, f"Try {key.try_number}: {message}", session, final=True)
            session.add(Log(event=POD_NOT_CREATED_EVENT, task_instance=key, extra=message))
        self.fail(key=key, info=message)

    # --- pods that ended -------------------------------------------------------------------------------

    @provide_session
    def _change_state(self, results: KubernetesResults, *, session: Session = NEW_SESSION) -> None:
        failure = pod = None
        if results.key in self.running and results.state in (TaskInstanceState.FAILED, None):
            # Before the parent may delete the pod ([kubernetes_executor] delete_worker_pods_on_failure).
            failure, results, pod = self._examine(results, session)
        super()._change_state(results, session=session)
        reported = self.event_buffer.get(results.key)
        if failure is None or reported is None or reported[0] != TaskInstanceState.FAILED:
            return  # not a failure, or requeued before the task started: the scheduler never sees it
        key = results.key
        ti = task_instance(key, session)
        explanation, final = failure.explain(), False
        size = (pod.metadata.labels or {}).get(SIZE_LABEL) if pod is not None and pod.metadata else None
        if failure.cause == OOM_KILLED and size in SIZES:
            retries_left = ti is not None and ti.try_number <= ti.max_tries
            consequence, final = after_oom(size, failure, self._nodes_now(), retries_left=retries_left)
            explanation = f"{explanation} {consequence}".strip()
        self.event_buffer[key] = (TaskInstanceState.FAILED, explanation)
        self.log.warning("Task %s: %s", key, explanation)
        self._remember(key, failure)
        note_try(key, f"Try {key.try_number}: {explanation}", session, final=final)
        session.add(Log(event=POD_FAILED_EVENT, task_instance=key, extra=explanation))
        if not (self.kube_config.delete_worker_pods and self.kube_config.delete_worker_pods_on_failure):
            self._label_kept_pod(results.pod_name, results.namespace, failure)

    def _examine(
        self, results: KubernetesResults, session: Session
    ) -> tuple[TryFailure | None, KubernetesResults, Any]:
        """What ended the pod, if its try failed (and the pod, as read then); a pod that Succeeded
        while its task instance is still running is a failed try too (its task process died
        without reporting)."""
        pod = self._read_pod(results.pod_name, results.namespace)
        reported = True
        details = results.failure_details
        if results.state is None:
            ti = task_instance(results.key, session)
            # The task reported its end (success, deferral, up_for_retry ...) -- and, with a retry
            # delay shorter than the pod's exit delay, its next try may be running already.
            if ti is None or ti.state != TaskInstanceState.RUNNING or ti.try_number != results.key.try_number:
                return None, results, pod
            reported = False
            details = pod_end(pod)
            results = results._replace(state=TaskInstanceState.FAILED, failure_details=details)
        elif pod is not None:
            details = pod_end(pod) or details
        container = (details or {}).get("container_name")
        failure = diagnose(
            details,
            pod=f"{results.namespace}/{results.pod_name}",
            node=pod.spec.node_name if pod is not None and pod.spec else None,
            memory_limit=memory_limit(pod, container) if pod is not None else None,
            reported=reported,
            try_number=results.key.try_number,
        )
        return failure, results, pod

    def _remember(self, key: TaskInstanceKey, failure: TryFailure) -> None:
        ti = (key.dag_id, key.task_id, key.run_id, key.map_index)
        self.failed_tries.setdefault(ti, []).append(failure)
        while len(self.failed_tries) > FAILED_TRIES_KEPT:
            del self.failed_tries[next(iter(self.failed_tries))]  # the longest-known task instance

    def _failures_before(self, key: TaskInstanceKey) -> list[TryFailure]:
        """What ended the earlier tries of the key's task instance, as far as this executor saw
        them, or -- after a scheduler restart -- as their kept pods record it."""
        known = {
            f.try_number: f
            for f in self.failed_tries.get((key.dag_id, key.task_id, key.run_id, key.map_index), [])
        }
        if any(number not in known for number in range(1, key.try_number)):
            for failure in self._failures_on_kept_pods(key):
                known.setdefault(failure.try_number, failure)
        return [known[number] for number in sorted(n for n in known if n is not None and n < key.try_number)]

    def _failures_on_kept_pods(self, key: TaskInstanceKey) -> list[TryFailure]:
        """The failure records of the task instance's failed pods that are still there."""
        if self.kube_client is None:
            return []
        selector = {
            "dag_id": make_safe_label_value(key.dag_id),
            "task_id": make_safe_label_value(key.task_id),
            "run_id": make_safe_label_value(key.run_id),
            "kubernetes_executor": "True",
        }
        terms = [f"{name}={value}" for name, value in selector.items()]
        terms.append(f"map_index={key.map_index}" if key.map_index >= 0 else "!map_index")
        terms.append(FAILURE_LABEL)
        try:
            pods = self.kube_client.list_namespaced_pod(
                self.kube_config.kube_namespace, label_selector=",".join(terms)
            ).items
        except ApiException as err:
            self.log.warning(
                "Cannot read the failed pods of %s (%s): a retry learns nothing", key, err.reason
            )
            return []
        failures = []
        for pod in pods:
            annotations = pod.metadata.annotations or {}
            same = (annotations.get("dag_id"), annotations.get("task_id"), annotations.get("run_id")) == (
                key.dag_id,
                key.task_id,
                key.run_id,
            )  # labels may be shortened with a hash; annotations are exact
            if not same or FAILURE_ANNOTATION not in annotations:
                continue
            try:
                failure = TryFailure.from_json(annotations[FAILURE_ANNOTATION])
                if failure.try_number is None:
                    failure = replace(failure, try_number=int(annotations["try_number"]))
            except (ValueError, TypeError, KeyError):
                continue  # not a record this version of fanout wrote
            failures.append(failure)
        return failures

    def _read_pod(self, name: str, namespace: str) -> Any:
        if self.kube_client is None:
            return None
        try:
            return self.kube_client.read_namespaced_pod(name, namespace)
        except ApiException:
            return None  # deleted already: the explanation goes without node and limit

    def _label_kept_pod(self, name: str, namespace: str, failure: TryFailure) -> None:
        body = {
            "metadata": {
                "labels": {FAILURE_LABEL: failure.cause, POD_EXECUTOR_DONE_KEY: "True"},
                "annotations": {FAILURE_ANNOTATION: failure.to_json()},
            }
        }
        try:
            self.kube_client.patch_namespaced_pod(name, namespace, body)
        except ApiException as err:
            self.log.warning("Could not label failed pod %s/%s: %s", namespace, name, err.reason)

    # --- shutdown ------------------------------------------------------------------------------------

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
