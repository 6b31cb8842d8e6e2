"""The object store: what etcd plus the API server's watch cache do for the harness.

One global, monotonically increasing resourceVersion across kinds (as etcd's revision). Each kind keeps
its last changes in a bounded history (the watch cache) so a watch can resume from a resourceVersion;
resuming from one older than that history answers 410 Gone, which `compact()` forces on purpose in tests.

Thread-safe: the API server, scheduler and kubelet run on the harness's event loop, tests read from
their own thread. Subscribers are called under the lock, in resourceVersion order.
"""

from __future__ import annotations

import copy
import sys
import threading
from collections import deque
from collections.abc import Callable, Generator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tests.kubesim.objects import already_exists, gone, new_uid, not_found, timestamp

PLURALS = {
    "Pod": "pods",
    "Node": "nodes",
    "Event": "events",
    "Namespace": "namespaces",
    "ConfigMap": "configmaps",
}
CLUSTER_SCOPED = {"Node", "Namespace"}


@dataclass(frozen=True)
class Change:
    """One stored change. ``previous`` is the state before it (None for a creation)."""

    resource_version: int
    type: str  # ADDED, MODIFIED, DELETED
    kind: str
    object: dict[str, Any]
    previous: dict[str, Any] | None


Key = tuple[str, str]  # (namespace or "", name)
Subscriber = Callable[[Change], None]


class Store:
    def __init__(self, history_limit: int = 1000):
        self._lock = threading.RLock()
        self._revision = 1
        self._objects: dict[str, dict[Key, dict[str, Any]]] = {kind: {} for kind in PLURALS}
        self._history: dict[str, deque[Change]] = {kind: deque(maxlen=history_limit) for kind in PLURALS}
        self._oldest_resumable = dict.fromkeys(PLURALS, 1)  # a watch may resume from any version >= this
        self._subscribers: list[Subscriber] = []

    # --- reads -----------------------------------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        with self._lock:
            return self._revision

    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any]:
        with self._lock:
            obj = self._objects[kind].get(self._key(kind, namespace, name))
            if obj is None:
                raise not_found(PLURALS[kind], name)
            return copy.deepcopy(obj)

    def find(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        with self._lock:
            obj = self._objects[kind].get(self._key(kind, namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def list(
        self, kind: str, namespace: str | None = None, where: Callable[[dict[str, Any]], bool] | None = None
    ) -> tuple[list[dict[str, Any]], int]:
        """Objects of a kind (in one namespace or all), oldest first, and the list's resourceVersion."""
        with self._lock:
            items = [
                copy.deepcopy(obj)
                for (obj_namespace, _), obj in self._objects[kind].items()
                if (namespace is None or obj_namespace == namespace) and (where is None or where(obj))
            ]
            return items, self._revision

    # --- writes ----------------------------------------------------------------------------------------

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        kind, meta = obj["kind"], obj["metadata"]
        with self._lock:
            key = self._key(kind, meta.get("namespace"), meta["name"])
            if key in self._objects[kind]:
                raise already_exists(PLURALS[kind], meta["name"])
            stored = copy.deepcopy(obj)
            stored["metadata"].setdefault("uid", new_uid())
            stored["metadata"].setdefault("creationTimestamp", timestamp())
            self._commit("ADDED", kind, key, stored, None)
            return copy.deepcopy(stored)

    def update(
        self,
        kind: str,
        namespace: str | None,
        name: str,
        mutate: Callable[[dict[str, Any]], dict[str, Any] | None],
    ) -> dict[str, Any]:
        """Apply ``mutate`` to a copy (in place, or returning a replacement); a no-op writes nothing."""
        with self._lock:
            key = self._key(kind, namespace, name)
            current = self._objects[kind].get(key)
            if current is None:
                raise not_found(PLURALS[kind], name)
            candidate = copy.deepcopy(current)
            replaced = mutate(candidate)
            updated = replaced if replaced is not None else candidate
            if self._without_version(updated) == self._without_version(current):
                return copy.deepcopy(current)
            self._commit("MODIFIED", kind, key, updated, current)
            return copy.deepcopy(updated)

    def delete(
        self,
        kind: str,
        namespace: str | None,
        name: str,
        finalize: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Remove an object; ``finalize`` edits its last state (e.g. sets deletionTimestamp) first."""
        with self._lock:
            key = self._key(kind, namespace, name)
            current = self._objects[kind].get(key)
            if current is None:
                raise not_found(PLURALS[kind], name)
            final = copy.deepcopy(current)
            if finalize:
                finalize(final)
            self._commit("DELETED", kind, key, final, current)
            return copy.deepcopy(final)

    # --- watching --------------------------------------------------------------------------------------

    def subscribe(self, subscriber: Subscriber) -> None:
        with self._lock:
            self._subscribers.append(subscriber)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        with self._lock:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)

    @contextmanager
    def watch(
        self, kind: str, since: str | None, subscriber: Subscriber, *, initial_state: bool = False
    ) -> Generator[tuple[list[Change], int], None, None]:
        """Subscribe; yield the changes a watch must replay first (no gap between) and the current version.

        ``since`` empty or "0", or ``initial_state``: synthetic ADDED events for the current objects ("any
        state, then changes"). Otherwise the stored changes after that resourceVersion; 410 Gone when they
        are no longer kept.
        """
        with self._lock:
            if initial_state or not since or since == "0":
                backlog = [
                    Change(int(obj["metadata"]["resourceVersion"]), "ADDED", kind, copy.deepcopy(obj), None)
                    for obj in self._objects[kind].values()
                ]
            else:
                try:
                    requested = int(since)
                except ValueError as error:
                    raise gone(since, self._revision) from error
                if requested < self._oldest_resumable[kind]:
                    raise gone(since, self._revision)
                backlog = [c for c in self._history[kind] if c.resource_version > requested]
            self._subscribers.append(subscriber)
            revision = self._revision
        try:
            yield backlog, revision
        finally:
            self.unsubscribe(subscriber)

    def compact(self) -> int:
        """Forget the change history, as etcd compaction does: older watches get 410 Gone."""
        with self._lock:
            for kind, history in self._history.items():
                history.clear()
                self._oldest_resumable[kind] = self._revision
            return self._revision

    # --- internals -------------------------------------------------------------------------------------

    @staticmethod
    def _key(kind: str, namespace: str | None, name: str) -> Key:
        return ("" if kind in CLUSTER_SCOPED else namespace or "", name)

    @staticmethod
    def _without_version(obj: dict[str, Any]) -> dict[str, Any]:
        return {**obj, "metadata": {k: v for k, v in obj["metadata"].items() if k != "resourceVersion"}}

    def _commit(
        self, change_type: str, kind: str, key: Key, obj: dict[str, Any], previous: dict[str, Any] | None
    ):
        self._revision += 1
        obj["metadata"]["resourceVersion"] = str(self._revision)
        if change_type == "DELETED":
            self._objects[kind].pop(key)
        else:
            self._objects[kind][key] = obj
        history = self._history[kind]
        if len(history) == history.maxlen:
            self._oldest_resumable[kind] = history[0].resource_version  # about to be dropped
        change = Change(self._revision, change_type, kind, copy.deepcopy(obj), copy.deepcopy(previous))
        history.append(change)
        for subscriber in list(self._subscribers):
            try:
                subscriber(change)
            except Exception as error:  # one broken observer must not break the write
                print(f"kubesim store: subscriber {subscriber!r} failed: {error!r}", file=sys.stderr)
