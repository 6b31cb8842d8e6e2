"""What a retried try learns from the tries of its task that failed before it.

Airflow retries a failed task with the same pod on whatever node the Kubernetes scheduler picks.
Two kinds of failure would then simply happen again, so a retry changes its pod instead:

- **OOM kill -> more memory.** After a try was OOM-killed at limit L, the next gets memory request
  and limit ``L x FANOUT_OOM_MEMORY_FACTOR`` (1.5 by default; rounded up to a whole Mi), at most
  the size's ``max_memory`` (3x its memory unless ``FANOUT_TASK_SIZES`` sets it) and at most the
  allocatable memory of the largest node of its pool that can hold the rest of the pod. The raise
  is kept by later tries of the task instance whatever ends them (a smaller limit was shown too
  small). When an OOM-killed try already had that most, no retry can get more: the task fails at
  once (``after_oom``) instead of spending its retries on the same kill.
- **Node fault -> another node.** After a try failed because of its node -- the kubelet evicted
  the pod, the node was lost (NotReady, ``NodeLost``), or the task process or container exited
  with a code of ``FANOUT_NODE_FAULT_EXIT_CODES`` (a GPU health check's, say) -- later tries keep
  off that node: a required node anti-affinity (by node name) when another Ready, schedulable node
  of the pool can hold the pod, else a preferred one (a one-node pool: the retry still runs there
  rather than wait for a node that may never come).

Other failures (an exception in the task, a SIGKILL from a user, a deleted pod) change nothing.

``plan_retry`` works from the failure records ``fanout.failures`` keeps per try (in the executor's
memory and on each kept failed pod, so a restarted scheduler reads them back) and the nodes as the
API lists them. Used by ``fanout.executors.FanoutKubernetesExecutor`` when it makes a try's pod.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from kubernetes.client import models as k8s
from kubernetes.utils import parse_quantity

from fanout.failures import OOM_KILLED, TryFailure
from fanout.pods import allocatable, can_hold, pod_requests, pool_nodes
from fanout.pools import pool_of, size_of
from fanout.settings import Settings, format_bytes, settings

MI = 1 << 20
_CAUSE_WORDS = {"evicted": "evicted", "node-lost": "node lost"}


@dataclass(frozen=True)
class RetryPlan:
    """What one try's pod gets because of the tries that failed before it."""

    try_number: int
    memory: str | None = None
    """Memory request and limit, raised after an OOM kill; None: the size's own."""
    oom: TryFailure | None = None
    """The OOM kill the raise answers (the one with the largest limit)."""
    factor: float = 1.0
    ceiling: str | None = None
    """The most memory the task may get ..."""
    ceiling_by: str | None = None
    """... and what sets it, e.g. "the bookkeeping size's max_memory"."""
    avoid: tuple[str, ...] = ()
    """Nodes to keep off, where earlier tries failed because of their node."""
    avoid_required: bool = True
    """False: only preferred (no other node of the pool could hold the pod)."""
    node_faults: tuple[TryFailure, ...] = field(default=())

    @property
    def changes(self) -> bool:
        return self.memory is not None or bool(self.avoid)

    def note(self) -> str:
        """One line for the task instance's note, e.g. "retry with 1152Mi of memory after OOMKilled at
        768Mi in try 1 (x1.5, at most 2304Mi)"."""
        parts = []
        if self.memory is not None and self.oom is not None:
            capped = f", capped by {self.ceiling_by}" if self.memory == self.ceiling else ""
            parts.append(
                f"retry with {self.memory} of memory after OOMKilled at {self.oom.memory_limit} in try "
                f"{self.oom.try_number} (x{self.factor:g}, at most {self.ceiling}{capped})"
            )
        if self.avoid:
            where = ", ".join(
                f"{f.node} ({_fault_words(f)} in try {f.try_number})"
                for f in _latest_per_node(self.node_faults)
            )
            nodes = "nodes" if len(self.avoid) > 1 else "node"
            if self.avoid_required:
                parts.append(f"kept off {nodes} {where}")
            else:
                parts.append(
                    f"kept off {nodes} {where} where possible: no other Ready node of the pool can hold the "
                    "pod, so it may still run there"
                )
        return "; ".join(parts)

    def to_json(self) -> str:
        """What the pod's ``fanout.io/retry`` annotation records."""
        facts: dict = {"try_number": self.try_number}
        if self.memory is not None:
            facts.update(memory=self.memory, oom_at=self.oom.memory_limit if self.oom else None)
        if self.avoid:
            facts.update(avoid_nodes=list(self.avoid), required=self.avoid_required)
        return json.dumps(facts, sort_keys=True)


def _fault_words(failure: TryFailure) -> str:
    if failure.cause in _CAUSE_WORDS:
        return _CAUSE_WORDS[failure.cause]
    return f"exit code {failure.exit_code}, a node fault by FANOUT_NODE_FAULT_EXIT_CODES"


def _latest_per_node(failures: Iterable[TryFailure]) -> list[TryFailure]:
    latest: dict[str, TryFailure] = {}
    for failure in failures:
        latest[failure.node] = failure
    return list(latest.values())


