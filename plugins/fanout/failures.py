"""Why a try's worker pod failed: one structured record and one sentence a user understands.

Several parties each know part of how a pod ended:

- the kubelet: the pod's phase and reason (``Evicted``, ``NodeLost``), its container's exit code
  and reason (``OOMKilled`` when the container's memory cgroup hit its limit, ``Error``,
  ``ContainerStatusUnknown``), or why the container never started (``ErrImagePull`` ...);
- ``fanout.taskpod``, the container's command: how the *task process* ended (its record, the last
  line of output, which the kubelet copies into the termination message);
- the executor: the node, the memory limit, and whether the task had reported its state.

``diagnose`` joins them into a ``TryFailure``; ``TryFailure.explain()`` says it in one sentence,
which ``fanout.executors`` puts in the task instance's note and audit log. The record itself is
kept on the failed pod (annotation ``fanout.io/failure``, JSON), so a later try can read what
ended the previous one (its cause, memory limit and node: what ``fanout.retries`` plans from)
even after a scheduler restart.

No Airflow or kubernetes imports: pods are read through their attributes (``V1Pod``).
"""

from __future__ import annotations

import json
import signal
from collections.abc import Collection
from dataclasses import asdict, dataclass
from typing import Any

from fanout.taskpod import read_record

FAILURE_ANNOTATION = "fanout.io/failure"
FAILURE_LABEL = "fanout.io/failure"

# Causes, as the record and the pod's label name them.
OOM_KILLED = "oom-killed"  # the task process or the whole container went past the memory limit
KILLED = "killed"  # killed by a signal, not for memory
EXITED = "exited"  # exited non-zero without the task reporting its state
UNREPORTED = "unreported"  # the pod ended normally, but the task never reported its state
EVICTED = "evicted"  # the node evicted the pod (resource pressure)
NODE_LOST = "node-lost"  # the node stopped responding
DELETED = "deleted"  # the pod was deleted while the task ran
NOT_STARTED = "not-started"  # the container never started
UNKNOWN = "unknown"
NODE_FAULTS = frozenset({EVICTED, NODE_LOST})  # causes that are the node's, whatever the task did

TASK_PROCESS = "task process"  # what was killed or exited: the task process alone ...
CONTAINER = "container"  # ... or the container's main process, and with it the whole container


@dataclass(frozen=True)
class TryFailure:
    """What ended one try's worker pod."""

    cause: str
    pod: str  # namespace/name
    node: str | None = None
    process: str | None = None  # TASK_PROCESS or CONTAINER, where that is known
    signal: str | None = None  # e.g. SIGKILL
    exit_code: int | None = None  # the container's (task process's, for TASK_PROCESS exits)
    container: str | None = None
    container_reason: str | None = None
    memory_limit: str | None = None
    message: str | None = None  # the pod's or container's own message
    try_number: int | None = None

    def blames_node(self, node_fault_exit_codes: Collection[int] = ()) -> bool:
        """Whether the node, not the task, ended the try: it evicted the pod, was lost, or the task
        process or container exited with a code the deployment marks as a node fault
        (``FANOUT_NODE_FAULT_EXIT_CODES``, e.g. a GPU health check's)."""
        if self.cause in NODE_FAULTS:
            return True
        return self.cause in (EXITED, KILLED) and self.exit_code in node_fault_exit_codes

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v is not None}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TryFailure:
        return cls(**json.loads(text))

    def explain(self) -> str:
        """One sentence on what happened, where, and what to do when retrying cannot help."""
        where = f"worker pod {self.pod}" + (f" on node {self.node}" if self.node else "")
        limit = f" {self.memory_limit}" if self.memory_limit else ""
        if self.cause == OOM_KILLED:
            # What the retry gets instead is fanout.retries' to say (the executor adds it).
            if self.process == TASK_PROCESS:
                return (
                    f"OOMKilled: the task process exceeded the pod's memory limit{limit}, so the kernel "
                    f"killed it ({where})."
                )
            return (
                f"OOMKilled: the pod's container exceeded its memory limit{limit}, so the kernel killed "
                f"it (exit code {self.exit_code}; {where})."
            )
        if self.cause == KILLED:
            if self.process == TASK_PROCESS:
                return (
                    f"The task process was killed by {self.signal}, not for memory (the pod stayed within "
                    f"its memory limit{limit}): by a user, a node agent or another process ({where})."
                )
            return (
                f"The pod's container was killed by {self.signal} (exit code {self.exit_code}, reason "
                f"{self.container_reason}) from outside the task, not for memory (that shows as "
                f"OOMKilled) ({where})."
            )
        if self.cause == EXITED:
            if self.process == TASK_PROCESS:
                return (
                    f"The task process exited with code {self.exit_code} without reporting its state "
                    f"(it crashed before Airflow could record the failure); its log shows its last steps "
                    f"({where})."
                )
            detail = f": {self.message}" if self.message else ""
            return (
                f"The pod's container '{self.container or 'base'}' exited with code {self.exit_code} "
                f"({self.container_reason}{detail}); the task's log shows its last steps ({where})."
            )
        if self.cause == UNREPORTED:
            return (
                f"The task process ended without reporting its state, although its pod completed "
                f"(container reason {self.container_reason}): it was killed or crashed ({where})."
            )
        if self.cause == EVICTED:
            return (
                f"The {where} was evicted ({self.message or 'node under resource pressure'}); the task "
                "was stopped from outside and did not finish."
            )
        if self.cause == NODE_LOST:
            return (
                f"The {where} was lost with its node ({self.message or 'the node stopped responding'}); "
                "the task was stopped from outside and did not finish."
            )
        if self.cause == DELETED:
            return (
                f"The {where} was deleted while the task ran (by a user, a node drain or a scale-down); "
                "the task was stopped from outside and did not finish."
            )
        if self.cause == NOT_STARTED:
            detail = f": {self.message}" if self.message else ""
            return (
                f"The {where} failed before container '{self.container or 'base'}' started "
                f"({self.container_reason}{detail})."
            )
        return f"The {where} failed ({self.message or 'no reason given'})."


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def pod_end(pod: Any) -> dict[str, Any] | None:
    """The pod's end as the executor's watcher reports a failure (``FailureDetails`` keys), for
    any phase; None without a pod. The first container with a status is the task's (``base``)."""
    status = getattr(pod, "status", None)
    if status is None:
        return None
    details: dict[str, Any] = {
        "pod_status": status.phase,
        "pod_reason": status.reason,
        "pod_message": status.message,
    }
    for container in status.container_statuses or []:
        state = container.state
        if state is not None and state.terminated is not None:
            terminated = state.terminated
            details.update(
                container_name=container.name,
                container_state="terminated",
                container_reason=terminated.reason,
                container_message=terminated.message,
                exit_code=terminated.exit_code,
            )
        elif state is not None and state.waiting is not None:
            details.update(
                container_name=container.name,
                container_state="waiting",
                container_reason=state.waiting.reason,
                container_message=state.waiting.message,
            )
        break
    return details


