"""The pod fields a task of a given size adds to the worker pod template (helm/pod-template.yaml),
and whether any node of its pool can hold such a pod.

Used where pods are made (``fanout.executors.FanoutKubernetesExecutor``), never at DAG parse
time: importing ``kubernetes.client`` loads every API model (~0.2 s, ~40 MB).

Every task container runs ``fanout.taskpod`` in front of the executor's args (its ``command``),
so a task process killed inside a pod fails the pod instead of leaving it ``Succeeded``; with
``terminationMessagePolicy: FallbackToLogsOnError`` the kubelet keeps the tail of its output,
taskpod's record of how the task process ended, as the container's termination message.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import TYPE_CHECKING

from kubernetes.client import models as k8s
from kubernetes.utils import parse_quantity

from fanout.pools import GPU, SIZE_KEY, pool_of, size_of
from fanout.settings import Settings, Taint, settings

if TYPE_CHECKING:
    from fanout.retries import RetryPlan

SIZE_LABEL = "fanout.io/size"
RETRY_ANNOTATION = "fanout.io/retry"
"""On a retried try's pod: what it got because of earlier tries (``RetryPlan.to_json``)."""

TASK_COMMAND = ["python", "-m", "fanout.taskpod"]
"""The task container's command; the KubernetesExecutor's args (the workload) follow it."""


def _tolerations(taints: tuple[Taint, ...]) -> list[k8s.V1Toleration]:
    return [
        k8s.V1Toleration(key=t.key, operator="Exists", effect=t.effect)
        if t.value is None
        else k8s.V1Toleration(key=t.key, operator="Equal", value=t.value, effect=t.effect)
        for t in taints
    ]


def pod_override(size: str, retry: RetryPlan | None = None) -> k8s.V1Pod:
    """The pod fields of a task of ``size``: node pool, resources, GPU, /dev/shm, storage, credentials;
    with what ``retry`` changes for a retried try (more memory, nodes to keep off)."""
    spec = size_of(size)
    pool = pool_of(size)
    current = settings()
    gpu = pool == GPU
    memory = (retry.memory if retry else None) or spec.memory
    requests = pod_requests(size, current, memory=memory)
    limits = {"cpu": spec.cpu_limit, "memory": memory, "ephemeral-storage": spec.ephemeral_storage}
    if gpu:
        del requests[current.gpu_resource]  # extended resources: the request defaults to the limit
        limits[current.gpu_resource] = "1"

    volumes, mounts, env_from = [], [], []
    if gpu and spec.shm:
        volumes.append(
            k8s.V1Volume(
                name="dshm", empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory", size_limit=spec.shm)
            )
        )
        mounts.append(k8s.V1VolumeMount(name="dshm", mount_path="/dev/shm"))
    if current.artifact_pvc:
        volumes.append(
            k8s.V1Volume(
                name="artifacts",
                persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(
                    claim_name=current.artifact_pvc
                ),
            )
        )
        mounts.append(k8s.V1VolumeMount(name="artifacts", mount_path=current.artifact_root))
    if current.object_store_secret:
        env_from.append(
            k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=current.object_store_secret))
        )

    prefix = current.priority_class_prefix
    avoid = retry.avoid if retry else ()
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(
            labels={SIZE_LABEL: size, "fanout.io/pool": pool},
            annotations={RETRY_ANNOTATION: retry.to_json()} if retry and retry.changes else None,
        ),
        spec=k8s.V1PodSpec(
            containers=[
                k8s.V1Container(
                    name="base",
                    command=TASK_COMMAND,
                    termination_message_policy="FallbackToLogsOnError",
                    image=(current.gpu_image if gpu else None) or None,
                    resources=k8s.V1ResourceRequirements(requests=requests, limits=limits),
                    # GPU pods use CUDA when the node has it and fall back to the CPU otherwise;
                    # CPU pods skip probing for CUDA.
                    env=[k8s.V1EnvVar(name="FANOUT_DEVICE", value="auto" if gpu else "cpu")],
                    env_from=env_from or None,
                    volume_mounts=mounts or None,
                )
            ],
            node_selector=(current.gpu_pool_selector if gpu else current.cpu_pool_selector) or None,
            affinity=_affinity(
                [] if gpu else _gpu_node_exclusion(current),
                avoid,
                required=retry.avoid_required if retry else True,
            ),
            # Replaces the template's tolerations: only GPU pods tolerate the GPU taint.
            tolerations=_tolerations(current.gpu_taint if gpu else current.cpu_taint) or None,
            priority_class_name=f"{prefix}{spec.workload}" if prefix else None,
            service_account_name=current.worker_service_account,
            volumes=volumes or None,
        ),
    )


def pod_requests(size: str, current: Settings | None = None, *, memory: str | None = None) -> dict[str, str]:
    """What a pod of ``size`` asks of its node: the requests the scheduler counts, GPUs included;
    ``memory`` instead of the size's own (a retry's after an OOM kill)."""
    spec = size_of(size)
    current = current or settings()
    requests = {
        "cpu": spec.cpu,
        "memory": memory or spec.memory,
        "ephemeral-storage": spec.ephemeral_storage,
    }
    if pool_of(size) == GPU:
        requests[current.gpu_resource] = "1"
    return requests


