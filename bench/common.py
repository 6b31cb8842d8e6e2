"""What every benchmark shares: sizes per mode, statistics, timestamps, machine facts."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Generator, Iterable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
CPUS = os.cpu_count() or 2


@dataclass(frozen=True)
class Sizes:
    """Problem sizes of one mode. Quick exists so CI exercises every code path in < 2 minutes."""

    mode: str
    repeats: int
    # parallel speedup: one fan-out of render chunks and one of preprocessing shards
    render_chunks: int
    render_frames_per_chunk: int
    render_width: int
    render_height: int
    render_samples: int
    preprocess_shards: int
    preprocess_rows_per_shard: int
    # orchestration
    noop_sizes: tuple[int, ...]
    single_task_runs: int
    noop_cap_s: float
    """A no-op fan-out still running after this long is stopped and reported with what it reached."""
    burst_requests: int
    """Concurrent trigger/unpause API requests in the burst."""
    capped_probe: tuple[int, float] | None
    """(n, cap): a fan-out given too little time to finish, so the capped path runs (quick mode)."""
    anchor: bool
    """Run the orchestration figures on plain Airflow with the same settings too."""
    whatif_noop: int
    """Size of the no-op fan-out on the what-if stack with the other database (SQLite), run only when
    asked for (``--only database``); 0 skips it."""
    kubernetes_noop: int
    """No-op fan-out on the KubernetesExecutor; the LocalExecutor figure of the same size is its peer."""
    # Dask
    dask_shard_rows: tuple[int, ...]
    dask_noop_tasks: int
    # kernels
    kernel_seconds: float
    kernel_policies: tuple[str, ...]
    """OpenMP wait policies to measure under: "default" and, to show what spinning costs, "passive"."""
    # a demo-like run of the three DAGs, for peak memory; None measures over the fan-outs only
    demo_params: dict | None
    stack_overrides: dict[str, str] = field(default_factory=dict)


# The render and preprocessing work per mapped task is about 2 s on one core in full mode: long
# enough that the measured efficiency is the fan-out's, not Airflow's per-task overhead alone.
FULL = Sizes(
    mode="full",
    repeats=2,
    render_chunks=6,
    render_frames_per_chunk=3,
    render_width=320,
    render_height=180,
    render_samples=12,
    preprocess_shards=6,
    preprocess_rows_per_shard=1_000_000,
    noop_sizes=(10, 50, 1000),  # 50, not 100: both stacks run each, and `make bench` must fit 10 min
    single_task_runs=3,
    noop_cap_s=60.0,
    burst_requests=24,
    capped_probe=None,
    anchor=True,
    whatif_noop=100,
    kubernetes_noop=10,
    # fanout_preprocess's default rows_per_shard, and a bigger shard
    dask_shard_rows=(500_000, 2_000_000),
    dask_noop_tasks=200,
    kernel_seconds=1.0,  # per kernel, thread count and policy: 8 measurements
    kernel_policies=("default", "passive"),
    demo_params={
        "fanout_preprocess": {"n_shards": 4, "rows_per_shard": 100_000},
        "fanout_train": {"n_trials": 2, "epochs": 2, "max_rows": 50_000},
        "fanout_render": {"n_frames": 8, "chunk_size": 4, "width": 160, "height": 90, "samples": 2},
    },
)

QUICK = Sizes(
    mode="quick",
    repeats=1,
    render_chunks=2,
    render_frames_per_chunk=1,
    render_width=64,
    render_height=36,
    render_samples=1,
    preprocess_shards=2,
    preprocess_rows_per_shard=20_000,
    noop_sizes=(2,),
    single_task_runs=1,
    noop_cap_s=60.0,
    burst_requests=4,
    capped_probe=(40, 2.0),
    anchor=True,
    whatif_noop=2,
    kubernetes_noop=2,
    dask_shard_rows=(200_000,),
    dask_noop_tasks=50,
    kernel_seconds=0.2,
    kernel_policies=("default",),
    demo_params=None,
)


# -- statistics ------------------------------------------------------------------------------
def percentile(values: Iterable[float], q: float) -> float | None:
    """The q-th percentile (0-100), linear between closest ranks; None for no values."""
    data = sorted(values)
    if not data:
        return None
    rank = (len(data) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return data[low] + (data[high] - data[low]) * (rank - low)


def distribution(values: Iterable[float]) -> dict[str, float | int | None]:
    data = list(values)
    return {
        "n": len(data),
        "p50": rnd(percentile(data, 50)),
        "p95": rnd(percentile(data, 95)),
        "max": rnd(max(data)) if data else None,
        "mean": rnd(statistics.fmean(data)) if data else None,
    }


def median(values: Iterable[float]) -> float | None:
    data = list(values)
    return statistics.median(data) if data else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def rnd(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def ts(value: str | None) -> float | None:
    """Seconds since the epoch of an Airflow ISO timestamp."""
    return datetime.fromisoformat(value).timestamp() if value else None


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


@contextmanager
def clock(phases: dict[str, float], name: str) -> Generator[None, None, None]:
    """Record how long the block took in ``phases[name]`` (seconds): where a run's time goes."""
    began = time.perf_counter()
    try:
        yield
    finally:
        phases[name] = round(time.perf_counter() - began, 1)


