"""The pod fields a task of a given size adds to the worker pod template (helm/pod-template.yaml).

Used where pods are made (``fanout.executors.FanoutKubernetesExecutor``), never at DAG parse
time: importing ``kubernetes.client`` loads every API model (~0.2 s, ~40 MB).
"""

from __future__ import annotations

from kubernetes.client import models as k8s

from fanout.pools import GPU, SIZE_KEY, pool_of, size_of
from fanout.settings import Settings, Taint, settings


def _tolerations(taints: tuple[Taint, ...]) -> list[k8s.V1Toleration]:
    return [
        k8s.V1Toleration(key=t.key, operator="Exists", effect=t.effect)
        if t.value is None
        else k8s.V1Toleration(key=t.key, operator="Equal", value=t.value, effect=t.effect)
        for t in taints
    ]


def pod_override(size: str) -> k8s.V1Pod:
    """The pod fields of a task of ``size``: node pool, resources, GPU, /dev/shm, storage, credentials."""
    spec = size_of(size)
    pool = pool_of(size)
    current = settings()
    gpu = pool == GPU
    requests = {"cpu": spec.cpu, "memory": spec.memory, "ephemeral-storage": spec.ephemeral_storage}
    limits = {"cpu": spec.cpu_limit, "memory": spec.memory, "ephemeral-storage": spec.ephemeral_storage}
    if gpu:
        limits[current.gpu_resource] = "1"  # extended resources: request defaults to the limit

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
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(labels={"fanout.io/size": size, "fanout.io/pool": pool}),
        spec=k8s.V1PodSpec(
            containers=[
                k8s.V1Container(
                    name="base",
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
            affinity=None if gpu else _avoid_gpu_nodes(current),
            # Replaces the template's tolerations: only GPU pods tolerate the GPU taint.
            tolerations=_tolerations(current.gpu_taint if gpu else current.cpu_taint) or None,
            priority_class_name=f"{prefix}{spec.workload}" if prefix else None,
            service_account_name=current.worker_service_account,
            volumes=volumes or None,
        ),
    )


def resolve_executor_config(executor_config: dict | None) -> dict:
    """A task's ``executor_config`` as the KubernetesExecutor takes it: the size made into a pod_override.

    Raises ``ValueError`` for an unknown size or a bad setting (no pod could be made for it).
    """
    config = dict(executor_config or {})
    size = config.pop(SIZE_KEY, None)
    if size is not None and "pod_override" not in config:
        config["pod_override"] = pod_override(size)
    return config


def _avoid_gpu_nodes(current: Settings) -> k8s.V1Affinity | None:
    """Keep CPU pods off GPU nodes even where the CPU pool has no label to select (empty selector)."""
    if current.cpu_pool_selector or not current.gpu_pool_selector:
        return None
    terms = [
        k8s.V1NodeSelectorRequirement(key=key, operator="NotIn", values=[value])
        for key, value in current.gpu_pool_selector.items()
    ]
    return k8s.V1Affinity(
        node_affinity=k8s.V1NodeAffinity(
            required_during_scheduling_ignored_during_execution=k8s.V1NodeSelector(
                node_selector_terms=[k8s.V1NodeSelectorTerm(match_expressions=terms)]
            )
        )
    )
