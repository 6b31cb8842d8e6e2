"""A kube-scheduler for the harness: the filters that decide where a pod may run, and binding.

Filters, as the default kube-scheduler profile names them: NodeUnschedulable (cordoned nodes),
NodeAffinity (nodeSelector and required node affinity, label expressions and ``metadata.name``
fields), TaintToleration (NoSchedule/NoExecute taints), NodeResourcesFit (cpu, memory, extended
resources such as nvidia.com/gpu, and the pod count, against the requests of the non-terminal pods
already bound to the node). Among the nodes that pass, the highest score wins, ties broken by name:
preferred node affinity (the matched terms' weights, normalised to 0-100, counted twice) plus the
least allocated share of cpu and memory (0-100), as the default profile weighs them. Pod
(anti-)affinity, topology spread, the other scores and preemption are not emulated.

A pod that fits nowhere stays Pending with ``PodScheduled=False, reason=Unschedulable`` and a Warning
``FailedScheduling`` event whose message counts the reasons per node, as kube-scheduler writes it.
It is retried whenever pods or nodes change.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from kubernetes.utils import parse_quantity

from tests.kubesim.objects import ApiError, event_object, get_condition, set_condition
from tests.kubesim.store import Change, Store

SCHEDULER_NAME = "default-scheduler"
TERMINAL_PHASES = ("Succeeded", "Failed")
UNSCHEDULABLE_TAINT = "node.kubernetes.io/unschedulable"


# --- resources ---------------------------------------------------------------------------------------------


def pod_requests(pod: dict[str, Any]) -> dict[str, Decimal]:
    """Effective requests: the sum over containers, or the largest init container if that is more."""
    spec = pod.get("spec") or {}

    def requests_of(container: dict[str, Any]) -> dict[str, Decimal]:
        resources = container.get("resources") or {}
        # Limits stand in for missing requests, as API defaulting does for pods created elsewhere.
        merged = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
        return {name: parse_quantity(quantity) for name, quantity in merged.items()}

    total: Counter[str] = Counter()
    for container in spec.get("containers") or []:
        total.update(requests_of(container))
    for container in spec.get("initContainers") or []:
        for name, quantity in requests_of(container).items():
            total[name] = max(total[name], quantity)
    for name, quantity in (spec.get("overhead") or {}).items():
        total[name] += parse_quantity(quantity)
    return dict(total)


def holds_resources(pod: dict[str, Any]) -> bool:
    """A bound pod holds its node's resources until it finishes (terminal phase) or is removed."""
    return (
        bool((pod.get("spec") or {}).get("nodeName"))
        and (pod.get("status") or {}).get("phase") not in TERMINAL_PHASES
    )


def requested_on_node(node_name: str, pods: Iterable[dict[str, Any]]) -> dict[str, Decimal]:
    """Sum of the requests of the pods holding resources on the node, plus their count as ``pods``."""
    total: Counter[str] = Counter()
    for pod in pods:
        if holds_resources(pod) and pod["spec"]["nodeName"] == node_name:
            total.update(pod_requests(pod))
            total["pods"] += 1
    return dict(total)


# --- filters -----------------------------------------------------------------------------------------------


def _expression_matches(expression: dict[str, Any], values: dict[str, str]) -> bool:
    key, operator, wanted = expression["key"], expression["operator"], expression.get("values") or []
    present, value = key in values, values.get(key)
    match operator:
        case "In":
            return present and value in wanted
        case "NotIn":
            return not present or value not in wanted
        case "Exists":
            return present
        case "DoesNotExist":
            return not present
        case "Gt" | "Lt":
            try:
                number, bound = int(value or ""), int(wanted[0])
            except (ValueError, IndexError):
                return False
            return number > bound if operator == "Gt" else number < bound
    raise ApiError(422, "Invalid", f"unknown node selector operator {operator!r}")


def _term_matches(term: dict[str, Any], node: dict[str, Any]) -> bool:
    labels = node["metadata"].get("labels") or {}
    fields = {"metadata.name": node["metadata"]["name"]}
    expressions, field_expressions = term.get("matchExpressions") or [], term.get("matchFields") or []
    if not expressions and not field_expressions:
        return False  # an empty term matches no node
    return all(_expression_matches(e, labels) for e in expressions) and all(
        _expression_matches(e, fields) for e in field_expressions
    )


