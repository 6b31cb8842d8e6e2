"""A benchmark's Airflow: ``fanout.localstack`` plus a sampler of every Airflow process.

The DAGs folder is assembled per stack from ``dags/`` (the product) and ``bench/dags/`` (the
no-op fan-out), so one stack serves every benchmark. Artifacts go to a temporary directory.
``plain=True`` is the anchor: the same settings, but Airflow's own LocalExecutor, no plugins and
only the no-op DAG, i.e. plain Airflow.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Generator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench.common import (
    BENCH_DIR,
    PROJECT_ROOT,
    CpuSnapshot,
    cpu_snapshot,
    log_to_stderr,
    other_load,
    rnd,
    ts,
)
from fanout.localstack import LOCAL_EXECUTOR, AirflowClient, AirflowError, AirflowStack

PRODUCT_DAGS = ("fanout_preprocess", "fanout_train", "fanout_render")
AIRFLOW_DEFAULT_HEARTBEAT_INTERVAL_S = 5.0  # Airflow's own [workers] min_heartbeat_interval
SHIPPED_HEARTBEAT_INTERVAL_S = 1.0  # what fanout.localstack sets
BENCH_DAGS = ("bench_noop",)


def _stack_sessions() -> list[int]:
    """Session ids of the stack's components (PostgreSQL included).

    ``AirflowStack`` starts each component with ``start_new_session``, so they are the children
    of this process that lead their own session. Task processes move to their own process
    group (the supervisor calls ``setpgid``) but stay in the session, so sessions, not groups,
    find every Airflow process. PostgreSQL's backends start sessions of their own: they are
    found as children of the postmaster.
    """
    leaders = []
    for child in psutil.Process().children():
        try:
            if os.getsid(child.pid) == child.pid and "fanout.supervise" not in " ".join(child.cmdline()):
                leaders.append(child.pid)  # not the reaper: it leads a session too, and only waits
        except (ProcessLookupError, psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return leaders


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@dataclass
class Sample:
    at: float
    rss: int
    cpu: float
    processes: int
    cpu_by_component: dict[str, float]
    machine: CpuSnapshot


def _component(leader: int) -> str:
    """api-server, scheduler, dag-processor, dask-scheduler or dask-worker: a session leader's command line."""
    try:
        cmdline = " ".join(psutil.Process(leader).cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return str(leader)
    for name in ("scheduler", "worker"):
        if f"-m dask {name}" in cmdline:  # fanout.localdask: python -m dask scheduler|worker
            return f"dask-{name}"
    for name in ("api-server", "api_server", "dag-processor", "dag_processor", "scheduler", "triggerer"):
        if name in cmdline:
            return name.replace("_", "-")
    if "postgres" in cmdline:
        return "postgres"
    return str(leader)


@dataclass
class ProcessMonitor:
    """Samples summed RSS and CPU time of every process in the stack's sessions.

    RSS double-counts pages shared after fork(), so the sum is an upper bound of what the
    processes need together. CPU time of a process that exited moves into its parent's
    ``children_*`` times when it is reaped, so the sum over live processes stays cumulative.
    """

    interval: float = 0.25
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="bench-process-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)

    def _run(self) -> None:
        cache: dict[int, psutil.Process] = {}
        names: dict[int, str] = {}
        while not self._stop.is_set():
            self.samples.append(self.sample(cache, names))
            self._stop.wait(self.interval)

    @staticmethod
    def sample(cache: dict[int, psutil.Process], names: dict[int, str]) -> Sample:
        sessions = set(_stack_sessions())
        rss, count = 0, 0
        by_session: dict[int, float] = dict.fromkeys(sessions, 0.0)
        loop: dict[int, float] = {}
        seen = set()
        # PostgreSQL's backends lead sessions of their own: count them with their postmaster.
        adopted = {
            child: sid
            for sid in sessions
            if names.setdefault(sid, _component(sid)) == "postgres"
            for child in _children(sid)
        }
        for pid in psutil.pids():
            try:
                sid = os.getsid(pid)
                if sid not in sessions:
                    sid = adopted.get(pid, sid)
                    if sid not in sessions:
                        continue
                proc = cache.get(pid) or cache.setdefault(pid, psutil.Process(pid))
                with proc.oneshot():
                    times = proc.cpu_times()
                    rss += proc.memory_info().rss
                by_session[sid] += times.user + times.system + times.children_user + times.children_system
                if pid == sid:
                    loop[sid] = times.user + times.system  # the component's own process, children aside
                count += 1
                seen.add(pid)
            except (ProcessLookupError, psutil.NoSuchProcess, psutil.AccessDenied, PermissionError):
                continue
        for pid in set(cache) - seen:
            del cache[pid]
        by_component: dict[str, float] = {}
        for sid, cpu in by_session.items():
            name = names.setdefault(sid, _component(sid))
            if name == "scheduler" and sid in loop:
                # The scheduler's own loop, and its LocalExecutor workers with their task processes
                # (a task's CPU time moves into its worker's children times when it is reaped).
                by_component["scheduler loop"] = by_component.get("scheduler loop", 0.0) + loop[sid]
                by_component["workers and tasks"] = (
                    by_component.get("workers and tasks", 0.0) + cpu - loop[sid]
                )
            else:
                by_component[name] = by_component.get(name, 0.0) + cpu
        return Sample(time.monotonic(), rss, sum(by_session.values()), count, by_component, cpu_snapshot())

    def window(self, start: float, end: float) -> dict:
        """Peak RSS and CPU seconds used between two ``time.monotonic()`` instants."""
        inside = [s for s in self.samples if start <= s.at <= end]
        if not inside:
            return {
                "peak_rss_mib": None,
                "cpu_s": None,
                "peak_processes": None,
                "cpu_s_by_component": None,
                "other_load_cores": None,
            }
        first, last = inside[0].cpu_by_component, inside[-1].cpu_by_component
        return {
            "peak_rss_mib": round(max(s.rss for s in inside) / 2**20, 1),
            "cpu_s": rnd(inside[-1].cpu - inside[0].cpu, 2),
            "peak_processes": max(s.processes for s in inside),
            # The scheduler's share includes its LocalExecutor workers and every task process.
            "cpu_s_by_component": {name: rnd(last[name] - first.get(name, 0.0), 2) for name in last},
            # Other engineers' processes on a shared machine: why one run's ratio may be off.
            "other_load_cores": other_load(inside[0].machine, inside[-1].machine),
        }


@dataclass
class BenchStack:
    """A started stack: its REST client, home, artifact root and process monitor."""

    stack: AirflowStack
    client: AirflowClient
    monitor: ProcessMonitor
    artifact_root: Path
    parallelism: int
    started_s: float
    overrides: dict[str, str]
    plain: bool = False
    """The anchor: plain Airflow with the same settings."""
    stopped_s: float | None = None
    """How long stopping it took (set when ``bench_stack`` has stopped it)."""

    @property
    def logs(self) -> Path:
        return self.stack.home / "logs"

    def run_dag(self, dag_id: str, conf: dict, timeout: float = 900) -> dict:
        """Trigger one run and wait for it; returns the run with its task instances and window."""
        self.client.unpause(dag_id)
        began = time.monotonic()
        run_id = self.client.trigger(dag_id, conf)
        run = self.client.wait_run(dag_id, run_id, timeout=timeout, interval=0.5)
        ended = time.monotonic()
        return _finished_run(self, dag_id, run, began, ended)


def _finished_run(bench: BenchStack, dag_id: str, run: dict, began: float, ended: float) -> dict:
    run_id = run["dag_run_id"]
    tis = bench.client.task_instances(dag_id, run_id)
    if run["state"] != "success":
        failed = [f"{t['task_id']}[{t['map_index']}]={t['state']}" for t in tis if t["state"] != "success"]
        raise AirflowError(f"{dag_id} {run_id} ended {run['state']}: {', '.join(failed[:8])}")
    return {
        "dag_id": dag_id,
        "run_id": run_id,
        "state": run["state"],
        "wall_s": ts(run["end_date"]) - ts(run["start_date"]),
        "client_wall_s": ended - began,
        "task_instances": tis,
        "resources": bench.monitor.window(began, ended),
    }


def _dags_folder(home: Path, plain: bool = False) -> Path:
    folder = home / "dags"
    folder.mkdir(parents=True, exist_ok=True)
    product = [] if plain else sorted((PROJECT_ROOT / "dags").glob("*.py"))
    for source in (*product, *sorted((BENCH_DIR / "dags").glob("*.py"))):
        shutil.copy2(source, folder / source.name)
    return folder


@contextmanager
def bench_stack(
    parallelism: int,
    overrides: dict[str, str] | None = None,
    fanout_params: dict | None = None,
    task_cpus: int | None = None,
    artifact_root: Path | None = None,
    dask: bool = True,
    plain: bool = False,
    database: str | None = None,
) -> Generator[BenchStack, None, None]:
    """Start a stack for benchmarks, wait for every DAG, stop it and remove its files at the end.

    ``dask`` starts the embedded default's Dask beside it (one single-threaded worker process
    per core) for the preprocessing shard tasks, as ``make demo`` does.

    ``task_cpus=1`` pins every task to one thread, so that a speedup measures the fan-out alone
    (the stack would give a task cores/parallelism threads). ``artifact_root`` lets stacks and
    ``Pool.map`` share pre-generated inputs; by default each stack has its own. ``plain`` starts
    the anchor (plain Airflow, same settings); ``database`` overrides the shipped database.
    """
    workdir = Path(tempfile.mkdtemp(prefix="fanout-bench-"))
    if artifact_root is None:
        artifact_root = workdir / "artifacts"
        artifact_root.mkdir()
    env = {
        "FANOUT_ARTIFACT_ROOT": str(artifact_root),
        "FANOUT_DEVICE": "cpu",
        "FANOUT_RETRIES": "0",  # a benchmark run that fails should fail, not retry into the numbers
        "FANOUT_PARAMS": json.dumps(fanout_params or {}),
        # Logging only: the dag-processor's stats table (parse durations) every 10 s, not 30 s.
        "AIRFLOW__DAG_PROCESSOR__PRINT_STATS_INTERVAL": "10",
        **(overrides or {}),
    }
    if task_cpus:
        env["FANOUT_TASK_CPUS"] = str(task_cpus)
    if plain:
        no_plugins = workdir / "no-plugins"
        no_plugins.mkdir()
        env["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(no_plugins)
    stack = AirflowStack(
        home=workdir / "home",
        dags_folder=_dags_folder(workdir, plain),
        parallelism=parallelism,
        extra_env=env,
        executor="LocalExecutor" if plain else LOCAL_EXECUTOR,
        database=database,
        ephemeral=True,
        report=log_to_stderr,
        dask=dask,
    )
    monitor = ProcessMonitor()
    began = time.monotonic()
    bench: BenchStack | None = None
    try:
        client = stack.start()  # inside the try: a component that dies at start leaves the others up
        monitor.start()
        if plain:
            client.wait_for_dags(list(BENCH_DAGS))
        else:
            _prepare(client, stack)
        bench = BenchStack(
            stack,
            client,
            monitor,
            artifact_root,
            parallelism,
            time.monotonic() - began,
            dict(overrides or {}),
            plain,
        )
        yield bench
    finally:
        stopping = time.monotonic()
        monitor.stop()
        if bench is not None:
            # uvicorn has shut down within a second of SIGTERM; its interpreter then takes 3-9 s to
            # exit (measured), which nothing here waits for: every result has been read.
            stack.stop_component("api-server", grace=1)
        api_stopped = time.monotonic()
        stack.supervisor.stop()
        components_stopped = time.monotonic()
        stack.stop()  # Dask's and the reaper's part: the rest has stopped
        shutil.rmtree(workdir, ignore_errors=True)
        if bench is not None:
            bench.stopped_s = time.monotonic() - stopping
            log_to_stderr(
                f"   stop: api-server {api_stopped - stopping:.1f} s, other components "
                f"{components_stopped - api_stopped:.1f} s, reaper {time.monotonic() - components_stopped:.1f} s"
            )


def _prepare(client: AirflowClient, stack: AirflowStack) -> None:
    """What ``make demo`` does before a run (the GPU-task Airflow pool), and every DAG parsed."""
    from fanout.demo import prepare

    prepare(client, stack)
    client.wait_for_dags([*PRODUCT_DAGS, *BENCH_DAGS])


# -- what the logs tell ----------------------------------------------------------------------
_WORKLOAD_FINISHED = re.compile(r"Workload finished.*?duration=([0-9.]+).*?workload_id=([0-9a-f-]+)")


def heartbeat_interval(bench: BenchStack) -> float:
    """The stack's ``[workers] min_heartbeat_interval``: how long a supervisor may sleep."""
    return float(
        bench.overrides.get("AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL", SHIPPED_HEARTBEAT_INTERVAL_S)
    )


def worker_hold_times(bench: BenchStack, ti_ids: set[str]) -> list[float]:
    """Seconds each task held its LocalExecutor worker (the supervisor's "Workload finished").

    LocalExecutor workers log to the scheduler's output, so the scheduler log has one line per
    task: from the supervisor's start to its end, i.e. process start, the task, and teardown.
    """
    return list(worker_hold_by_task(bench, ti_ids).values())


def worker_hold_by_task(bench: BenchStack, ti_ids: set[str]) -> dict[str, float]:
    """``worker_hold_times`` by task instance id."""
    path = bench.logs / "scheduler.log"
    if not path.exists():
        return {}
    return {
        match[2]: float(match[1])
        for match in _WORKLOAD_FINISHED.finditer(path.read_text(errors="replace"))
        if match[2] in ti_ids
    }


def dag_processor_durations(bench: BenchStack) -> dict[str, float]:
    """The dag-processor's "Last Duration" per DAG file, from the latest stats table it logged.

    Columns are cut at the table's dashed underline, because empty cells (no PID while idle)
    make splitting on whitespace ambiguous.
    """
    path = bench.logs / "dag-processor.log"
    if not path.exists():
        return {}
    durations: dict[str, float] = {}
    lines = path.read_text(errors="replace").splitlines()
    for index, line in enumerate(lines[:-1]):
        if "File Path" not in line or "Last Duration" not in line:
            continue
        spans = [m.span() for m in re.finditer(r"-+", lines[index + 1])]
        names = [line[a:b].strip() for a, b in spans]
        if "File Path" not in names or "Last Duration" not in names:
            continue
        file_col, duration_col = names.index("File Path"), names.index("Last Duration")
        for row in lines[index + 2 :]:
            if not row.strip() or row.startswith("="):
                break
            file_name = row[slice(*spans[file_col])].strip()
            duration = row[spans[duration_col][0] : spans[duration_col][1] + 2].strip().rstrip("s")
            if file_name and duration:
                durations[Path(file_name).name] = float(duration)
    return durations
