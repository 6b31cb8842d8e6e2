"""Where each task's pod ran and how long it waited: the rows ``make cluster-demo`` prints."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TextIO

from tests.cluster.stack import ClusterPipeline
from tests.kubesim import PodRecord


@dataclass(frozen=True)
class PodRow:
    task: str  # task_id[map_index]
    try_number: str
    pod: str
    node: str
    pool: str
    waited_s: float | None  # created -> container started: scheduling, then container start
    ran_s: float | None  # container started -> exited
    result: str  # the container's terminated reason (Completed, Error, OOMKilled) or the phase
    unschedulable: str | None  # why the scheduler made it wait, if it ever did


def _seconds(start: float | None, end: float | None) -> float | None:
    return round(end - start, 1) if start is not None and end is not None else None


def pod_rows(cp: ClusterPipeline, records: list[PodRecord]) -> list[PodRow]:
    pools = {}
    rows = []
    for record in records:
        if record.node and record.node not in pools:
            pools[record.node] = cp.pool_of_node(record.node)
        map_index = record.annotations.get("map_index", "-1")
        rows.append(
            PodRow(
                task=record.annotations.get("task_id", "?") + (f"[{map_index}]" if map_index != "-1" else ""),
                try_number=record.annotations.get("try_number", "?"),
                pod=record.name,
                node=record.node or "-",
                pool=pools.get(record.node, "-"),
                waited_s=_seconds(record.created_at, record.started_at),
                ran_s=_seconds(record.started_at, record.finished_at),
                result=record.pod_reason or record.reason or record.phase,
                unschedulable=record.unschedulable_message,
            )
        )
    return rows


def print_pod_table(rows: list[PodRow], out: TextIO = sys.stdout) -> None:
    out.write(
        f"  {'task':<20}{'try':>4}  {'pod':<46}{'node':<12}{'pool':<6}{'wait s':>7}{'run s':>7}  result\n"
    )
    for row in rows:
        wait = "-" if row.waited_s is None else f"{row.waited_s:.1f}"
        ran = "-" if row.ran_s is None else f"{row.ran_s:.1f}"
        out.write(
            f"  {row.task:<20}{row.try_number:>4}  {row.pod:<46}{row.node:<12}{row.pool:<6}"
            f"{wait:>7}{ran:>7}  {row.result}\n"
        )
        if row.unschedulable:
            out.write(f"  {'':<24}waited on the scheduler: {row.unschedulable}\n")
