"""Containers' memory limits, enforced as a node's kernel does: the OOM killer of the memory cgroup.

A container's memory limit (``resources.limits.memory``) is its cgroup's limit. When the pages
charged to the cgroup exceed it, the kernel's OOM killer picks the process with the largest
resident memory in that cgroup and SIGKILLs it -- on cgroup v1 nodes, and on cgroup v2 with the
kubelet's ``singleProcessOOMKill``, *that process alone*: the container's main process (PID 1)
only when it is itself the largest, so a supervisor whose child was killed lives on. On cgroup v2
nodes with Kubernetes >= 1.28 the kubelet sets ``memory.oom.group``, and the kernel kills every
process of the container instead (``group=True`` here). Either way the runtime records the OOM
event: the container's terminated reason is then ``OOMKilled``, whatever its main process's exit
code (0 when a supervisor exited normally after its child was killed).

The harness has no cgroups: every pod process runs in this machine's. So the charge is measured:
the container's processes are its main process and its descendants; a cgroup charges each page
once, which the sum of their proportional set sizes (PSS) approximates (resident sizes would count
the pages a forked child shares with its parent twice). Resident sizes, cheap to read, are summed
first; only when they exceed the limit is the PSS read (it costs a walk of the page tables). The
check runs every ``interval`` seconds, so a process that allocates faster than that overshoots
the limit by what it allocates in the meantime before it is killed; a real kernel stops it at
the limit.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterable

import psutil


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it, from the kernel's per-thread children lists."""
    found = [pid]
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for thread in threads:
        try:
            with open(f"/proc/{pid}/task/{thread}/children") as children:
                for child in children.read().split():
                    found += descendants(int(child))
        except OSError:
            continue
    return found


def _processes(pids: Iterable[int]) -> list[psutil.Process]:
    processes = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            processes.append(psutil.Process(pid))
    return processes


def resident(process: psutil.Process) -> int:
    try:
        return process.memory_info().rss
    except psutil.Error:
        return 0


def charged(processes: Iterable[psutil.Process]) -> int:
    """What the container's cgroup would be charged: each page once (the processes' PSS, summed)."""
    total = 0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            total += process.memory_full_info().pss
    return total


def oom_kill(main_pid: int, *, group: bool = False) -> list[int]:
    """The OOM killer acting on one container: SIGKILL its largest process (or, with ``group``,
    all of them). Returns the pids killed."""
    processes = _processes(descendants(main_pid))
    if not processes:
        return []
    victims = processes if group else [max(processes, key=resident)]
    for victim in victims:
        with contextlib.suppress(psutil.Error):
            victim.send_signal(signal.SIGKILL)
    return [victim.pid for victim in victims]


def over_limit(main_pid: int, limit: int) -> bool:
    """Whether the container's processes hold more memory than its limit."""
    processes = _processes(descendants(main_pid))
    if sum(resident(process) for process in processes) <= limit:
        return False
    return charged(processes) > limit
