"""Node pools and task sizes: where each task's pod runs and what it may use.

A DAG task says only how big it is::

    @task(**placement("trial"))
    def train_trial(...): ...

``placement(size)`` turns one row of ``SIZES`` into the task's keyword arguments: the
KubernetesExecutor ``pod_override`` (node pool, resources, GPU, ``/dev/shm``), the Airflow
pool that gates GPU work, and, for bookkeeping tasks, the light-task executor when the
deployment configures one. Clouds name node pools differently, so labels, taints and names
come from environment variables (set by the helm/fanout ConfigMap, docker-compose.yml and
the Makefile's local stack; the README's "Deploy on Kubernetes" section lists them):

==================================  =====================================  ====================================
variable                            default                                meaning
==================================  =====================================  ====================================
``FANOUT_CPU_POOL_SELECTOR``        ``fanout.io/pool=cpu``                 node labels of the CPU pool (``k=v,k2=v2``)
``FANOUT_CPU_TAINT``                (none)                                 taints on CPU nodes to tolerate (``k=v:Effect,...``)
``FANOUT_GPU_POOL_SELECTOR``        ``fanout.io/pool=gpu``                 node labels of the GPU pool
``FANOUT_GPU_TAINT``                ``nvidia.com/gpu=present:NoSchedule``  taints on GPU nodes, tolerated by GPU pods only
``FANOUT_GPU_RESOURCE``             ``nvidia.com/gpu``                     extended resource a GPU pod limits
``FANOUT_GPU_AIRFLOW_POOL``         ``fanout_gpu``                         Airflow pool every GPU task takes a slot of
``FANOUT_GPU_AIRFLOW_POOL_SLOTS``   ``1``                                  its size: the GPUs in the GPU node pool
``FANOUT_RENDER_POOL``              ``gpu``                                node pool of ``frames`` tasks: ``gpu`` or ``cpu``
``FANOUT_LIGHT_TASK_EXECUTOR``      (none)                                 executor for bookkeeping tasks, e.g. ``LocalExecutor``
``FANOUT_GPU_IMAGE``                (none: the worker image)               image of GPU pods (the CUDA worker image)
``FANOUT_PRIORITY_CLASS_PREFIX``    (none: no priorityClassName)           ``fanout-`` -> ``fanout-training`` ...
``FANOUT_WORKER_SERVICE_ACCOUNT``   (none: the namespace default)          service account of task pods
``FANOUT_OBJECT_STORE_SECRET``      (none)                                 Secret whose keys become env (credentials)
``FANOUT_ARTIFACT_PVC``             (none)                                 ReadWriteMany PVC mounted at the artifact root
==================================  =====================================  ====================================

Invalid values raise ``ValueError`` naming the variable, so a typo fails DAG parsing
instead of producing pods that stay Pending.

Import cost: any ``kubernetes.client`` import runs the ``kubernetes`` package ``__init__``,
which loads every API and model (~0.2 s, ~40 MB, measured; ``from kubernetes.client import
models`` and a single ``kubernetes.client.models.v1_pod`` import cost the same). The
dag-processor pays it anyway when it serialises a ``pod_override``; nothing else is imported.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from kubernetes.client import models as k8s

CPU = "cpu"
GPU = "gpu"


@dataclass(frozen=True)
class Size:
    """What one task pod asks for. ``pool`` is ``cpu``, ``gpu`` or ``render`` (FANOUT_RENDER_POOL)."""

    pool: str
    cpu: str
    """CPU request."""
    cpu_limit: str
    memory: str
    """Memory request and limit (equal, so the scheduler's placement is what the pod gets)."""
    workload: str
    """Workload class: picks the PriorityClass (``<prefix><workload>``)."""
    shm: str | None = None
    """Size of the memory-backed /dev/shm on GPU pods (PyTorch DataLoader workers use it)."""
    ephemeral_storage: str = "1Gi"
    """Scratch space (/tmp: staged artifacts before upload)."""


# The one table of task sizes. GPU pods get 1 GPU, the GPU taint toleration and /dev/shm.
SIZES: dict[str, Size] = {
    # fan-in and planning: read manifests, write a small JSON; an Airflow worker process
    # (~160 MB) plus headroom.
    "bookkeeping": Size(pool=CPU, cpu="250m", cpu_limit="1", memory="768Mi", workload="bookkeeping"),
    # Dask preprocessing of one shard.
    "shard": Size(
        pool=CPU, cpu="2", cpu_limit="2", memory="4Gi", workload="preprocessing", ephemeral_storage="8Gi"
    ),
    # one PyTorch training trial on one GPU.
    "trial": Size(
        pool=GPU,
        cpu="4",
        cpu_limit="4",
        memory="16Gi",
        workload="training",
        shm="4Gi",
        ephemeral_storage="4Gi",
    ),
    # one chunk of rendered frames: on the GPU pool (1 GPU) or the CPU pool (FANOUT_RENDER_POOL).
    "frames": Size(
        pool="render",
        cpu="2",
        cpu_limit="4",
        memory="8Gi",
        workload="rendering",
        shm="2Gi",
        ephemeral_storage="8Gi",
    ),
    # encode the frames into a video: ffmpeg wants a few cores and holds frames in memory.
    "encode": Size(
        pool=CPU, cpu="1", cpu_limit="2", memory="2Gi", workload="rendering", ephemeral_storage="8Gi"
    ),
}
LIGHT_SIZES = frozenset({"bookkeeping"})

_DEFAULTS = {
    "FANOUT_CPU_POOL_SELECTOR": "fanout.io/pool=cpu",
    "FANOUT_CPU_TAINT": "",
    "FANOUT_GPU_POOL_SELECTOR": "fanout.io/pool=gpu",
    "FANOUT_GPU_TAINT": "nvidia.com/gpu=present:NoSchedule",
    "FANOUT_GPU_RESOURCE": "nvidia.com/gpu",
    "FANOUT_GPU_AIRFLOW_POOL": "fanout_gpu",
    "FANOUT_GPU_AIRFLOW_POOL_SLOTS": "1",
    "FANOUT_RENDER_POOL": GPU,
}
# Kubernetes names: a DNS subdomain prefix (optional) and a name part; label values.
_QUALIFIED = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_DNS_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


def _env(name: str, environ: Mapping[str, str] | None = None) -> str:
    return (os.environ if environ is None else environ).get(name, _DEFAULTS.get(name, "")).strip()


def _bad(name: str, raw: str, expected: str) -> ValueError:
    return ValueError(f"{name}={raw!r} is invalid: expected {expected}")


def _selector(name: str) -> dict[str, str]:
    """``k=v,k2=v2`` -> node labels."""
    raw = _env(name)
    labels: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not _QUALIFIED.match(key) or not _LABEL_VALUE.match(value):
            raise _bad(name, raw, "comma-separated node labels key=value, e.g. fanout.io/pool=gpu")
        labels[key] = value
    return labels


def _tolerations(name: str) -> list[k8s.V1Toleration]:
    """``key[=value]:Effect,...`` (the ``kubectl taint`` syntax) -> tolerations."""
    raw = _env(name)
    tolerations = []
    for item in filter(None, (part.strip() for part in raw.split(","))):
        taint, _, effect = item.rpartition(":")
        key, sep, value = taint.partition("=")
        if not _QUALIFIED.match(key) or effect not in _EFFECTS or not _LABEL_VALUE.match(value):
            raise _bad(name, raw, f"comma-separated taints key[=value]:Effect with Effect in {_EFFECTS}")
        tolerations.append(
            k8s.V1Toleration(key=key, operator="Equal", value=value, effect=effect)
            if sep
            else k8s.V1Toleration(key=key, operator="Exists", effect=effect)
        )
    return tolerations


def _name(name: str, pattern: re.Pattern = _DNS_NAME) -> str | None:
    raw = _env(name)
    if raw and not pattern.match(raw):
        raise _bad(name, raw, "a Kubernetes object name (lower-case letters, digits, '-', '.')")
    return raw or None


def render_pool() -> str:
    """The node pool of ``frames`` tasks."""
    pool = _env("FANOUT_RENDER_POOL").lower()
    if pool not in (CPU, GPU):
        raise _bad("FANOUT_RENDER_POOL", pool, "'gpu' or 'cpu'")
    return pool


def gpu_airflow_pool(environ: Mapping[str, str] | None = None) -> tuple[str, int]:
    """The Airflow pool gating GPU tasks and its slots (for ``airflow pools set``).

    ``environ`` reads the settings of another process (a local stack) instead of this one's.
    """
    name = _env("FANOUT_GPU_AIRFLOW_POOL", environ)
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,256}", name):
        raise _bad("FANOUT_GPU_AIRFLOW_POOL", name, "an Airflow pool name (letters, digits, '_', '.', '-')")
    raw = _env("FANOUT_GPU_AIRFLOW_POOL_SLOTS", environ)
    if not raw.isdigit() or int(raw) < 1:
        raise _bad("FANOUT_GPU_AIRFLOW_POOL_SLOTS", raw, "a positive integer: the GPUs in the GPU pool")
    return name, int(raw)