def matches_node_affinity(pod: dict[str, Any], node: dict[str, Any]) -> bool:
    spec = pod.get("spec") or {}
    labels = node["metadata"].get("labels") or {}
    if any(labels.get(key) != value for key, value in (spec.get("nodeSelector") or {}).items()):
        return False
    required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    terms = required.get("nodeSelectorTerms")
    return terms is None or any(_term_matches(term, node) for term in terms)  # terms are ORed


def preferred_affinity_weight(pod: dict[str, Any], node: dict[str, Any]) -> int:
    """The summed weights of the pod's preferred node affinity terms that the node matches."""
    preferred = ((pod.get("spec") or {}).get("affinity") or {}).get("nodeAffinity") or {}
    return sum(
        int(term.get("weight") or 0)
        for term in preferred.get("preferredDuringSchedulingIgnoredDuringExecution") or []
        if _term_matches(term.get("preference") or {}, node)
    )


def tolerates(toleration: dict[str, Any], taint: dict[str, Any]) -> bool:
    if toleration.get("effect") and toleration["effect"] != taint.get("effect"):
        return False
    operator = toleration.get("operator") or "Equal"
    if operator == "Exists":
        return not toleration.get("key") or toleration["key"] == taint.get("key")
    return toleration.get("key") == taint.get("key") and (toleration.get("value") or "") == (
        taint.get("value") or ""
    )


def untolerated_taint(pod: dict[str, Any], node: dict[str, Any]) -> dict[str, Any] | None:
    tolerations = (pod.get("spec") or {}).get("tolerations") or []
    for taint in (node.get("spec") or {}).get("taints") or []:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not any(
            tolerates(t, taint) for t in tolerations
        ):
            return taint
    return None


def insufficient_resources(pod: dict[str, Any], node: dict[str, Any], used: dict[str, Decimal]) -> list[str]:
    """NodeResourcesFit: ``used`` is what the node's bound pods already request (`requested_on_node`)."""
    allocatable = {
        name: parse_quantity(q) for name, q in (node.get("status") or {}).get("allocatable", {}).items()
    }
    reasons = []
    if used.get("pods", 0) + 1 > allocatable.get("pods", Decimal(110)):
        reasons.append("Too many pods")
    for resource, quantity in sorted(pod_requests(pod).items()):
        if quantity and used.get(resource, 0) + quantity > allocatable.get(resource, Decimal(0)):
            reasons.append(f"Insufficient {resource}")
    return reasons


def unfit_reasons(
    pod: dict[str, Any],
    node: dict[str, Any],
    bound_pods: Iterable[dict[str, Any]] = (),
    *,
    used: dict[str, Decimal] | None = None,
) -> list[str]:
    """Why the pod cannot go on this node, in kube-scheduler's words; empty when it fits."""
    if (node.get("spec") or {}).get("unschedulable") and not any(
        tolerates(t, {"key": UNSCHEDULABLE_TAINT, "effect": "NoSchedule"})
        for t in (pod.get("spec") or {}).get("tolerations") or []
    ):
        return ["node(s) were unschedulable"]
    if not matches_node_affinity(pod, node):
        return ["node(s) didn't match Pod's node affinity/selector"]
    if taint := untolerated_taint(pod, node):
        return [f"node(s) had untolerated taint {{{taint['key']}: {taint.get('value', '')}}}"]
    if used is None:
        used = requested_on_node(node["metadata"]["name"], bound_pods)
    return insufficient_resources(pod, node, used)


def choose_node(
    pod: dict[str, Any],
    nodes: list[dict[str, Any]],
    bound_pods: Iterable[dict[str, Any]] = (),
    *,
    usage: dict[str, dict[str, Decimal]] | None = None,
) -> tuple[str | None, str]:
    """The node to bind to (least allocated that fits), or None and the FailedScheduling message.

    ``usage``: each node's requested resources, when the caller keeps them (else from ``bound_pods``).
    """
    if usage is None:
        bound_pods = list(bound_pods)
        usage = {n["metadata"]["name"]: requested_on_node(n["metadata"]["name"], bound_pods) for n in nodes}
    feasible, reasons = [], Counter()
    for node in nodes:
        if why := unfit_reasons(pod, node, used=usage[node["metadata"]["name"]]):
            reasons.update(why)
        else:
            feasible.append(node)
    if feasible:
        # kube-scheduler's default profile adds NodeAffinity's score (preferred terms, normalised to
        # 0-100) twice to NodeResourcesFit's (least allocated, 0-100); ties go to the first by name.
        preferred = {node["metadata"]["name"]: preferred_affinity_weight(pod, node) for node in feasible}
        most = max(preferred.values())

        def score(node: dict[str, Any]) -> Decimal:
            name = node["metadata"]["name"]
            affinity = Decimal(100 * preferred[name]) / most if most else Decimal(0)
            return 2 * affinity + 100 * (1 - _allocated_fraction(node, usage[name]))

        best = min(feasible, key=lambda node: (-score(node), node["metadata"]["name"]))
        return best["metadata"]["name"], ""
    count = len(nodes)
    summary = ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items()))
    preemption = (
        "preemption: not eligible due to preemptionPolicy=Never."
        if (pod.get("spec") or {}).get("preemptionPolicy") == "Never"
        else f"preemption: 0/{count} nodes are available: {count} Preemption is not helpful for scheduling."
    )
    return None, f"0/{count} nodes are available: {summary}. {preemption}"


