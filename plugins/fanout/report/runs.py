"""Read a DAG run from Airflow's database: its task instances, every try, notes, the DAG's
structure, the limits it ran under, and the runs chained to it by asset events.

Runs inside the api-server (the report's FastAPI app), with the session of the request; the
same tables back Airflow's REST API (``/api/v2/dags/{dag}/dagRuns/{run}/taskInstances`` and
its ``/tries``), so the figures agree with what the UI and the API show.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import joinedload

from fanout.report.model import Limits, Pod, Run, Task, TaskInstance, Try, reasons_from_note

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

MAX_CHAIN = 12
"""Runs followed along asset events in each direction (a pipeline is a handful of stages)."""


class RunNotFound(LookupError):
    pass


@dataclass(frozen=True)
class ChainedRun:
    """A run of the pipeline chained by asset events (upstream or downstream of the viewed run)."""

    dag_id: str
    run_id: str
    state: str | None
    run_type: str | None
    queued: object
    start: object
    end: object
    via: str
    """The asset whose event links it to the previous run of the chain."""


def _size_of(executor_config: object) -> str | None:
    from fanout.pools import SIZE_KEY

    if isinstance(executor_config, dict):
        size = executor_config.get(SIZE_KEY)
        return size if isinstance(size, str) else None
    return None


def _node_pool(size: str | None) -> str | None:
    from fanout.pools import pool_of

    if not size:
        return None
    try:
        return pool_of(size)
    except ValueError:  # a size this version of fanout does not know
        return None


def _label(map_index: int, rendered: str | None) -> str:
    if map_index < 0:
        return ""
    return rendered or f"#{map_index}"


def _text(value: object) -> str | None:
    """An Airflow state or run type (an enum or a string) as text."""
    return None if value is None else str(getattr(value, "value", value))


def _topological(tasks: dict[str, Task]) -> list[str]:
    """Task ids, each after its upstream tasks (declaration order among equals)."""
    order: list[str] = []
    placed: set[str] = set()
    remaining = list(tasks)
    while remaining:
        ready = [t for t in remaining if all(u in placed or u not in tasks for u in tasks[t].upstream)]
        if not ready:  # a DAG has no cycle; keep whatever is left in declaration order
            ready = remaining
        for task_id in ready:
            order.append(task_id)
            placed.add(task_id)
        remaining = [t for t in remaining if t not in placed]
    return order


def _tasks_and_limits(dag_run, session: Session) -> tuple[dict[str, Task], Limits]:
    from airflow.configuration import conf
    from airflow.models.dagbag import DBDagBag
    from airflow.models.pool import Pool

    pools = {p.pool: p.slots for p in session.scalars(select(Pool))}
    limits_kwargs = {
        "parallelism": conf.getint("core", "parallelism", fallback=0) or None,
        "pool_slots": pools,
    }
    dag = DBDagBag().get_dag_for_run(dag_run, session=session)
    if dag is None:
        return {}, Limits(**limits_kwargs)
    tasks = {
        t.task_id: Task(
            task_id=t.task_id,
            upstream=tuple(sorted(t.upstream_task_ids)),
            mapped=bool(getattr(t, "is_mapped", False)),
            max_active_tis_per_dagrun=getattr(t, "max_active_tis_per_dagrun", None),
            pool=t.pool,
            pool_slots=t.pool_slots or 1,
        )
        for t in dag.tasks
    }
    return tasks, Limits(max_active_tasks=dag.max_active_tasks, **limits_kwargs)


def load_run(
    session: Session, dag_id: str, run_id: str, pods: Callable[[str, str, dict], dict] | None = None
) -> Run:
    """The run with every task instance and try; ``pods`` adds Kubernetes pods to the tries.

    ``pods(dag_id, run_id, hostnames)`` gets each try's hostname by ``(task_id, map_index,
    try_number)`` and returns the ``Pod`` of each try it knows (``fanout.report.kube``); it is
    called only when the run's tasks used a Kubernetes executor. Raises ``RunNotFound`` if there
    is no such run.
    """
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance as TI
    from airflow.models.taskinstancehistory import TaskInstanceHistory as TIH

    dag_run = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
    if dag_run is None:
        raise RunNotFound(f"no run {run_id!r} of DAG {dag_id!r}")
    tasks, limits = _tasks_and_limits(dag_run, session)
    current = session.scalars(
        select(TI).where(TI.dag_id == dag_id, TI.run_id == run_id).options(joinedload(TI.task_instance_note))
    ).all()
    history = session.scalars(select(TIH).where(TIH.dag_id == dag_id, TIH.run_id == run_id)).all()
    placed: dict = {}
    uses_kubernetes = any("kubernetes" in (ti.executor or _default_executor()).lower() for ti in current)
    if pods is not None and uses_kubernetes:
        hostnames = {
            (row.task_id, row.map_index, row.try_number): row.hostname for row in [*current, *history]
        }
        placed = pods(dag_id, run_id, hostnames)

    past: dict[tuple[str, int], list] = {}
    for h in history:
        past.setdefault((h.task_id, h.map_index), []).append(h)

    def as_try(row, reasons: dict[int, str]) -> Try:
        pod: Pod | None = placed.get((row.task_id, row.map_index, row.try_number))
        # The note's line for this try, a retry policy's reason, or what the failed pod recorded.
        reason = reasons.get(row.try_number) or getattr(row, "retry_reason", None)
        if reason is None and pod is not None:
            if pod.failure:
                reason = pod.failure
            elif pod.reason and pod.reason != "Completed":
                reason = f"pod {pod.name}: {pod.reason}"
        return Try(
            task_id=row.task_id,
            map_index=row.map_index,
            try_number=row.try_number,
            state=_text(row.state),
            queued=row.queued_dttm,
            start=row.start_date,
            end=row.end_date,
            scheduled=row.scheduled_dttm,
            hostname=row.hostname or None,
            executor=row.executor or _default_executor(),
            reason=reason,
            pod=pod,
        )

    instances = []
    for ti in current:
        reasons = reasons_from_note(ti.note)
        tries = sorted(
            [
                as_try(h, reasons)
                for h in past.get((ti.task_id, ti.map_index), [])
                if h.try_number < ti.try_number
            ]
            + ([as_try(ti, reasons)] if ti.try_number else []),
            key=lambda t: t.try_number,
        )
        size = _size_of(ti.executor_config)
        instances.append(
            TaskInstance(
                task_id=ti.task_id,
                map_index=ti.map_index,
                state=_text(ti.state),
                label=_label(ti.map_index, ti.rendered_map_index),
                tries=tuple(tries),
                size=size,
                node_pool=_node_pool(size),
                airflow_pool=ti.pool,
                note=ti.note,
            )
        )
    order = {task_id: i for i, task_id in enumerate(_topological(tasks))}
    instances.sort(key=lambda ti: (order.get(ti.task_id, len(order)), ti.task_id, ti.map_index))
    return Run(
        dag_id=dag_id,
        run_id=run_id,
        state=_text(dag_run.state),
        run_type=_text(dag_run.run_type),
        queued=dag_run.queued_at,
        start=dag_run.start_date,
        end=dag_run.end_date,
        task_instances=tuple(instances),
        tasks=tasks,
        limits=limits,
        conf=dict(dag_run.conf or {}),
        partition_key=dag_run.partition_key,
    )


def _default_executor() -> str:
    from airflow.configuration import conf

    return conf.get("core", "executor", fallback="").split(",")[0].strip()


def _chained(dag_run, via: str) -> ChainedRun:
    return ChainedRun(
        dag_id=dag_run.dag_id,
        run_id=dag_run.run_id,
        state=_text(dag_run.state),
        run_type=_text(dag_run.run_type),
        queued=dag_run.queued_at,
        start=dag_run.start_date,
        end=dag_run.end_date,
        via=via,
    )


def pipeline(session: Session, dag_id: str, run_id: str) -> list[ChainedRun]:
    """The runs chained to this one by asset events, in pipeline order, this run included.

    Upstream: the runs that emitted the asset events this run consumed (following the first
    producer at each step); downstream: the runs created from the events this run emitted.
    """
    from airflow.models.asset import AssetEvent
    from airflow.models.dagrun import DagRun

    def find(d: str, r: str):
        return session.scalar(select(DagRun).where(DagRun.dag_id == d, DagRun.run_id == r))

    this = find(dag_id, run_id)
    if this is None:
        raise RunNotFound(f"no run {run_id!r} of DAG {dag_id!r}")
    chain = [_chained(this, via="")]

    current, seen = this, {(dag_id, run_id)}
    for _ in range(MAX_CHAIN):
        events = [e for e in current.consumed_asset_events if e.source_dag_id and e.source_run_id]
        if not events:
            break
        event = min(events, key=lambda e: e.timestamp)
        producer = find(event.source_dag_id, event.source_run_id)
        if producer is None or (producer.dag_id, producer.run_id) in seen:
            break
        seen.add((producer.dag_id, producer.run_id))
        chain[0] = _replace_via(chain[0], _asset_name(event))
        chain.insert(0, _chained(producer, via=""))
        current = producer

    current = this
    for _ in range(MAX_CHAIN):
        events = session.scalars(
            select(AssetEvent).where(
                AssetEvent.source_dag_id == current.dag_id, AssetEvent.source_run_id == current.run_id
            )
        ).all()
        created = sorted(
            ((run, e) for e in events for run in e.created_dagruns if (run.dag_id, run.run_id) not in seen),
            key=lambda pair: pair[0].queued_at or pair[1].timestamp,
        )
        if not created:
            break
        run, event = created[0]
        seen.add((run.dag_id, run.run_id))
        chain.append(_chained(run, via=_asset_name(event)))
        current = run
    return chain


def _asset_name(event) -> str:
    asset = getattr(event, "asset", None)
    return getattr(asset, "name", None) or getattr(asset, "uri", None) or ""


def _replace_via(run: ChainedRun, via: str) -> ChainedRun:
    from dataclasses import replace

    return replace(run, via=via)
