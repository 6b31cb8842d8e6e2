"""What a run's tries say about its parallelism: the figures at the top of the report.

* **achieved parallelism**: time spent running tasks (every try) over the run's wall time, i.e.
  the average number of tasks running at once;
* **capacity**: how many task instances could run at once, the tightest of the number of
  task instances, ``max_active_tis_per_dagrun``, the DAG's ``max_active_tasks``,
  ``[core] parallelism`` and the task's Airflow pool;
* **parallel efficiency**: achieved parallelism over capacity (per fan-out over its own span;
  for the run, over the widest task's capacity);
* **critical path**: the chain of task instances that decided when the run ended, walking back
  from the last one through the upstream task instance that finished last; its time splits into
  scheduling (ready until queued), queued (until the first try ran: on Kubernetes the pod
  start), running, and retries (failed tries and their delays);
* **queue wait**: queued until running, per try.

Plain functions of ``fanout.report.model`` records: no Airflow, no I/O.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from fanout.report.model import Limits, Run, Task, TaskInstance, Try


@dataclass(frozen=True)
class Capacity:
    slots: int
    limited_by: str


@dataclass(frozen=True)
class FanOut:
    """A mapped task's figures over its own span (first start to last end)."""

    task_id: str
    count: int
    span_seconds: float
    run_seconds: float
    parallelism: float
    peak: int
    capacity: Capacity
    efficiency: float
    queue_wait_mean: float | None
    queue_wait_max: float | None
    slowest: str
    slowest_seconds: float
    imbalance: float
    """Slowest over mean run time: 1.0 is a perfectly even split."""


@dataclass(frozen=True)
class PathStep:
    """One task instance on the critical path and where its time went."""

    task_id: str
    map_index: int
    name: str
    ready: datetime
    scheduling_seconds: float
    queued_seconds: float
    running_seconds: float
    retry_seconds: float
    tries: int


@dataclass(frozen=True)
class Summary:
    wall_seconds: float | None
    run_seconds: float
    achieved_parallelism: float | None
    peak_concurrency: int
    capacity: Capacity | None
    efficiency: float | None
    task_instances: int
    tries: int
    failed_tries: int
    queue_wait_mean: float | None
    queue_wait_max: float | None
    pod_start_mean: float | None
    """Queued until running on Kubernetes tries (pod creation, scheduling, container and Python start)."""
    pod_start_max: float | None
    fan_outs: list[FanOut] = field(default_factory=list)
    critical_path: list[PathStep] = field(default_factory=list)
    critical_path_split: dict[str, float] = field(default_factory=dict)
    """Seconds of the run's wall time: scheduling, queued, running, retries, and before/after."""


def _seconds(later: datetime | None, earlier: datetime | None) -> float:
    if later is None or earlier is None:
        return 0.0
    return max(0.0, (later - earlier).total_seconds())


def _intervals(tries: Iterable[Try]) -> list[tuple[datetime, datetime]]:
    return [(t.start, t.end) for t in tries if t.start and t.end and t.end >= t.start]


def concurrency(tries: Iterable[Try]) -> list[tuple[datetime, int]]:
    """How many tries ran at each moment: (time, running from then on), in time order."""
    events: list[tuple[datetime, int]] = []
    for start, end in _intervals(tries):
        events.append((start, 1))
        events.append((end, -1))
    # At equal times, ends first: back-to-back tries never count as overlapping.
    events.sort(key=lambda e: (e[0], e[1]))
    steps: list[tuple[datetime, int]] = []
    running = 0
    for when, delta in events:
        running += delta
        if steps and steps[-1][0] == when:
            steps[-1] = (when, running)
        else:
            steps.append((when, running))
    return steps


def peak_concurrency(tries: Iterable[Try]) -> int:
    return max((n for _, n in concurrency(tries)), default=0)


