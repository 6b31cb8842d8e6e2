"""Kubernetes objects as the API server writes them: defaults, nodes, events, Status errors.

Objects are plain camelCase dicts (the wire format), so the `kubernetes` client deserialises them into its
models exactly as it would a real cluster's answers.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any

KUBERNETES_VERSION = {"major": "1", "minor": "33", "gitVersion": "v1.33.0-kubesim"}
POOL_LABEL = "fanout.io/pool"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_TAINT = {"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}
# Added by the DefaultTolerationSeconds admission plugin to every pod that does not set them.
DEFAULT_TOLERATIONS = [
    {
        "key": "node.kubernetes.io/not-ready",
        "operator": "Exists",
        "effect": "NoExecute",
        "tolerationSeconds": 300,
    },
    {
        "key": "node.kubernetes.io/unreachable",
        "operator": "Exists",
        "effect": "NoExecute",
        "tolerationSeconds": 300,
    },
]


def timestamp(moment: float | None = None) -> str:
    """metav1.Time: RFC 3339 in UTC with second precision."""
    when = dt.datetime.fromtimestamp(moment, dt.UTC) if moment is not None else dt.datetime.now(dt.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_timestamp(moment: float | None = None) -> str:
    """metav1.MicroTime, used by Event.eventTime."""
    when = dt.datetime.fromtimestamp(moment, dt.UTC) if moment is not None else dt.datetime.now(dt.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_uid() -> str:
    return str(uuid.uuid4())


class ApiError(Exception):
    """An API failure, answered as a `Status` object with the matching HTTP code."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


