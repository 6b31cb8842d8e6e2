"""Where a run's tries ran on Kubernetes: pod, node, node pool, size, timestamps, exit reason.

Asked of the Kubernetes API with the executor's own settings (``[kubernetes_executor]``:
in-cluster or a kubeconfig, the namespace) when a run's tasks used a Kubernetes executor:

* pods still there (running, or failed and kept: ``delete_worker_pods_on_failure=False``) are
  found by the labels the executor gives every worker pod (``dag_id``, ``run_id``, and the
  exact ``task_id``/``map_index``/``try_number`` in its annotations); they carry the node,
  fanout's ``fanout.io/pool`` and ``fanout.io/size`` labels, the creation, scheduling and
  container start times, the container's termination reason (OOMKilled, Error) and, on a failed
  pod, the executor's record of what ended the try (``fanout.io/failure``);
* pods already deleted (``delete_worker_pods=True`` removes finished ones) leave their
  ``Scheduled`` event ("Successfully assigned <ns>/<pod> to <node>"), kept by the API server
  for its event TTL (one hour by default); the pod is the try's hostname, which a worker pod
  reports as its own name.

Older tries are "unknown node" once both are gone; the node pool of every try still follows
from its task size (``fanout.pools``). The api-server needs ``list`` on pods (and on events, for
deleted pods) in the workers' namespace; any failure to reach the API is a note on the page, not
an error: the report shows what Airflow knows.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from fanout.failures import FAILURE_ANNOTATION, TryFailure
from fanout.report.model import Pod

log = logging.getLogger(__name__)

POOL_LABEL = "fanout.io/pool"
SIZE_LABEL = "fanout.io/size"
TIMEOUT = 5
"""Seconds per Kubernetes API call: the page must not hang on an unreachable cluster."""
_ASSIGNED = re.compile(r"Successfully assigned (?P<ns>[^/\s]+)/(?P<pod>\S+) to (?P<node>\S+)")

Key = tuple[str, int, int]


def _client():
    from airflow.providers.cncf.kubernetes.kube_client import get_kube_client

    return get_kube_client()


def _namespaces() -> list[str] | None:
    """The executor's namespace(s); None means every namespace (multi-namespace mode)."""
    from airflow.configuration import conf

    if conf.getboolean("kubernetes_executor", "multi_namespace_mode", fallback=False):
        names = conf.get("kubernetes_executor", "multi_namespace_mode_namespace_list", fallback="")
        return [n.strip() for n in names.split(",") if n.strip()] or None
    return [conf.get("kubernetes_executor", "namespace", fallback="default")]


def _get(obj: Any, *path: str) -> Any:
    """``obj.a.b`` for kubernetes client models and plain dicts alike, None when absent."""
    for name in path:
        if obj is None:
            return None
        obj = obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)
    return obj


def pod_record(pod: Any) -> tuple[Key, Pod] | None:
    """The try a worker pod ran, and where and how it ran."""
    annotations = _get(pod, "metadata", "annotations") or {}
    labels = _get(pod, "metadata", "labels") or {}
    try:
        key = (annotations["task_id"], int(annotations.get("map_index", -1)), int(annotations["try_number"]))
    except (KeyError, TypeError, ValueError):
        return None
    scheduled = next(
        (
            _get(c, "last_transition_time")
            for c in _get(pod, "status", "conditions") or []
            if _get(c, "type") == "PodScheduled" and _get(c, "status") == "True"
        ),
        None,
    )
    statuses = _get(pod, "status", "container_statuses") or []
    base = next((s for s in statuses if _get(s, "name") == "base"), statuses[0] if statuses else None)
    started = _get(base, "state", "running", "started_at") or _get(base, "state", "terminated", "started_at")
    reason = _get(base, "state", "terminated", "reason")
    failure = None
    if annotations.get(FAILURE_ANNOTATION):
        try:
            failure = TryFailure.from_json(annotations[FAILURE_ANNOTATION]).explain()
        except (ValueError, TypeError, KeyError):  # a record this version cannot read: the reason stays
            failure = None
    return key, Pod(
        name=_get(pod, "metadata", "name"),
        node=_get(pod, "spec", "node_name"),
        pool=labels.get(POOL_LABEL),
        size=labels.get(SIZE_LABEL),
        created=_get(pod, "metadata", "creation_timestamp"),
        scheduled=scheduled,
        started=started,
        phase=_get(pod, "status", "phase"),
        reason=reason,
        failure=failure,
    )


def assignments(events: list[Any]) -> dict[str, tuple[str, datetime | None]]:
    """Pod name -> (node, when) from ``Scheduled`` events."""
    out: dict[str, tuple[str, datetime | None]] = {}
    for event in events:
        match = _ASSIGNED.search(_get(event, "message") or "")
        if match:
            when = (
                _get(event, "event_time") or _get(event, "first_timestamp") or _get(event, "last_timestamp")
            )
            out[match.group("pod")] = (match.group("node"), when)
    return out


def _list(api: Any, kind: str, namespaces: list[str] | None, **selector) -> list:
    """``kind`` objects (``pod``, ``event``) from every namespace (``namespaces`` None) or from each one."""
    if namespaces is None:
        return getattr(api, f"list_{kind}_for_all_namespaces")(**selector, _request_timeout=TIMEOUT).items
    namespaced = getattr(api, f"list_namespaced_{kind}")
    return [item for ns in namespaces for item in namespaced(ns, **selector, _request_timeout=TIMEOUT).items]


def pods_of_run(
    dag_id: str, run_id: str, hostnames: Mapping[Key, str | None], problems: list[str] | None = None
) -> dict[Key, Pod]:
    """Every try of the run that the Kubernetes API still knows about, by (task, map index, try)."""
    from airflow.providers.cncf.kubernetes.pod_generator import make_safe_label_value

    selector = f"dag_id={make_safe_label_value(dag_id)},run_id={make_safe_label_value(run_id)}"
    scheduled = "involvedObject.kind=Pod,reason=Scheduled"

    def note(what: str, err: Exception) -> None:
        log.warning("fanout report: no %s from the Kubernetes API: %s", what, err)
        if problems is not None:
            detail = (str(err).strip().splitlines() or [""])[0][:200]
            problems.append(f"No {what} from the Kubernetes API ({type(err).__name__}: {detail})")

    # An unreachable or forbidding API must not break the page: each answer is optional.
    try:
        api = _client()
        namespaces = _namespaces()
        pods = _list(api, "pod", namespaces, label_selector=selector)
    except Exception as err:
        note("pod details", err)
        return {}
    try:  # needs "list events" (the node of a pod already deleted)
        events = _list(api, "event", namespaces, field_selector=scheduled)
    except Exception as err:
        note("scheduling events (nodes of deleted pods)", err)
        events = []
    found: dict[Key, Pod] = {}
    for pod in pods:
        record = pod_record(pod)
        annotations = _get(pod, "metadata", "annotations") or {}
        if (
            record
            and annotations.get("dag_id", dag_id) == dag_id
            and annotations.get("run_id", run_id) == run_id
        ):
            found[record[0]] = record[1]
    assigned = assignments(events)
    for key, hostname in hostnames.items():
        if key in found or not hostname:
            continue
        pod_name = hostname.split(".", 1)[0]
        if pod_name in assigned:
            node, when = assigned[pod_name]
            found[key] = Pod(name=pod_name, node=node, scheduled=when)
    return found