def light_task_executor() -> str | None:
    """The executor bookkeeping tasks run on, or None for the default executor."""
    raw = _env("FANOUT_LIGHT_TASK_EXECUTOR")
    if raw and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.:]*", raw):
        raise _bad("FANOUT_LIGHT_TASK_EXECUTOR", raw, "an executor name or alias, e.g. LocalExecutor")
    return raw or None


def pool_of(size: str) -> str:
    """``cpu`` or ``gpu``: the node pool a task of this size runs on."""
    spec = _size(size)
    return render_pool() if spec.pool == "render" else spec.pool


def _size(size: str) -> Size:
    try:
        return SIZES[size]
    except KeyError:
        raise ValueError(f"unknown task size {size!r}; sizes: {', '.join(SIZES)}") from None


def pod_override(size: str) -> k8s.V1Pod:
    """The pod fields a task of ``size`` adds to the worker pod template (helm/pod-template.yaml)."""
    spec = _size(size)
    pool = pool_of(size)
    gpu = pool == GPU
    requests = {"cpu": spec.cpu, "memory": spec.memory, "ephemeral-storage": spec.ephemeral_storage}
    limits = {"cpu": spec.cpu_limit, "memory": spec.memory, "ephemeral-storage": spec.ephemeral_storage}
    if gpu:
        resource = _env("FANOUT_GPU_RESOURCE")
        if not _QUALIFIED.match(resource) or "/" not in resource:
            raise _bad("FANOUT_GPU_RESOURCE", resource, "an extended resource name, e.g. nvidia.com/gpu")
        limits[resource] = "1"  # extended resources: request defaults to the limit

    volumes, mounts, env_from = [], [], []
    if gpu and spec.shm:
        volumes.append(
            k8s.V1Volume(
                name="dshm", empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory", size_limit=spec.shm)
            )
        )
        mounts.append(k8s.V1VolumeMount(name="dshm", mount_path="/dev/shm"))
    if claim := _name("FANOUT_ARTIFACT_PVC"):
        root = _env("FANOUT_ARTIFACT_ROOT")
        if not root.startswith("/"):
            raise _bad(
                "FANOUT_ARTIFACT_ROOT",
                root,
                "an absolute path (the mount point) when FANOUT_ARTIFACT_PVC is set",
            )
        volumes.append(
            k8s.V1Volume(
                name="artifacts",
                persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(claim_name=claim),
            )
        )
        mounts.append(k8s.V1VolumeMount(name="artifacts", mount_path=root))
    if secret := _name("FANOUT_OBJECT_STORE_SECRET"):
        env_from.append(k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=secret)))

    image = _env("FANOUT_GPU_IMAGE") if gpu else ""
    prefix = _env("FANOUT_PRIORITY_CLASS_PREFIX")
    priority_class = f"{prefix}{spec.workload}" if prefix else None
    if priority_class and not _DNS_NAME.match(priority_class):
        raise _bad("FANOUT_PRIORITY_CLASS_PREFIX", prefix, "a PriorityClass name prefix, e.g. fanout-")

    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(labels={"fanout.io/size": size, "fanout.io/pool": pool}),
        spec=k8s.V1PodSpec(
            containers=[
                k8s.V1Container(
                    name="base",
                    image=image or None,
                    resources=k8s.V1ResourceRequirements(requests=requests, limits=limits),
                    # GPU pods use CUDA when the node has it and fall back to the CPU otherwise;
                    # CPU pods skip probing for CUDA.
                    env=[k8s.V1EnvVar(name="FANOUT_DEVICE", value="auto" if gpu else "cpu")],
                    env_from=env_from or None,
                    volume_mounts=mounts or None,
                )
            ],
            node_selector=_selector("FANOUT_GPU_POOL_SELECTOR" if gpu else "FANOUT_CPU_POOL_SELECTOR")
            or None,
            affinity=None if gpu else _avoid_gpu_nodes(),
            # Replaces the template's tolerations: only GPU pods tolerate the GPU taint.
            tolerations=_tolerations("FANOUT_GPU_TAINT" if gpu else "FANOUT_CPU_TAINT") or None,
            priority_class_name=priority_class,
            service_account_name=_name("FANOUT_WORKER_SERVICE_ACCOUNT"),
            volumes=volumes or None,
        ),
    )


def _avoid_gpu_nodes() -> k8s.V1Affinity | None:
    """Keep CPU pods off GPU nodes even where the CPU pool has no label to select (empty selector)."""
    if _selector("FANOUT_CPU_POOL_SELECTOR"):
        return None
    terms = [
        k8s.V1NodeSelectorRequirement(key=key, operator="NotIn", values=[value])
        for key, value in _selector("FANOUT_GPU_POOL_SELECTOR").items()
    ]
    if not terms:
        return None
    return k8s.V1Affinity(
        node_affinity=k8s.V1NodeAffinity(
            required_during_scheduling_ignored_during_execution=k8s.V1NodeSelector(
                node_selector_terms=[k8s.V1NodeSelectorTerm(match_expressions=terms)]
            )
        )
    )


def placement(size: str) -> dict:
    """Keyword arguments for ``@task`` placing it on its node pool: ``@task(**placement("shard"))``."""
    kwargs: dict = {"executor_config": {"pod_override": pod_override(size)}}
    if pool_of(size) == GPU:
        kwargs["pool"] = gpu_airflow_pool()[0]
    if size in LIGHT_SIZES and (executor := light_task_executor()):
        kwargs["executor"] = executor
    return kwargs