def pool_nodes(pool: str, nodes: Iterable[k8s.V1Node], current: Settings | None = None) -> list[k8s.V1Node]:
    """The nodes of a node pool: those with its labels (CPU pool without labels: all but GPU nodes)."""
    current = current or settings()
    selector = current.gpu_pool_selector if pool == GPU else current.cpu_pool_selector

    def has(labels: dict[str, str], wanted: dict[str, str]) -> bool:
        return all(labels.get(key) == value for key, value in wanted.items())

    chosen = []
    for node in nodes:
        labels = node.metadata.labels or {}
        if selector:
            if has(labels, selector):
                chosen.append(node)
        elif not (current.gpu_pool_selector and has(labels, current.gpu_pool_selector)):
            chosen.append(node)
    return chosen


def allocatable(node: k8s.V1Node) -> dict[str, Decimal]:
    """What the node offers pods, by resource."""
    return {
        name: parse_quantity(value)
        for name, value in ((node.status and node.status.allocatable) or {}).items()
    }


def can_hold(node: k8s.V1Node, requests: dict[str, str]) -> bool:
    """Whether the node's allocatable covers the requests (when empty: pods bound there ignored)."""
    offers = allocatable(node)
    return all(offers.get(name, Decimal(0)) >= parse_quantity(value) for name, value in requests.items())


def size_fit_problem(
    size: str, nodes: list[k8s.V1Node], current: Settings | None = None, *, memory: str | None = None
) -> str | None:
    """Why no node of the size's pool could ever hold its pod (None if one could, or if the pool
    has no nodes: an autoscaler may add them). Compares requests with each node's allocatable;
    ``memory`` instead of the size's own."""
    current = current or settings()
    pool = pool_of(size)
    members = pool_nodes(pool, nodes, current)
    if not members:
        return None
    requests = pod_requests(size, current, memory=memory)
    asked = {name: parse_quantity(value) for name, value in requests.items()}
    offers = []
    for node in members:
        if can_hold(node, requests):
            return None
        allocatable_ = allocatable(node)
        offer = ", ".join(f"{name} {_readable(name, allocatable_.get(name, Decimal(0)))}" for name in asked)
        offers.append(f"{node.metadata.name} offers {offer}")
    selector = current.gpu_pool_selector if pool == GPU else current.cpu_pool_selector
    labels = ",".join(f"{k}={v}" for k, v in selector.items()) or "nodes without the GPU pool's labels"
    shown = "; ".join(offers[:5]) + (f"; and {len(offers) - 5} more" if len(offers) > 5 else "")
    request = ", ".join(f"{name} {_readable(name, amount)}" for name, amount in asked.items())
    return (
        f"task size {size!r} asks for {request}, more than any node of the {pool} pool ({labels}) has: "
        f"{shown}. Its pod would wait unschedulable until [scheduler] task_queued_timeout: give the size "
        "smaller requests (FANOUT_TASK_SIZES, helm/fanout taskSizes) or add larger nodes to the pool."
    )


def _readable(resource: str, amount: Decimal) -> str:
    if resource in ("memory", "ephemeral-storage"):
        for suffix, factor in (("Ti", 1024**4), ("Gi", 1024**3), ("Mi", 1024**2)):
            if amount >= factor:
                return f"{amount / factor:.1f}".removesuffix(".0") + suffix
        return str(amount)
    return f"{amount.normalize():f}"


def resolve_executor_config(executor_config: dict | None, retry: RetryPlan | None = None) -> dict:
    """A task's ``executor_config`` as the KubernetesExecutor takes it: the size made into a
    pod_override, with ``retry``'s changes.

    Raises ``ValueError`` for an unknown size or a bad setting (no pod could be made for it).
    """
    config = dict(executor_config or {})
    size = config.pop(SIZE_KEY, None)
    if size is not None and "pod_override" not in config:
        config["pod_override"] = pod_override(size, retry)
    return config


def _gpu_node_exclusion(current: Settings) -> list[k8s.V1NodeSelectorRequirement]:
    """Keep CPU pods off GPU nodes even where the CPU pool has no label to select (empty selector)."""
    if current.cpu_pool_selector or not current.gpu_pool_selector:
        return []
    return [
        k8s.V1NodeSelectorRequirement(key=key, operator="NotIn", values=[value])
        for key, value in current.gpu_pool_selector.items()
    ]


def _affinity(
    exclusions: list[k8s.V1NodeSelectorRequirement], avoid: Iterable[str], *, required: bool
) -> k8s.V1Affinity | None:
    """Node affinity: label ``exclusions`` (required), and the nodes to ``avoid`` by name, required
    or, where the pool has no other node for the pod, preferred (weight 100, the most)."""
    # The API takes exactly one value per NotIn on a node field, so one requirement per node.
    by_name = [
        k8s.V1NodeSelectorRequirement(key="metadata.name", operator="NotIn", values=[n]) for n in avoid
    ]
    hard_fields = by_name if required else []
    if not exclusions and not by_name:
        return None
    node_affinity = k8s.V1NodeAffinity()
    if exclusions or hard_fields:
        node_affinity.required_during_scheduling_ignored_during_execution = k8s.V1NodeSelector(
            node_selector_terms=[
                k8s.V1NodeSelectorTerm(match_expressions=exclusions or None, match_fields=hard_fields or None)
            ]
        )
    if by_name and not required:
        node_affinity.preferred_during_scheduling_ignored_during_execution = [
            k8s.V1PreferredSchedulingTerm(weight=100, preference=k8s.V1NodeSelectorTerm(match_fields=by_name))
        ]
    return k8s.V1Affinity(node_affinity=node_affinity)
