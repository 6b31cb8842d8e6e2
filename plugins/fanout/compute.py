"""What a task process may compute on: how many CPUs, which torch device.

A pod's CPU limit is a cgroup quota, not a smaller CPU count: ``os.cpu_count()`` and the
affinity mask still show every core of the node, so Dask and torch would oversubscribe a
limited pod. The limit is read from cgroup v2 (``cpu.max``) or v1 (``cpu.cfs_quota_us`` /
``cpu.cfs_period_us``; real nodes still run v1), and the cpuset through the affinity mask.
"""

from __future__ import annotations

import os
from pathlib import Path

from fanout.settings import settings

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _quota(quota: str, period: str) -> float | None:
    """CPUs of a CFS quota; None for no limit (v2 ``max``, v1 ``-1``)."""
    if quota.strip() in ("max", "-1"):
        return None
    return int(quota) / int(period)


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs granted by this process's cgroup quota (a pod's CPU limit), if any."""
    try:  # cgroup v2: one unified hierarchy, "quota period" in cpu.max
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return _quota(quota, period)
    except (OSError, ValueError):
        pass
    for controller in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):  # cgroup v1: a cpu controller mount
        base = root / controller
        try:
            return _quota((base / "cpu.cfs_quota_us").read_text(), (base / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
    return None


def available_cpus(root: Path = CGROUP_ROOT) -> int:
    """CPUs this task may use: FANOUT_TASK_CPUS, else the pod's CPU limit and cpuset, else every core."""
    explicit = settings().task_cpus
    if explicit:
        return max(1, int(explicit))
    cpus = len(os.sched_getaffinity(0))  # the cpuset (v1 and v2) is applied to the affinity mask
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cpus = min(cpus, max(1, int(limit)))
    return max(1, cpus)


def torch_device(preference: str | None = None):
    """The torch device to compute on: CUDA when available unless 'cpu' is asked for."""
    import torch

    pref = preference or settings().device
    if pref == "cpu":
        return torch.device("cpu")
    if pref == "cuda" or (pref == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")
