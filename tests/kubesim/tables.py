"""Server-side printing (``Accept: ...;as=Table``), so ``kubectl get`` shows the usual columns."""

from __future__ import annotations

import datetime as dt
from typing import Any

Column = tuple[str, str, int]  # name, type, priority (1: only with -o wide)
COLUMNS: dict[str, list[Column]] = {
    "Pod": [
        ("Name", "string", 0),
        ("Ready", "string", 0),
        ("Status", "string", 0),
        ("Restarts", "string", 0),
        ("Age", "string", 0),
        ("IP", "string", 1),
        ("Node", "string", 1),
        ("Nominated Node", "string", 1),
        ("Readiness Gates", "string", 1),
    ],
    "Node": [
        ("Name", "string", 0),
        ("Status", "string", 0),
        ("Roles", "string", 0),
        ("Age", "string", 0),
        ("Version", "string", 0),
        ("Internal-IP", "string", 1),
        ("External-IP", "string", 1),
        ("OS-Image", "string", 1),
        ("Kernel-Version", "string", 1),
        ("Container-Runtime", "string", 1),
    ],
    "Event": [
        ("Last Seen", "string", 0),
        ("Type", "string", 0),
        ("Reason", "string", 0),
        ("Object", "string", 0),
        ("Message", "string", 0),
    ],
    "Namespace": [("Name", "string", 0), ("Status", "string", 0), ("Age", "string", 0)],
    "ConfigMap": [("Name", "string", 0), ("Data", "integer", 0), ("Age", "string", 0)],
}


def age(since: str | None) -> str:
    """Kubernetes' short human durations: 45s, 3m12s, 17m, 5h3m, 30h, 12d."""
    if not since:
        return "<unknown>"
    start = dt.datetime.strptime(since[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=dt.UTC)
    seconds = max(0, int((dt.datetime.now(dt.UTC) - start).total_seconds()))
    minutes, hours = seconds // 60, seconds // 3600
    if seconds < 120:
        return f"{seconds}s"
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if hours < 3:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    return f"{hours}h" if hours < 48 else f"{hours // 24}d"


def pod_status_text(pod: dict[str, Any]) -> str:
    status = pod.get("status") or {}
    if pod["metadata"].get("deletionTimestamp"):
        return "Terminating"
    if status.get("reason"):
        return status["reason"]
    for container in status.get("containerStatuses") or []:
        state = container.get("state") or {}
        if "terminated" in state and state["terminated"].get("reason"):
            return state["terminated"]["reason"]
        if "waiting" in state and state["waiting"].get("reason"):
            return state["waiting"]["reason"]
    return status.get("phase", "Pending")


def _cells(kind: str, obj: dict[str, Any]) -> list[Any]:
    meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    if kind == "Pod":
        containers = status.get("containerStatuses") or []
        ready = sum(1 for c in containers if c.get("ready"))
        return [
            meta["name"],
            f"{ready}/{len(spec.get('containers') or [])}",
            pod_status_text(obj),
            str(sum(c.get("restartCount", 0) for c in containers)),
            age(meta.get("creationTimestamp")),
            status.get("podIP", "<none>"),
            spec.get("nodeName", "<none>"),
            "<none>",
            "<none>",
        ]
    if kind == "Node":
        ready = next((c["status"] for c in status.get("conditions") or [] if c["type"] == "Ready"), "Unknown")
        text = "Ready" if ready == "True" else "NotReady"
        if spec.get("unschedulable"):
            text += ",SchedulingDisabled"
        info = status.get("nodeInfo") or {}
        return [
            meta["name"],
            text,
            "<none>",
            age(meta.get("creationTimestamp")),
            info.get("kubeletVersion"),
            "127.0.0.1",
            "<none>",
            info.get("osImage"),
            info.get("kernelVersion"),
            info.get("containerRuntimeVersion"),
        ]
    if kind == "Event":
        involved = obj.get("involvedObject") or {}
        return [
            age(obj.get("lastTimestamp")),
            obj.get("type"),
            obj.get("reason"),
            f"{involved.get('kind', '').lower()}/{involved.get('name')}",
            obj.get("message"),
        ]
    if kind == "ConfigMap":
        data = len(obj.get("data") or {}) + len(obj.get("binaryData") or {})
        return [meta["name"], data, age(meta.get("creationTimestamp"))]
    return [meta["name"], status.get("phase", "Active"), age(meta.get("creationTimestamp"))]


def as_table(kind: str, items: list[dict[str, Any]], list_meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": [
            {
                "name": name,
                "type": kind_of,
                "format": "name" if name == "Name" else "",
                "description": "",
                "priority": priority,
            }
            for name, kind_of, priority in COLUMNS[kind]
        ],
        "rows": [
            {
                "cells": _cells(kind, item),
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": item["metadata"],
                },
            }
            for item in items
        ],
    }