def alternate(repeats: int, **variants: Callable[[], Any]) -> dict[str, list[float]]:
    """Run the variants in turn ``repeats`` times (A B A B ...) and return their wall times.

    Interleaving spreads a noisy neighbour's load over every variant instead of one.
    """
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            times[name].append(timed(fn)[0])
    return times


# -- sections --------------------------------------------------------------------------------
def skipped(reason: str, **extra: Any) -> dict:
    return {"status": "skipped", "reason": reason, **extra}


def run_section(name: str, fn: Callable[[], dict], log: Callable[[str], None]) -> dict:
    """Run one benchmark; a failure is recorded in its section instead of ending the run."""
    log(f"-- {name}")
    started = time.perf_counter()
    try:
        section = fn()
    except Exception as exc:
        section = {
            "status": "error",
            "reason": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc()[-4000:],
        }
        log(f"   {name} failed: {section['reason']}")
    section.setdefault("status", "ok")
    section["seconds"] = round(time.perf_counter() - started, 1)
    return section


def machine() -> dict:
    """Facts that explain absolute numbers: cores, memory, load, library versions, accelerator."""
    import psutil

    info: dict[str, Any] = {
        "cpus": CPUS,
        "cpu_model": _cpu_model(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    for module in ("airflow", "torch", "dask", "distributed", "pandas", "numpy"):
        try:
            info[module] = __import__(module).__version__
        except Exception:  # a missing library is reported by its benchmark, not here
            info[module] = None
    try:
        import torch

        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:
        info["cuda"] = None
    return info


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


@dataclass(frozen=True)
class CpuSnapshot:
    at: float
    machine_busy_s: float
    """CPU-seconds every core of the machine has been busy."""
    ours_s: float
    """CPU-seconds of this process and every process it started (reaped ones included)."""


def cpu_snapshot() -> CpuSnapshot:
    import psutil

    times = psutil.cpu_times()
    busy = times.user + times.system + getattr(times, "nice", 0.0) + getattr(times, "irq", 0.0)
    busy += getattr(times, "softirq", 0.0) + getattr(times, "steal", 0.0)
    me = psutil.Process()
    ours = 0.0
    for proc in (me, *me.children(recursive=True)):
        try:
            t = proc.cpu_times()
        except psutil.Error:
            continue  # exited meanwhile: its time is in its parent's children_* times
        ours += t.user + t.system + t.children_user + t.children_system
    return CpuSnapshot(time.monotonic(), busy, ours)


def other_load(start: CpuSnapshot, end: CpuSnapshot) -> float | None:
    """Cores kept busy by processes that are not ours between two snapshots: the neighbours."""
    elapsed = end.at - start.at
    if elapsed <= 0:
        return None
    other = (end.machine_busy_s - start.machine_busy_s) - (end.ours_s - start.ours_s)
    return round(max(0.0, other) / elapsed, 2)


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


def sizes_dict(sizes: Sizes) -> dict:
    return asdict(sizes)


def log_to_stderr(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)