def memory_ceiling(
    size: str,
    nodes: Sequence[k8s.V1Node] | None,
    current: Settings | None = None,
    *,
    machine: tuple[int, str] | None = None,
) -> tuple[int, str]:
    """The most memory (bytes) a task of ``size`` may get, and what sets it: the size's ``max_memory``,
    or the largest allocatable memory of a node of its pool that can hold the pod's other requests
    (``machine``: the memory of the one machine tasks run on, and its name, instead of nodes)."""
    current = current or settings()
    ceiling = int(parse_quantity(size_of(size).memory_ceiling))
    by = f"the {size} size's max_memory"
    if machine is None:
        others = {name: value for name, value in pod_requests(size, current).items() if name != "memory"}
        members = [node for node in pool_nodes(pool_of(size), nodes or [], current) if can_hold(node, others)]
        if members:
            largest = max(members, key=lambda node: allocatable(node).get("memory", Decimal(0)))
            machine = (
                int(allocatable(largest).get("memory", Decimal(0))),
                f"the allocatable memory of {largest.metadata.name}, the largest {pool_of(size)} node",
            )
    if machine is not None and machine[0] < ceiling:
        ceiling, by = machine[0] // MI * MI, machine[1]  # as a whole Mi, the unit raises are counted in
    return ceiling, by


def raised_memory(
    size: str, failures: Iterable[TryFailure], ceiling: int, current: Settings | None = None
) -> tuple[int | None, TryFailure | None]:
    """The memory (bytes) after the OOM kills among ``failures``, if it is more than the size's own,
    and the kill it answers: each kill's limit times the factor, the largest of them, capped."""
    current = current or settings()
    own = int(parse_quantity(size_of(size).memory))
    if current.oom_memory_factor <= 1:
        return None, None
    best, answered = own, None
    for failure in failures:
        if failure.cause != OOM_KILLED or not failure.memory_limit:
            continue
        wanted = math.ceil(int(parse_quantity(failure.memory_limit)) * current.oom_memory_factor / MI) * MI
        if min(wanted, ceiling) > best:
            best, answered = min(wanted, ceiling), failure
    return (best, answered) if answered is not None else (None, None)


GIVE_MORE = "give the task's size more memory (FANOUT_TASK_SIZES) or make the task use less"


def after_oom(
    size: str,
    failure: TryFailure,
    nodes: Sequence[k8s.V1Node] | None,
    *,
    retries_left: bool,
    current: Settings | None = None,
    machine: tuple[int, str] | None = None,
) -> tuple[str, bool]:
    """What follows an OOM-killed try, in one sentence, and whether the try must be its task's last:
    a try that already had the most memory the task may get is (a retry would be killed again)."""
    current = current or settings()
    if failure.cause != OOM_KILLED or not failure.memory_limit:
        return "", False
    factor = current.oom_memory_factor
    if factor <= 1:
        return f"A retry gets the same limit (FANOUT_OOM_MEMORY_FACTOR=1): {GIVE_MORE}.", False
    ceiling, by = memory_ceiling(size, nodes, current, machine=machine)
    if int(parse_quantity(failure.memory_limit)) >= ceiling:
        return (
            f"No retry: {failure.memory_limit} is already the most memory a {size!r} task may get "
            f"({format_bytes(ceiling)}, {by}), so a retry would be OOM-killed again; raise the size's "
            "memory or max_memory (FANOUT_TASK_SIZES), add larger nodes, or make the task use less.",
            True,
        )
    if not retries_left:
        return f"That was its last try: {GIVE_MORE}.", False
    return f"A retry gets x{factor:g} the memory (at most {format_bytes(ceiling)}).", False


def _schedulable(node: k8s.V1Node) -> bool:
    """Ready and not cordoned: a node a new pod can be bound to now."""
    if node.spec is not None and node.spec.unschedulable:
        return False
    conditions = (node.status.conditions if node.status else None) or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


def plan_retry(
    size: str,
    try_number: int,
    failures: Iterable[TryFailure],
    nodes: Sequence[k8s.V1Node] | None,
    current: Settings | None = None,
) -> RetryPlan:
    """What try ``try_number`` of a task of ``size`` gets, given what ended its earlier tries
    (``failures``, any order) and the cluster's nodes (None when they cannot be read)."""
    current = current or settings()
    earlier = sorted(
        (f for f in failures if f.try_number is not None and f.try_number < try_number),
        key=lambda f: f.try_number,
    )
    ceiling, by = memory_ceiling(size, nodes, current)
    memory, oom = raised_memory(size, earlier, ceiling, current)
    memory_text = format_bytes(memory) if memory is not None else None

    faults = tuple(f for f in earlier if f.node and f.blames_node(current.node_fault_exit_codes))
    avoid = tuple(dict.fromkeys(f.node for f in faults))
    required = False
    if avoid and nodes is not None:
        requests = pod_requests(size, current, memory=memory_text)
        required = any(
            node.metadata.name not in avoid and _schedulable(node) and can_hold(node, requests)
            for node in pool_nodes(pool_of(size), nodes, current)
        )
    return RetryPlan(
        try_number=try_number,
        memory=memory_text,
        oom=oom,
        factor=current.oom_memory_factor,
        ceiling=format_bytes(ceiling),
        ceiling_by=by,
        avoid=avoid,
        avoid_required=required,
        node_faults=faults,
    )
