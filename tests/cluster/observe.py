"""What the cluster tests see of a cluster: pods and nodes through the Kubernetes API, nothing else.

``PodWatch`` lists and watches the pods of one namespace, as any client can on any cluster, and feeds
every event to kubesim's ``Recorder``: per pod, when it was created, scheduled (and on which node),
started, finished (exit code, reason) and deleted, kept after deletion; per node, the requests bound
to it after every change. The tests use it on the harness too, so the same observations are exercised
there that a real cluster would give (the harness's own recorder is not used by tests/cluster).

Times are when this process received the event (a watch delivers within milliseconds).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from kubernetes.client.rest import ApiException

from kubernetes import client, watch
from tests.kubesim.records import CapacitySample, PodRecord, Recorder
from tests.kubesim.store import Change

T = TypeVar("T")
WATCH_S = 2  # each watch request ends after this long and resumes from the last version seen


class PodWatch:
    def __init__(self, api_client: Any, namespace: str):
        self.api = api_client
        self.v1 = client.CoreV1Api(api_client)
        self.namespace = namespace
        self.recorder = Recorder()
        self._seen: dict[str, dict[str, Any]] = {}  # uid -> the pod as last seen
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._version = ""

    # --- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> PodWatch:
        self._relist()
        self._thread = threading.Thread(target=self._follow, name="pod-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=WATCH_S + 5)

    def _relist(self) -> None:
        """List the pods; what vanished since the last look was deleted (a watch that expired)."""
        listed = self.v1.list_namespaced_pod(self.namespace, _preload_content=False)
        body = json.loads(listed.data)
        current = {pod["metadata"]["uid"]: pod for pod in body["items"]}
        for uid, pod in list(self._seen.items()):
            if uid not in current:
                self._observe("DELETED", pod)
        for pod in current.values():
            self._observe("MODIFIED" if pod["metadata"]["uid"] in self._seen else "ADDED", pod)
        self._version = body["metadata"]["resourceVersion"]

    def _follow(self) -> None:
        while not self._stopping.is_set():
            stream = watch.Watch()
            try:
                for event in stream.stream(
                    self.v1.list_namespaced_pod,
                    self.namespace,
                    resource_version=self._version,
                    timeout_seconds=WATCH_S,
                ):
                    raw = event["raw_object"]
                    if event["type"] == "ERROR":
                        self._relist()
                        break
                    self._version = raw["metadata"].get("resourceVersion", self._version)
                    if event["type"] != "BOOKMARK":
                        self._observe(event["type"], raw)
                    if self._stopping.is_set():
                        stream.stop()
            except ApiException as error:
                if error.status == 410:  # the version is too old: start over from a fresh list
                    self._relist()
                else:
                    time.sleep(0.5)
            except Exception:  # a dropped connection: resume from the last version
                time.sleep(0.5)

    def _observe(self, event_type: str, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        previous = self._seen.get(uid)
        if event_type == "DELETED":
            self._seen.pop(uid, None)
        else:
            self._seen[uid] = pod
        version = int(pod["metadata"].get("resourceVersion") or 0)
        self.recorder.observe(Change(version, event_type, "Pod", pod, previous))

    # --- what tests read -------------------------------------------------------------------------------

    @property
    def records(self) -> list[PodRecord]:
        return self.recorder.records

    def record(self, name: str) -> PodRecord:
        """The latest pod of that name, deleted or not."""
        for record in reversed(self.records):
            if record.name == name:
                return record
        raise KeyError(f"no pod {self.namespace}/{name} was ever seen")

    def capacity_history(self) -> list[CapacitySample]:
        return list(self.recorder.capacity)

    def pod(self, name: str) -> dict[str, Any] | None:
        """The pod as the API serves it now, or None once deleted."""
        try:
            return self.api.sanitize_for_serialization(self.v1.read_namespaced_pod(name, self.namespace))
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def nodes(self) -> list[dict[str, Any]]:
        return [self.api.sanitize_for_serialization(node) for node in self.v1.list_node().items]

    def node(self, name: str) -> dict[str, Any]:
        return self.api.sanitize_for_serialization(self.v1.read_node(name))

    def logs(self, name: str) -> str:
        return self.v1.read_namespaced_pod_log(name, self.namespace, container="base")

    @staticmethod
    def wait_for(condition: Callable[[], T], timeout: float = 10.0, message: str = "") -> T:
        deadline = time.monotonic() + timeout
        while True:
            if result := condition():
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(message or f"condition not met within {timeout}s")
            time.sleep(0.05)
