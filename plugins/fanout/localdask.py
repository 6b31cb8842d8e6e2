"""The embedded default's Dask: a real ``dask scheduler`` and ``dask worker`` processes beside Airflow.

``LocalDaskCluster`` starts ``python -m dask scheduler`` (loopback only, dashboard on a free
port) and one ``python -m dask worker --nthreads 1`` per CPU this machine grants (its cgroup
CPU limit and cpuset): single-threaded worker processes, because cleaning and featurising are
GIL-bound pandas work that threads would serialise. Every worker process has its nanny (which
restarts it if it dies) and ``memory_fraction`` of the machine's memory split between them.

Each command runs in its own session, so ``stop()`` ends it and its children, and so the
kernel's scheduler treats each worker as a unit of its own, as a pod would be: with
autogroup scheduling (``/proc/sys/kernel/sched_autogroup_enabled``), the processes of one
session share one CPU share, and two workers of one ``--nworkers 2`` command would get no more
CPU than one on a busy machine.

It also does what Kubernetes does for the chart's Deployments: the scheduler and each worker
command are components of a ``fanout.supervise.Supervisor``, restarted with backoff when they
exit (a crash, a ``kill -9``), on the same addresses, and said; workers whose scheduler went away
exit and come back with it. Within ``fanout.localstack.AirflowStack(dask=True)`` they are the
stack's components, beside Airflow's (``make demo``, ``make up``, the end-to-end tests and the
benchmarks): stopped with the stack, and ended by its reaper even if the stack's owner is killed.
On its own (unit tests, ``bench/``) the cluster has a supervisor and a reaper of its own.

The stack gives every Airflow process ``DASK_SCHEDULER_ADDRESS``.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fanout.compute import cgroup_cpu_limit
from fanout.supervise import (
    TAG_VARIABLE,
    Component,
    ComponentExited,
    Reaper,
    Supervisor,
    is_zombie,
    members_or_tagged,
)

HOST = "127.0.0.1"


def machine_cpus() -> int:
    """CPUs this machine grants the stack: the cpuset, capped by a cgroup CPU limit."""
    cpus = len(os.sched_getaffinity(0))
    limit = cgroup_cpu_limit()
    if limit is not None:
        cpus = min(cpus, max(1, int(limit)))
    return max(1, cpus)


def machine_memory() -> int:
    """Bytes of memory this machine grants the stack (a cgroup memory limit, else all of it)."""
    from distributed.system import MEMORY_LIMIT  # psutil's total, capped by a cgroup v1/v2 limit

    return int(MEMORY_LIMIT)


class DaskClusterError(RuntimeError):
    """The local scheduler or workers did not start."""


@dataclass
class LocalDaskCluster:
    """A Dask scheduler and its worker processes on this machine, restarted if they exit."""

    home: Path
    workers: int = 0
    """Worker processes (one thread each); 0 means one per CPU (``machine_cpus``)."""
    memory_fraction: float = 0.5
    """Share of the machine's memory the workers may hold together (Airflow needs the rest)."""
    port: int = 0
    dashboard_port: int = 0
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment of both commands (the artifact store's credentials, say)."""
    report: Callable[[str], None] = field(default=lambda message: print(message, file=sys.stderr, flush=True))
    """Where a cluster of its own says that a command exited and is restarted."""
    tag: str = field(default="", init=False)
    """What every process of the running cluster carries as ``FANOUT_STACK_TAG`` (the reaper's key)."""
    _supervisor: Supervisor | None = field(default=None, init=False, repr=False)
    _own: tuple[Supervisor, Reaper] | None = field(default=None, init=False, repr=False)
    """The supervisor and reaper of a cluster started on its own (not by a stack)."""

    def __post_init__(self) -> None:
        from fanout.localstack import free_port

        self.home = Path(self.home).resolve()
        self.workers = self.workers or machine_cpus()
        self.port = self.port or free_port()
        self.dashboard_port = self.dashboard_port or free_port()

    # -- addresses ------------------------------------------------------------------------
    @property
    def address(self) -> str:
        return f"tcp://{HOST}:{self.port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{HOST}:{self.dashboard_port}/status"

    @property
    def worker_memory_limit(self) -> int:
        return int(machine_memory() * self.memory_fraction / self.workers)

    def commands(self) -> dict[str, list[str]]:
        """The scheduler's and each worker's command line, as the chart's containers would run them."""
        python = [sys.executable, "-m", "dask"]
        worker = [
            *python,
            "worker",
            self.address,
            "--nthreads",
            "1",
            "--memory-limit",
            str(self.worker_memory_limit),
            "--host",
            HOST,
            "--no-dashboard",
            "--local-directory",
            str(self.home / "worker-space"),
        ]
        return {
            "scheduler": [
                *python,
                "scheduler",
                "--host",
                HOST,
                "--port",
                str(self.port),
                "--dashboard-address",
                f"{HOST}:{self.dashboard_port}",
            ],
            **{f"worker-{i}": [*worker, "--name", f"local-{i}"] for i in range(self.workers)},
        }

    def _env(self, tag: str) -> dict[str, str]:
        plugins = str(Path(__file__).resolve().parents[1])
        path = os.pathsep.join(
            p for p in (plugins, self.env.get("PYTHONPATH") or os.environ.get("PYTHONPATH")) if p
        )
        return {**os.environ, **self.env, "PYTHONPATH": path, TAG_VARIABLE: tag}

    def components(self, tag: str) -> list[Component]:
        """The scheduler's and each worker's command as supervised components (``dask-<name>``)."""
        env = self._env(tag)
        return [
            Component(
                f"dask-{name}", argv, env=env, cwd=self.home, log=self.home / "logs" / f"dask-{name}.log"
            )
            for name, argv in self.commands().items()
        ]

    # -- lifecycle ------------------------------------------------------------------------
    def start(
        self,
        supervisor: Supervisor | None = None,
        tag: str | None = None,
        timeout: float = 120,
        wait: bool = True,
    ) -> None:
        """Start the scheduler and the workers; return once every worker has joined (``wait``).

        ``supervisor`` and ``tag`` are a stack's (``fanout.localstack``): its supervisor restarts
        them and its reaper, which finds processes by ``tag``, ends them. Without them the
        cluster starts a supervisor and a reaper of its own, and watches at once. A stack passes
        ``wait=False`` and calls ``wait_for_workers`` once Airflow is starting too.
        """
        self.home.mkdir(parents=True, exist_ok=True)
        if supervisor is None:
            tag = uuid.uuid4().hex
            reaper = Reaper(tag)
            supervisor = Supervisor(report=self.report, on_start=reaper.watch)
            self._own = (supervisor, reaper)
        elif tag is None:
            raise ValueError("a stack's supervisor comes with the stack's tag")
        self._supervisor, self.tag = supervisor, tag
        try:
            for component in self.components(tag):
                supervisor.start(component)
            if wait:
                self.wait_for_workers(self.workers, timeout)
        except BaseException:
            self.stop()
            raise
        if self._own is not None:
            supervisor.watch()

    def wait_for_workers(self, count: int, timeout: float = 120) -> None:
        from distributed import Client

        deadline = time.monotonic() + timeout
        while True:
            self._check_started()
            try:
                with Client(self.address, timeout=5, set_as_default=False) as client:
                    client.wait_for_workers(count, timeout=max(1.0, deadline - time.monotonic()))
                    return
            except (OSError, TimeoutError) as exc:
                if time.monotonic() > deadline:
                    raise DaskClusterError(
                        f"{count} Dask worker(s) did not join {self.address} within {timeout}s ({exc}); "
                        f"logs in {self.home / 'logs'}"
                    ) from None

    def _check_started(self) -> None:
        """While starting, a command that exits is a configuration error, not one to restart."""
        try:
            self._supervisor.check_started(f"dask-{name}" for name in self.commands())
        except ComponentExited as exc:
            raise DaskClusterError(f"dask: {exc}") from None

    @property
    def restarts(self) -> dict[str, int]:
        """Times each command (``scheduler``, ``worker-0``, ...) exited unasked and was restarted."""
        counts = dict.fromkeys(self.commands(), 0)
        for name, _status, _lived in self._supervisor.restarts if self._supervisor else ():
            short = name.removeprefix("dask-")
            if name.startswith("dask-") and short in counts:
                counts[short] += 1
        return counts

    def processes(self) -> list[int]:
        """Every live process of the cluster's commands, found by session as its reaper finds them
        (Dask retitles its processes, which hides the tag in their environment); zombies are dead."""
        if self._supervisor is None:
            return []
        sessions = [s for name in self.commands() for s in self._supervisor.sessions_of(f"dask-{name}")]
        return [pid for pid in members_or_tagged(sessions, None) if not is_zombie(pid)]

    def pids(self) -> dict[str, int]:
        """Process ids of the scheduler's and of each worker's command (the worker's nanny)."""
        if self._supervisor is None:
            return {}
        return {
            name: pid for name in self.commands() if (pid := self._supervisor.pid(f"dask-{name}")) is not None
        }

    def stop(self, grace: float = 10) -> None:
        """Stop the workers, then the scheduler, and every process they started."""
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is None:
            return
        if self._own is None:  # a stack's: it stops them with its other components, or now
            for name in [n for n in self.commands() if n != "scheduler"] + ["scheduler"]:
                supervisor.stop_component(f"dask-{name}", grace)
            return
        own_supervisor, reaper = self._own
        self._own = None
        own_supervisor.stop(grace)
        reaper.close()

    def __enter__(self) -> LocalDaskCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
