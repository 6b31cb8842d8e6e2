"""fanout settings, read from the environment.

The same variable names are used by the Makefile's local stack, docker-compose.yml, the
Helm chart's ConfigMap and the worker pod template, so one name means one thing everywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# plugins/fanout/config.py -> repository (or image) root
_PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _cgroup_cpus() -> float | None:
    """CPUs granted by a cgroup v2 quota (a pod's CPU limit), if any."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return int(quota) / int(period)


def available_cpus() -> int:
    """CPUs this task may use: FANOUT_TASK_CPUS, else the pod's CPU limit, else the affinity mask."""
    explicit = os.environ.get("FANOUT_TASK_CPUS")
    if explicit:
        return max(1, int(float(explicit)))
    cpus = len(os.sched_getaffinity(0))
    limit = _cgroup_cpus()
    if limit is not None:
        cpus = min(cpus, max(1, int(limit)))
    return max(1, cpus)


@dataclass(frozen=True)
class Settings:
    artifact_root: str
    """Base location of every artifact: a local directory or an fsspec URI (s3://bucket/prefix)."""
    dask_scheduler_address: str | None
    """An external Dask scheduler (tcp://host:8786); unset means a LocalCluster per task."""
    device: str
    """'auto' (CUDA when present), 'cpu' or 'cuda'."""


def settings() -> Settings:
    return Settings(
        artifact_root=os.environ.get("FANOUT_ARTIFACT_ROOT") or str(_PROJECT_ROOT / "artifacts"),
        dask_scheduler_address=os.environ.get("DASK_SCHEDULER_ADDRESS") or None,
        device=os.environ.get("FANOUT_DEVICE", "auto"),
    )


def torch_device(preference: str | None = None):
    """The torch device to compute on: CUDA when available unless 'cpu' is asked for."""
    import torch

    pref = preference or settings().device
    if pref == "cpu":
        return torch.device("cpu")
    if pref == "cuda" or (pref == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")
