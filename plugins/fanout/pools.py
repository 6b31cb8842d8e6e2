"""Node pools and task sizes: where each task runs and what it may use.

A DAG task says only how big it is::

    @task(**placement("trial"))
    def train_trial(...): ...

``placement(size)`` names the size in the task's ``executor_config`` and adds the Airflow
pool that gates GPU work and, for bookkeeping tasks, the light-task executor when the
deployment configures one. It is plain data: DAG files never import ``kubernetes`` (its
client costs ~0.2 s and ~40 MB per parse). ``fanout.executors.FanoutKubernetesExecutor``
turns the size into the pod's node pool, resources and GPU when it creates the pod
(``fanout.pods.pod_override``); the LocalExecutor ignores it.

Pool labels, taints and names come from ``fanout.settings`` (the README's "Settings" table).
``SIZES`` are the defaults; a deployment sizes tasks to its nodes with ``FANOUT_TASK_SIZES``
(``helm/fanout`` value ``taskSizes``), which ``size_of`` applies.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from fanout.settings import format_bytes, parse_quantity, settings

CPU = "cpu"
GPU = "gpu"
SIZE_KEY = "fanout_size"
"""The ``executor_config`` key naming a task's size."""
MAX_MEMORY_FACTOR = 3
"""A size's ``max_memory`` when unset, times its memory: room for the two raises (1.5x each) of the
default two retries after OOM kills."""


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
    max_memory: str | None = None
    """The most memory a retry after an OOM kill may get (``fanout.retries``; also no more than the
    largest node of the pool has). None: ``MAX_MEMORY_FACTOR`` times ``memory``."""

    @property
    def memory_ceiling(self) -> str:
        """``max_memory``, or ``MAX_MEMORY_FACTOR`` times ``memory`` when unset."""
        if self.max_memory:
            return self.max_memory
        return format_bytes(int(parse_quantity(self.memory)) * MAX_MEMORY_FACTOR)


# The one table of task sizes. GPU pods get 1 GPU, the GPU taint toleration and /dev/shm.
SIZES: dict[str, Size] = {
    # fan-in and planning: read manifests, write a small JSON; an Airflow worker process
    # (~160 MB) plus headroom.
    "bookkeeping": Size(pool=CPU, cpu="250m", cpu_limit="1", memory="768Mi", workload="bookkeeping"),
    # a client of the shared Dask cluster for one shard (fanout.daskrun): it reads the shard's
    # footer, submits the graph and commits what the workers wrote; nothing large comes back.
    "shard": Size(pool=CPU, cpu="250m", cpu_limit="1", memory="1Gi", workload="preprocessing"),
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
    # one raw shard generated a row group at a time: one core; memory holds two row groups
    # whatever the shard's size; the file is staged on local disk before an object-store PUT.
    "generate": Size(
        pool=CPU, cpu="1", cpu_limit="1", memory="1Gi", workload="preprocessing", ephemeral_storage="8Gi"
    ),
}
LIGHT_SIZES = frozenset({"bookkeeping"})


def size_of(size: str) -> Size:
    """The size as this deployment has it: the table's, with ``FANOUT_TASK_SIZES`` applied."""
    try:
        spec = SIZES[size]
    except KeyError:
        raise ValueError(f"unknown task size {size!r}; sizes: {', '.join(SIZES)}") from None
    override = settings().task_sizes.get(size)
    return replace(spec, **override.model_dump(exclude_none=True)) if override else spec


def pool_of(size: str) -> str:
    """``cpu`` or ``gpu``: the node pool a task of this size runs on."""
    spec = size_of(size)
    return settings().render_pool if spec.pool == "render" else spec.pool


def placement(size: str) -> dict:
    """Keyword arguments for ``@task`` placing it on its node pool: ``@task(**placement("shard"))``."""
    pool = pool_of(size)
    current = settings()
    kwargs: dict = {"executor_config": {SIZE_KEY: size}}
    if pool == GPU:
        kwargs["pool"] = current.gpu_airflow_pool
    if size in LIGHT_SIZES and current.light_task_executor:
        kwargs["executor"] = current.light_task_executor
    return kwargs
