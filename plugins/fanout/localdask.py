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

It also does what Kubernetes does for the chart's Deployments: a supervisor thread restarts
the scheduler or a worker command when it exits (a crash, a ``kill -9``), on the same
addresses; workers whose scheduler went away exit and come back with it.

Used by ``fanout.localstack.AirflowStack(dask=True)`` (``make demo``, ``make up``, the
end-to-end tests and the benchmarks), which gives every Airflow process
``DASK_SCHEDULER_ADDRESS``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from fanout.compute import cgroup_cpu_limit

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
    restarts: dict[str, int] = field(default_factory=dict, init=False)
    """Times the supervisor restarted each command: ``scheduler``, ``worker-0``, ..."""
    _procs: dict[str, subprocess.Popen] = field(default_factory=dict, init=False, repr=False)
    _stopping: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _supervisor: threading.Thread | None = field(default=None, init=False, repr=False)

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

    def _env(self) -> dict[str, str]:
        plugins = str(Path(__file__).resolve().parents[1])
        path = os.pathsep.join(
            p for p in (plugins, self.env.get("PYTHONPATH") or os.environ.get("PYTHONPATH")) if p
        )
        return {**os.environ, **self.env, "PYTHONPATH": path}

    # -- lifecycle ------------------------------------------------------------------------
    def _spawn(self, name: str) -> None:
        log_path = self.home / "logs" / f"dask-{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("a") as log:
            self._procs[name] = subprocess.Popen(
                self.commands()[name],
                env=self._env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # stop() ends the nannies and their workers with it
                cwd=self.home,
            )

    def start(self, timeout: float = 120) -> None:
        """Start the scheduler and the workers; return once every worker has joined."""
        self.home.mkdir(parents=True, exist_ok=True)
        self._stopping.clear()
        for name in self.commands():
            self.restarts[name] = 0
            self._spawn(name)
        try:
            self.wait_for_workers(self.workers, timeout)
        except BaseException:
            self.stop()
            raise
        self._supervisor = threading.Thread(target=self._supervise, name="dask-supervisor", daemon=True)
        self._supervisor.start()

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
        if self._supervisor is not None:
            return  # restarts are the supervisor's business
        for name, proc in self._procs.items():
            if proc.poll() is not None:
                log = self.home / "logs" / f"dask-{name}.log"
                tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-5:])
                raise DaskClusterError(f"dask {name} exited with {proc.returncode}; see {log}:\n{tail}")

    def _supervise(self) -> None:
        while not self._stopping.wait(0.5):
            with self._lock:
                if self._stopping.is_set():
                    return
                for name, proc in list(self._procs.items()):
                    if proc.poll() is not None:
                        self.restarts[name] += 1
                        self._spawn(name)

    def pids(self) -> dict[str, int]:
        """Process ids of the scheduler's and of each worker's command (the worker's nanny)."""
        return {name: proc.pid for name, proc in self._procs.items()}

    def stop(self, grace: float = 10) -> None:
        """Stop the workers, then the scheduler, and every process they started."""
        self._stopping.set()
        with self._lock:
            workers = [self._procs.pop(name) for name in list(self._procs) if name != "scheduler"]
            _stop_groups(workers, grace)
            _stop_groups([proc for proc in (self._procs.pop("scheduler", None),) if proc], grace)
        if self._supervisor is not None:
            self._supervisor.join(5)
            self._supervisor = None

    def __enter__(self) -> LocalDaskCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _stop_groups(procs: list[subprocess.Popen], grace: float) -> None:
    """SIGTERM the processes' groups, wait up to ``grace`` seconds, then SIGKILL what is left of them."""
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(max(0.0, deadline - time.monotonic()))
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the leader may be gone, its nanny's worker not
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
