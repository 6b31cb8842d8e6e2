"""Plain records of a DAG run as the report sees it: runs, task instances, tries, pods.

``fanout.report.runs`` fills them from Airflow; everything else (``timeline``, ``charts``, the
page) reads only these, so the logic runs and is tested without Airflow.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

_NOTE_TRY = re.compile(r"^Try (\d+): (.+)$")
FAILED_STATES = frozenset({"failed", "up_for_retry", "upstream_failed"})


@dataclass(frozen=True)
class Pod:
    """Where a try ran on Kubernetes, as the pod (or its events) recorded it."""

    name: str
    node: str | None = None
    pool: str | None = None
    """The node pool (the pod's ``fanout.io/pool`` label)."""
    size: str | None = None
    """The task size (the pod's ``fanout.io/size`` label)."""
    created: datetime | None = None
    scheduled: datetime | None = None
    """When the Kubernetes scheduler bound it to a node."""
    started: datetime | None = None
    """When its container started."""
    phase: str | None = None
    reason: str | None = None
    """The container's termination reason (OOMKilled, Error, ...), if it ended."""
    failure: str | None = None
    """What ended the try, in words: the executor's record kept on a failed pod (``fanout.failures``)."""


@dataclass(frozen=True)
class Try:
    """One try of one task instance."""

    task_id: str
    map_index: int
    try_number: int
    state: str | None
    queued: datetime | None = None
    start: datetime | None = None
    end: datetime | None = None
    scheduled: datetime | None = None
    hostname: str | None = None
    executor: str | None = None
    reason: str | None = None
    """Why this try failed, when something recorded it (a note line, a retry policy)."""
    pod: Pod | None = None

    @property
    def key(self) -> tuple[str, int]:
        return self.task_id, self.map_index

    @property
    def run_seconds(self) -> float | None:
        if self.start and self.end:
            return max(0.0, (self.end - self.start).total_seconds())
        return None

    @property
    def queue_seconds(self) -> float | None:
        """Queued until the task ran: executor pick-up, worker or pod start, interpreter start."""
        if self.queued and self.start and self.start >= self.queued:
            return (self.start - self.queued).total_seconds()
        return None

    @property
    def on_kubernetes(self) -> bool:
        return self.pod is not None or "kubernetes" in (self.executor or "").lower()


@dataclass(frozen=True)
class TaskInstance:
    """A task instance (one per task, one per map index of a mapped task) and all its tries."""

    task_id: str
    map_index: int
    state: str | None
    label: str
    """The rendered map index (the shard, the trial, the frames) or ``#n``; empty when unmapped."""
    tries: tuple[Try, ...]
    size: str | None = None
    """The fanout task size (``executor_config``), e.g. ``shard``."""
    node_pool: str | None = None
    """The node pool that size runs on (``cpu``/``gpu``), from fanout's settings."""
    airflow_pool: str | None = None
    note: str | None = None

    @property
    def key(self) -> tuple[str, int]:
        return self.task_id, self.map_index

    @property
    def name(self) -> str:
        return f"{self.task_id} [{self.label}]" if self.label else self.task_id

    @property
    def first(self) -> Try | None:
        return self.tries[0] if self.tries else None

    @property
    def last(self) -> Try | None:
        return self.tries[-1] if self.tries else None

    @property
    def queued(self) -> datetime | None:
        return self.first.queued if self.first else None

    @property
    def start(self) -> datetime | None:
        starts = [t.start for t in self.tries if t.start]
        return min(starts) if starts else None

    @property
    def end(self) -> datetime | None:
        return self.last.end if self.last else None

    @property
    def run_seconds(self) -> float:
        """Time spent running, over every try."""
        return sum(t.run_seconds or 0.0 for t in self.tries)

    @property
    def failed_tries(self) -> list[Try]:
        """Tries that ended without success: every earlier try that did not succeed, the last if it failed."""
        return [
            t for t in self.tries if t.state != "success" and (t is not self.last or t.state in FAILED_STATES)
        ]


@dataclass(frozen=True)
class Task:
    """What the DAG says about a task: its upstream tasks and the limits on its concurrency."""

    task_id: str
    upstream: tuple[str, ...] = ()
    mapped: bool = False
    max_active_tis_per_dagrun: int | None = None
    pool: str | None = None
    pool_slots: int = 1


@dataclass(frozen=True)
class Limits:
    """Slots a run's tasks can get at once, from Airflow's configuration and pools."""

    parallelism: int | None = None
    """``[core] parallelism``: task slots of the executor."""
    max_active_tasks: int | None = None
    """The DAG's ``max_active_tasks``."""
    pool_slots: dict[str, int] = field(default_factory=dict)
    """Airflow pool name -> slots (-1: unlimited)."""


@dataclass(frozen=True)
class Run:
    """A DAG run with its task instances, the DAG's tasks and the limits it ran under."""

    dag_id: str
    run_id: str
    state: str | None
    run_type: str | None
    queued: datetime | None
    start: datetime | None
    end: datetime | None
    task_instances: tuple[TaskInstance, ...]
    tasks: dict[str, Task] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    conf: dict = field(default_factory=dict)
    partition_key: str | None = None
    """The data partition a scheduled or backfilled run covers; its artifacts are kept by it."""

    @property
    def wall_seconds(self) -> float | None:
        if self.start and self.end:
            return max(0.0, (self.end - self.start).total_seconds())
        return None


def reasons_from_note(note: str | None) -> dict[int, str]:
    """Failure reasons per try from a task instance note's ``Try N: ...`` lines.

    fanout's Kubernetes executor writes one such line per failed try (OOMKilled, evicted, ...).
    """
    reasons: dict[int, str] = {}
    for line in (note or "").splitlines():
        match = _NOTE_TRY.match(line.strip())
        if match:
            reasons[int(match.group(1))] = match.group(2).strip()
    return reasons