def not_found(plural: str, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{plural} "{name}" not found', {"name": name, "kind": plural})


def already_exists(plural: str, name: str) -> ApiError:
    return ApiError(409, "AlreadyExists", f'{plural} "{name}" already exists', {"name": name, "kind": plural})


def conflict(plural: str, name: str) -> ApiError:
    message = (
        f'Operation cannot be fulfilled on {plural} "{name}": the object has been modified; '
        "please apply your changes to the latest version and try again"
    )
    return ApiError(409, "Conflict", message, {"name": name, "kind": plural})


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def invalid(kind: str, name: str, causes: list[str]) -> ApiError:
    message = f'{kind} "{name}" is invalid: {"; ".join(causes)}'
    return ApiError(422, "Invalid", message, {"name": name, "kind": kind.lower() + "s"})


def gone(requested: str | int, current: int) -> ApiError:
    return ApiError(410, "Expired", f"too old resource version: {requested} ({current})")


# --- pods --------------------------------------------------------------------------------------------------


def _image_pull_policy(image: str) -> str:
    tag = image.rsplit("/", 1)[-1]
    return "Always" if ":" not in tag or tag.endswith(":latest") else "IfNotPresent"


def image_id(image: str) -> str:
    """A stable fake digest: the harness records images, it never pulls them."""
    repository = image.split("@")[0]
    if ":" in repository.rsplit("/", 1)[-1]:
        repository = repository.rsplit(":", 1)[0]
    first = repository.split("/", 1)[0]
    if "/" not in repository:
        repository = f"docker.io/library/{repository}"
    elif "." not in first and ":" not in first and first != "localhost":
        repository = f"docker.io/{repository}"  # a Docker Hub name, normalised as containerd reports it
    return f"{repository}@sha256:{hashlib.sha256(image.encode()).hexdigest()}"


def qos_class(pod: dict[str, Any]) -> str:
    containers = pod["spec"].get("containers", []) + pod["spec"].get("initContainers", [])
    requests_and_limits = [
        ((c.get("resources") or {}).get("requests") or {}, (c.get("resources") or {}).get("limits") or {})
        for c in containers
    ]
    if not any(requests or limits for requests, limits in requests_and_limits):
        return "BestEffort"
    guaranteed = all(
        {"cpu", "memory"} <= limits.keys() and all(requests.get(k, v) == v for k, v in limits.items())
        for requests, limits in requests_and_limits
    )
    return "Guaranteed" if guaranteed else "Burstable"


def _new_object(obj: dict[str, Any], kind: str, namespace: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """A create request's copy with its type set, ``generateName`` resolved and namespace checked.

    Returns the copy, its metadata and its name ("" when missing: the caller reports it).
    """
    obj = copy.deepcopy(obj)
    obj["apiVersion"], obj["kind"] = "v1", kind
    meta = obj.setdefault("metadata", {})
    if not meta.get("name") and meta.get("generateName"):
        meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
    if meta.get("namespace") not in (None, "", namespace):
        raise bad_request(
            "the namespace of the provided object does not match the namespace sent on the request"
        )
    return obj, meta, meta.get("name") or ""


def validate_and_default_pod(pod: dict[str, Any], namespace: str) -> dict[str, Any]:
    """What the API server does to a pod on create: validation, defaulting and admission."""
    pod, meta, name = _new_object(pod, "Pod", namespace)
    causes = []
    if not name:
        causes.append("metadata.name: Required value: name or generateName is required")
    elif len(name) > 253 or name != name.lower():
        causes.append(f'metadata.name: Invalid value: "{name}": must be a lowercase RFC 1123 subdomain')
    spec = pod.setdefault("spec", {})
    containers = spec.get("containers") or []
    if not containers:
        causes.append("spec.containers: Required value")
    for index, container in enumerate(containers):
        if not container.get("name"):
            causes.append(f"spec.containers[{index}].name: Required value")
        if not container.get("image"):
            causes.append(f"spec.containers[{index}].image: Required value")
    causes += _node_affinity_problems(spec)
    if causes:
        raise invalid("Pod", name, causes)

    meta.update(namespace=namespace, uid=new_uid(), creationTimestamp=timestamp())
    for key in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds"):
        meta.pop(key, None)
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("serviceAccountName", spec.get("serviceAccount") or "default")
    spec.setdefault("serviceAccount", spec["serviceAccountName"])
    spec.setdefault("securityContext", {})
    spec.setdefault("enableServiceLinks", True)
    spec.setdefault("priority", 0)
    spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
    tolerations = spec.setdefault("tolerations", [])
    for default in DEFAULT_TOLERATIONS:
        if not any(
            t.get("key") == default["key"] and t.get("effect") in (None, "", "NoExecute") for t in tolerations
        ):
            tolerations.append(dict(default))
    for container in containers + (spec.get("initContainers") or []):
        container.setdefault("imagePullPolicy", _image_pull_policy(container["image"]))
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        resources = container.setdefault("resources", {})
        # Requests default to limits, so the scheduler only ever reads requests.
        for resource, quantity in (resources.get("limits") or {}).items():
            resources.setdefault("requests", {}).setdefault(resource, quantity)
    pod["status"] = {"phase": "Pending", "qosClass": qos_class(pod)}
    return pod


def _node_affinity_problems(spec: dict[str, Any]) -> list[str]:
    """The API server's checks of node field requirements (``matchFields``) in node affinity terms:
    only ``metadata.name``, only In/NotIn, exactly one value each."""
    affinity = (spec.get("affinity") or {}).get("nodeAffinity") or {}
    path = "spec.affinity.nodeAffinity"
    terms = [
        (f"{path}.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[{i}]", term)
        for i, term in enumerate(
            (affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or {}).get("nodeSelectorTerms")
            or []
        )
    ] + [
        (
            f"{path}.preferredDuringSchedulingIgnoredDuringExecution[{i}].preference",
            preferred.get("preference") or {},
        )
        for i, preferred in enumerate(affinity.get("preferredDuringSchedulingIgnoredDuringExecution") or [])
    ]
    causes = []
    for where, term in terms:
        for j, requirement in enumerate(term.get("matchFields") or []):
            at = f"{where}.matchFields[{j}]"
            if requirement.get("operator") not in ("In", "NotIn"):
                causes.append(
                    f'{at}.operator: Invalid value: "{requirement.get("operator")}": not a valid selector operator'
                )
            elif len(requirement.get("values") or []) != 1:
                causes.append(
                    f"{at}.values: Required value: must be only one value when `operator` is 'In' or 'NotIn' "
                    "for node field selector"
                )
            if requirement.get("key") != "metadata.name":
                causes.append(
                    f'{at}.key: Invalid value: "{requirement.get("key")}": not a valid field selector key'
                )
    return causes


def set_condition(
    status: dict[str, Any],
    condition_type: str,
    value: str,
    reason: str | None = None,
    message: str | None = None,
) -> None:
    """Set a pod or node condition; lastTransitionTime moves only when the status flips."""
    conditions = status.setdefault("conditions", [])
    existing = next((c for c in conditions if c["type"] == condition_type), None)
    new = {"type": condition_type, "status": value, "lastProbeTime": None}
    if reason:
        new["reason"] = reason
    if message:
        new["message"] = message
    if existing and existing["status"] == value:
        new["lastTransitionTime"] = existing.get("lastTransitionTime")
    else:
        new["lastTransitionTime"] = timestamp()
    if existing:
        conditions[conditions.index(existing)] = new
    else:
        conditions.append(new)


def get_condition(obj: dict[str, Any], condition_type: str) -> dict[str, Any] | None:
    return next(
        (c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == condition_type), None
    )


# --- nodes -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeSpec:
    """One simulated node. Capacity is fictional: pods really run on this machine's cores."""

    name: str
    pool: str = "cpu"
    cpu: str = "4"
    memory: str = "16Gi"
    gpus: int = 0
    pods: int = 110
    labels: dict[str, str] = field(default_factory=dict)
    taints: tuple[dict[str, str], ...] | None = None  # None: the GPU taint on GPU nodes, nothing elsewhere

    def capacity(self) -> dict[str, str]:
        capacity = {
            "cpu": self.cpu,
            "memory": self.memory,
            "pods": str(self.pods),
            "ephemeral-storage": "100Gi",
        }
        if self.gpus:
            capacity[GPU_RESOURCE] = str(self.gpus)
        return capacity

    def node_taints(self) -> list[dict[str, str]]:
        if self.taints is not None:
            return [dict(t) for t in self.taints]
        return [dict(GPU_TAINT)] if self.gpus else []


def default_nodes() -> list[NodeSpec]:
    """The team's default pools: two CPU nodes and one tainted GPU node."""
    return [
        NodeSpec("cpu-node-1", pool="cpu", cpu="4", memory="16Gi"),
        NodeSpec("cpu-node-2", pool="cpu", cpu="4", memory="16Gi"),
        NodeSpec("gpu-node-1", pool="gpu", cpu="8", memory="32Gi", gpus=1),
    ]


def node_object(spec: NodeSpec) -> dict[str, Any]:
    now = timestamp()
    labels = {
        "kubernetes.io/hostname": spec.name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        POOL_LABEL: spec.pool,
        **spec.labels,
    }
    conditions = [
        {"type": kind, "status": "False", "reason": reason, "message": message}
        for kind, reason, message in (
            ("MemoryPressure", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            ("DiskPressure", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            ("PIDPressure", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
        )
    ] + [
        {
            "type": "Ready",
            "status": "True",
            "reason": "KubeletReady",
            "message": "kubelet is posting ready status",
        }
    ]
    for condition in conditions:
        condition.update(lastHeartbeatTime=now, lastTransitionTime=now)
    node_spec: dict[str, Any] = {"podCIDR": "10.244.0.0/24"}
    if taints := spec.node_taints():
        node_spec["taints"] = taints
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": spec.name, "uid": new_uid(), "creationTimestamp": now, "labels": labels},
        "spec": node_spec,
        "status": {
            "capacity": spec.capacity(),
            "allocatable": spec.capacity(),
            "conditions": conditions,
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": spec.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": spec.name,
                "systemUUID": spec.name,
                "bootID": new_uid(),
                "kernelVersion": "kubesim",
                "osImage": "kubesim (pods run as local processes)",
                "containerRuntimeVersion": "kubesim://1.0",
                "kubeletVersion": KUBERNETES_VERSION["gitVersion"],
                "kubeProxyVersion": KUBERNETES_VERSION["gitVersion"],
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        },
    }


# --- config maps -------------------------------------------------------------------------------------------


def validate_config_map(config_map: dict[str, Any], namespace: str) -> dict[str, Any]:
    """What the API server does to a ConfigMap on create: string data, a name, its namespace."""
    config_map, meta, name = _new_object(config_map, "ConfigMap", namespace)
    causes = [] if name else ["metadata.name: Required value: name or generateName is required"]
    causes += config_map_data_errors(config_map)
    if causes:
        raise invalid("ConfigMap", name, causes)
    meta.update(namespace=namespace, uid=new_uid(), creationTimestamp=timestamp())
    meta.pop("resourceVersion", None)
    return config_map


def config_map_data_errors(config_map: dict[str, Any]) -> list[str]:
    return [
        f"data[{key}]: Invalid value: must be a string"
        for key, value in (config_map.get("data") or {}).items()
        if not isinstance(value, str)
    ]


def namespace_object(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": name,
            "uid": new_uid(),
            "creationTimestamp": timestamp(),
            "labels": {"kubernetes.io/metadata.name": name},
        },
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    }


# --- events ------------------------------------------------------------------------------------------------


def event_object(
    involved: dict[str, Any],
    *,
    reason: str,
    message: str,
    event_type: str = "Normal",
    component: str,
    host: str | None = None,
    field_path: str | None = None,
) -> dict[str, Any]:
    meta = involved["metadata"]
    now = timestamp()
    involved_ref = {
        "apiVersion": involved.get("apiVersion", "v1"),
        "kind": involved["kind"],
        "name": meta["name"],
        "uid": meta.get("uid"),
        "resourceVersion": meta.get("resourceVersion"),
    }
    if meta.get("namespace"):
        involved_ref["namespace"] = meta["namespace"]
    if field_path:
        involved_ref["fieldPath"] = field_path
    source = {"component": component}
    if host:
        source["host"] = host
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": f"{meta['name']}.{secrets.token_hex(8)}",
            "namespace": meta.get("namespace") or "default",
            "uid": new_uid(),
            "creationTimestamp": now,
        },
        "involvedObject": involved_ref,
        "reason": reason,
        "message": message,
        "type": event_type,
        "source": source,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
        "reportingComponent": component,
        "reportingInstance": host or "",
    }