def _allocated_fraction(node: dict[str, Any], used: dict[str, Decimal]) -> Decimal:
    allocatable = (node.get("status") or {}).get("allocatable", {})
    fractions = [
        used.get(resource, Decimal(0)) / parse_quantity(allocatable[resource])
        for resource in ("cpu", "memory")
        if resource in allocatable and parse_quantity(allocatable[resource])
    ]
    return sum(fractions, Decimal(0)) / max(len(fractions), 1)


# --- the scheduling loop -----------------------------------------------------------------------------------


class Scheduler:
    """Binds pending pods; runs on the harness's event loop and wakes on every pod or node change."""

    def __init__(self, store: Store):
        self.store = store
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.store.subscribe(self._on_change)
        self._task = asyncio.create_task(self._run(), name="kubesim-scheduler")

    async def stop(self) -> None:
        # A stop flag, not Task.cancel(): Python 3.11's wait_for can swallow a cancellation.
        self.store.unsubscribe(self._on_change)
        self._stopping = True
        self._wake.set()
        if self._task:
            await self._task

    def _on_change(self, change: Change) -> None:
        if change.kind in ("Pod", "Node") and self._loop:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def _run(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=1.0)
            if self._stopping:
                break
            self._wake.clear()
            self.schedule_pending()

    def schedule_pending(self) -> None:
        pods, _ = self.store.list("Pod")
        nodes, _ = self.store.list("Node")
        usage = {n["metadata"]["name"]: requested_on_node(n["metadata"]["name"], pods) for n in nodes}
        pending = [
            pod
            for pod in pods
            if not pod["spec"].get("nodeName")
            and not pod["metadata"].get("deletionTimestamp")
            and pod["spec"].get("schedulerName") == SCHEDULER_NAME
            and pod["status"].get("phase") == "Pending"
        ]
        # The scheduling queue: higher priority first, then oldest first (the store keeps creation order).
        for pod in sorted(pending, key=lambda p: -int(p["spec"].get("priority") or 0)):
            node_name, message = choose_node(pod, nodes, usage=usage)
            try:
                if node_name:
                    self._bind(pod, node_name)
                    usage[node_name] = dict(
                        Counter(usage[node_name]) + Counter({**pod_requests(pod), "pods": Decimal(1)})
                    )
                else:
                    self._mark_unschedulable(pod, message)
            except ApiError:
                continue  # deleted meanwhile

    def _bind(self, pod: dict[str, Any], node_name: str) -> dict[str, Any]:
        meta = pod["metadata"]

        def bind(obj: dict[str, Any]) -> None:
            obj["spec"]["nodeName"] = node_name
            set_condition(obj["status"], "PodScheduled", "True")

        bound = self.store.update("Pod", meta["namespace"], meta["name"], bind)
        self.store.create(
            event_object(
                bound,
                reason="Scheduled",
                message=f"Successfully assigned {meta['namespace']}/{meta['name']} to {node_name}",
                component=SCHEDULER_NAME,
            )
        )
        return bound

    def _mark_unschedulable(self, pod: dict[str, Any], message: str) -> None:
        meta = pod["metadata"]
        condition = get_condition(pod, "PodScheduled")
        if condition and condition.get("reason") == "Unschedulable" and condition.get("message") == message:
            return  # nothing changed since the last attempt: no new write, no new event

        def mark(obj: dict[str, Any]) -> None:
            set_condition(obj["status"], "PodScheduled", "False", "Unschedulable", message)

        updated = self.store.update("Pod", meta["namespace"], meta["name"], mark)
        self.store.create(
            event_object(
                updated,
                reason="FailedScheduling",
                message=message,
                event_type="Warning",
                component=SCHEDULER_NAME,
            )
        )