def memory_limit(pod: Any, container_name: str | None) -> str | None:
    """The memory limit of a pod's container (the first one if unnamed), if it has one."""
    spec = getattr(pod, "spec", None)
    for container in (spec.containers if spec else None) or []:
        if container_name in (None, container.name):
            resources = container.resources
            return (resources.limits or {}).get("memory") if resources else None
    return None


def diagnose(
    details: dict[str, Any] | None,
    *,
    pod: str,
    node: str | None = None,
    memory_limit: str | None = None,
    reported: bool = True,
    try_number: int | None = None,
) -> TryFailure:
    """What ended a try, from the pod's end (``pod_end`` or the watcher's failure details).

    ``details`` None: the pod vanished while running (the watcher saw it deleted).
    ``reported`` False: the task never reported its state (its pod ended all the same).
    """
    if not details:
        return TryFailure(DELETED, pod, node, memory_limit=memory_limit, try_number=try_number)
    reason = details.get("container_reason")
    exit_code = details.get("exit_code")
    message = (details.get("container_message") or "").strip() or None
    pod_message = (details.get("pod_message") or "").strip() or None
    task_end = read_record(message)
    common = {
        "pod": pod,
        "node": node,
        "container": details.get("container_name"),
        "container_reason": reason,
        "memory_limit": memory_limit,
        "try_number": try_number,
    }
    if task_end is not None:
        message = None  # the termination message is the output's tail, not a message for users
    if details.get("pod_reason") == "Evicted":
        return TryFailure(EVICTED, message=pod_message, exit_code=exit_code, **common)
    if details.get("pod_reason") == "NodeLost" or reason == "ContainerStatusUnknown":
        return TryFailure(NODE_LOST, message=pod_message, exit_code=exit_code, **common)
    if details.get("container_state") == "waiting":
        return TryFailure(NOT_STARTED, message=message, **common)
    if reason == "OOMKilled":
        # The kernel killed a process of the container's cgroup. The task process alone when it
        # says so, or when the container still exited 0 (its supervisor lived on); else the container.
        alone = task_end is not None or exit_code == 0
        return TryFailure(
            OOM_KILLED,
            process=TASK_PROCESS if alone else CONTAINER,
            signal="SIGKILL",
            exit_code=exit_code,
            **common,
        )
    if task_end is not None:
        if task_end.signal is not None:
            return TryFailure(
                KILLED, process=TASK_PROCESS, signal=task_end.signal.name, exit_code=exit_code, **common
            )
        return TryFailure(EXITED, process=TASK_PROCESS, exit_code=task_end.exit_code, **common)
    if exit_code and exit_code > 128 and signal_name(exit_code - 128).startswith("SIG"):
        return TryFailure(
            KILLED, process=CONTAINER, signal=signal_name(exit_code - 128), exit_code=exit_code, **common
        )
    if exit_code:
        return TryFailure(EXITED, process=CONTAINER, exit_code=exit_code, message=message, **common)
    if not reported:
        return TryFailure(UNREPORTED, exit_code=exit_code, **common)
    return TryFailure(UNKNOWN, message=pod_message or message, exit_code=exit_code, **common)
