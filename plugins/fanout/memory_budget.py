"""A memory budget for a process tree, enforced by sampling: a container's memory limit, on a machine
without containers.

On Kubernetes the kernel enforces a task's memory limit (its pod's cgroup): past it, the OOM killer
ends the container's largest process. The LocalExecutor runs tasks as plain processes, where nothing
stops one task from taking the machine's memory (and the kernel's global OOM killer then picks any
process, the scheduler included). ``over_budget`` measures a task's process tree -- the task process
and every process it started (Dask workers, DataLoader workers) -- as its proportional set size (PSS:
pages shared with other processes, such as those a fork inherited, are split among the sharers) and,
past the budget, SIGKILLs the tree's largest process, as the kernel would.

It samples (``fanout.local_executor`` every 0.25 s), so a process allocating faster than that passes
its budget until the next sample; page cache is not counted. Linux only (``/proc/<pid>/smaps_rollup``).
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class Breach:
    """A tree found over its budget, and the process stopped for it."""

    held: int  # bytes (PSS) the tree held
    budget: int
    killed_pid: int
    killed_held: int


def tree_usage(root: psutil.Process) -> dict[int, int]:
    """PSS in bytes of ``root`` and each of its descendants, by pid (processes that vanish are skipped)."""
    usage = {}
    try:
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return usage
    for process in processes:
        try:
            usage[process.pid] = process.memory_full_info().pss
        except psutil.Error:  # exited meanwhile, or not ours to read
            continue
    return usage


def over_budget(root: psutil.Process, budget: int) -> Breach | None:
    """If the tree of ``root`` holds more than ``budget`` bytes, SIGKILL its largest process and say so."""
    usage = tree_usage(root)
    held = sum(usage.values())
    if held <= budget:
        return None
    pid = max(usage, key=usage.__getitem__)
    try:
        psutil.Process(pid).send_signal(signal.SIGKILL)
    except psutil.NoSuchProcess:
        return None  # it ended by itself
    return Breach(held=held, budget=budget, killed_pid=pid, killed_held=usage[pid])
