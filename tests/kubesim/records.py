"""What happened to every pod and node, kept after pods are deleted, for tests to assert on.

The recorder follows the store's changes (the same stream a watch sees), or, fed by ``observe``, any
API server's watch events (``tests/cluster/observe.py``), so every record reflects states the API really
served: which node a pod was bound to, when it was created, scheduled, started, finished
and deleted, with which exit code and reason; and after every change of what is bound to a node, the
node's requested resources (the capacity history).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from tests.kubesim.scheduler import holds_resources, requested_on_node
from tests.kubesim.store import Change, Store


@dataclass
class PodRecord:
    namespace: str
    name: str
    uid: str
    labels: dict[str, str]
    annotations: dict[str, str]
    image: str
    created_at: float
    node: str | None = None
    scheduled_at: float | None = None
    unschedulable_message: str | None = None  # the last FailedScheduling reason, if it ever waited
    started_at: float | None = None  # container running
    finished_at: float | None = None  # container terminated
    exit_code: int | None = None
    reason: str | None = None  # the container's terminated reason: Completed, Error, OOMKilled, ...
    pod_reason: str | None = None  # status.reason, e.g. Evicted
    phase: str = "Pending"
    phases: list[tuple[float, str]] = field(default_factory=list)
    deletion_requested_at: float | None = None  # deletionTimestamp first seen
    deleted_at: float | None = None  # gone from the API (DELETED)
    spec: dict[str, Any] = field(
        default_factory=dict
    )  # as created (resources, affinity), kept after deletion


@dataclass(frozen=True)
class CapacitySample:
    """The requests bound to a node (non-terminal pods) right after a change; ``pods`` counts them."""

    time: float
    node: str
    requested: dict[str, Decimal]
    pods: tuple[str, ...]  # namespace/name of the pods holding resources


class Recorder:
    def __init__(self, store: Store | None = None):
        self._lock = threading.Lock()
        self._records: dict[str, PodRecord] = {}  # by uid, in creation order
        self._bound: dict[str, dict[str, Any]] = {}  # uid -> pod, pods holding node resources
        self.capacity: list[CapacitySample] = []
        if store is not None:
            store.subscribe(self.observe)

    @property
    def records(self) -> list[PodRecord]:
        with self._lock:
            return list(self._records.values())

    def observe(self, change: Change) -> None:
        """Take one change of a pod (as a watch event: type, object, and the object before it)."""
        if change.kind != "Pod":
            return
        now = time.time()
        pod = change.object
        meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
        with self._lock:
            record = self._records.get(meta["uid"])
            if record is None:
                containers = spec.get("containers") or [{}]
                record = PodRecord(
                    namespace=meta["namespace"],
                    name=meta["name"],
                    uid=meta["uid"],
                    labels=dict(meta.get("labels") or {}),
                    annotations=dict(meta.get("annotations") or {}),
                    image=containers[0].get("image", ""),
                    created_at=now,
                    spec=spec,
                )
                self._records[meta["uid"]] = record
            record.labels = dict(meta.get("labels") or {})
            if spec.get("nodeName") and record.node is None:
                record.node, record.scheduled_at = spec["nodeName"], now
            for condition in status.get("conditions") or []:
                if condition["type"] == "PodScheduled" and condition.get("reason") == "Unschedulable":
                    record.unschedulable_message = condition.get("message")
            for container_status in (status.get("containerStatuses") or [])[:1]:
                state = container_status.get("state") or {}
                if "running" in state and record.started_at is None:
                    record.started_at = now
                if "terminated" in state and record.finished_at is None:
                    record.finished_at = now
                    record.exit_code = state["terminated"].get("exitCode")
                    record.reason = state["terminated"].get("reason")
                    if record.started_at is None and state["terminated"].get("reason") != "StartError":
                        record.started_at = now
            record.pod_reason = status.get("reason") or record.pod_reason
            phase = status.get("phase", "Pending")
            if phase != record.phase or not record.phases:
                record.phase = phase
                record.phases.append((now, phase))
            if meta.get("deletionTimestamp") and record.deletion_requested_at is None:
                record.deletion_requested_at = now
            if change.type == "DELETED":
                record.deleted_at = now
            self._track_capacity(change, now)

    def _track_capacity(self, change: Change, now: float) -> None:
        uid = change.object["metadata"]["uid"]
        nodes = {p["spec"].get("nodeName") for p in (change.object, change.previous or {}) if p.get("spec")}
        if change.type != "DELETED" and holds_resources(change.object):
            self._bound[uid] = change.object
        else:
            self._bound.pop(uid, None)
        for node in sorted(n for n in nodes if n):
            requested = requested_on_node(node, self._bound.values())
            last = next((s for s in reversed(self.capacity) if s.node == node), None)
            if last is None and not requested:
                continue
            if last is None or last.requested != requested:
                holders = tuple(
                    sorted(
                        f"{p['metadata']['namespace']}/{p['metadata']['name']}"
                        for p in self._bound.values()
                        if p["spec"].get("nodeName") == node
                    )
                )
                self.capacity.append(CapacitySample(now, node, requested, holders))