def capacity(task: Task, count: int, limits: Limits) -> Capacity:
    """The most task instances of ``task`` (``count`` of them) that could run at once, and why."""
    candidates = [(count, f"{count} task instance{'s' if count != 1 else ''}")]
    if task.max_active_tis_per_dagrun:
        candidates.append((task.max_active_tis_per_dagrun, "max_active_tis_per_dagrun"))
    if limits.max_active_tasks:
        candidates.append((limits.max_active_tasks, "the DAG's max_active_tasks"))
    if limits.parallelism:
        candidates.append((limits.parallelism, "[core] parallelism"))
    slots = limits.pool_slots.get(task.pool or "")
    if slots is not None and slots >= 0:
        candidates.append((slots // max(1, task.pool_slots), f"pool {task.pool} ({slots} slots)"))
    slots_, why = min(candidates, key=lambda c: c[0])
    return Capacity(max(slots_, 1) if count else 0, why)


def _all_tries(tis: Iterable[TaskInstance]) -> list[Try]:
    return [t for ti in tis for t in ti.tries]


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def fan_out(task: Task, tis: Sequence[TaskInstance], limits: Limits) -> FanOut:
    tries = _all_tries(tis)
    intervals = _intervals(tries)
    span = _seconds(max(e for _, e in intervals), min(s for s, _ in intervals)) if intervals else 0.0
    run = sum(ti.run_seconds for ti in tis)
    cap = capacity(task, len(tis), limits)
    parallelism = run / span if span else 0.0
    waits = [w for t in tries if (w := t.queue_seconds) is not None]
    slowest = max(tis, key=lambda ti: ti.run_seconds)
    mean_run = run / len(tis) if tis else 0.0
    return FanOut(
        task_id=task.task_id,
        count=len(tis),
        span_seconds=span,
        run_seconds=run,
        parallelism=parallelism,
        peak=peak_concurrency(tries),
        capacity=cap,
        efficiency=parallelism / cap.slots if cap.slots else 0.0,
        queue_wait_mean=_mean(waits),
        queue_wait_max=max(waits, default=None),
        slowest=slowest.label or f"#{slowest.map_index}",
        slowest_seconds=slowest.run_seconds,
        imbalance=slowest.run_seconds / mean_run if mean_run else 1.0,
    )


def critical_path(run: Run) -> list[PathStep]:
    """The chain of task instances that ended the run, first to last (empty if unknown)."""
    done = [ti for ti in run.task_instances if ti.end and ti.queued and ti.start]
    if not done or run.start is None:
        return []
    by_task: dict[str, list[TaskInstance]] = {}
    for ti in done:
        by_task.setdefault(ti.task_id, []).append(ti)

    def ready_at(ti: TaskInstance) -> tuple[datetime, TaskInstance | None]:
        task = run.tasks.get(ti.task_id)
        upstream = [u for up in (task.upstream if task else ()) for u in by_task.get(up, [])]
        if not upstream:
            return run.start, None
        last = max(upstream, key=lambda u: u.end)
        return max(last.end, run.start), last

    path: list[PathStep] = []
    current: TaskInstance | None = max(done, key=lambda ti: ti.end)
    seen: set[tuple[str, int]] = set()
    while current is not None and current.key not in seen:
        seen.add(current.key)
        ready, previous = ready_at(current)
        first_start = current.start
        running = current.run_seconds
        path.append(
            PathStep(
                task_id=current.task_id,
                map_index=current.map_index,
                name=current.name,
                ready=ready,
                scheduling_seconds=_seconds(current.queued, ready),
                queued_seconds=_seconds(first_start, current.queued),
                running_seconds=running,
                retry_seconds=max(0.0, _seconds(current.end, first_start) - running),
                tries=len(current.tries),
            )
        )
        current = previous
    path.reverse()
    return path


def split_of(run: Run, path: Sequence[PathStep]) -> dict[str, float]:
    """The run's wall time along the critical path, in seconds per kind of time."""
    if not path or run.start is None:
        return {}
    split = {
        "scheduling": sum(s.scheduling_seconds for s in path),
        "queued": sum(s.queued_seconds for s in path),
        "running": sum(s.running_seconds for s in path),
        "retries": sum(s.retry_seconds for s in path),
    }
    last = next((ti for ti in run.task_instances if ti.key == (path[-1].task_id, path[-1].map_index)), None)
    if run.end and last and last.end:
        split["finishing"] = _seconds(run.end, last.end)
    return split


def summarise(run: Run) -> Summary:
    tis = list(run.task_instances)
    tries = _all_tries(tis)
    run_seconds = sum(t.run_seconds or 0.0 for t in tries)
    wall = run.wall_seconds
    by_task: dict[str, list[TaskInstance]] = {}
    for ti in tis:
        by_task.setdefault(ti.task_id, []).append(ti)
    fan_outs = [
        fan_out(run.tasks[task_id], group, run.limits)
        for task_id, group in by_task.items()
        if task_id in run.tasks and run.tasks[task_id].mapped and _intervals(_all_tries(group))
    ]
    capacities = [
        capacity(run.tasks.get(task_id) or Task(task_id), len(group), run.limits)
        for task_id, group in by_task.items()
    ]
    widest = max(capacities, key=lambda c: c.slots, default=None)
    achieved = run_seconds / wall if wall else None
    waits = [w for t in tries if (w := t.queue_seconds) is not None]
    pod_waits = [w for t in tries if t.on_kubernetes and (w := t.queue_seconds) is not None]
    path = critical_path(run)
    return Summary(
        wall_seconds=wall,
        run_seconds=run_seconds,
        achieved_parallelism=achieved,
        peak_concurrency=peak_concurrency(tries),
        capacity=widest,
        efficiency=achieved / widest.slots if achieved is not None and widest and widest.slots else None,
        task_instances=len(tis),
        tries=len(tries),
        failed_tries=sum(len(ti.failed_tries) for ti in tis),
        queue_wait_mean=_mean(waits),
        queue_wait_max=max(waits, default=None),
        pod_start_mean=_mean(pod_waits),
        pod_start_max=max(pod_waits, default=None),
        fan_outs=fan_outs,
        critical_path=path,
        critical_path_split=split_of(run, path),
    )
