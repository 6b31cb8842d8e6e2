"""What an executor tells users about a try: a line in the task instance's note (UI, REST API).

Shared by fanout's executors (``fanout.executors``, ``fanout.local_executor``); they also add an
audit log event (``airflow.models.log.Log``) per line. Imports only Airflow's models, inside the
functions: the scheduler has them loaded already.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import select

if TYPE_CHECKING:
    from airflow.models.taskinstancekey import TaskInstanceKey
    from sqlalchemy.orm import Session

NOTE_LIMIT = 1000  # task_instance_note.content is a VARCHAR(1000)


def append_note(existing: str | None, line: str) -> str:
    """The note with ``line`` added (once), kept within the column's size: newest lines win."""
    lines = [kept for kept in (existing or "").splitlines() if kept.strip()]
    if line not in lines:
        lines.append(line)
    note = "\n".join(lines)
    while len(note) > NOTE_LIMIT and len(lines) > 1:
        lines.pop(0)
        note = "\n".join(lines)
    return note[:NOTE_LIMIT]


def task_instance(key: TaskInstanceKey, session: Session) -> Any:
    """The task instance of ``key`` (whatever its current try), or None."""
    from airflow.models.taskinstance import TaskInstance

    return session.scalar(
        select(TaskInstance).where(
            TaskInstance.dag_id == key.dag_id,
            TaskInstance.run_id == key.run_id,
            TaskInstance.task_id == key.task_id,
            TaskInstance.map_index == key.map_index,
        )
    )


def note_try(key: TaskInstanceKey, line: str, session: Session, *, final: bool = False) -> None:
    """Add ``line`` to the task instance's note; ``final``: this try is its last (no retry)."""
    ti = task_instance(key, session)
    if ti is not None:
        ti.note = append_note(ti.note, line)
        if final:  # the scheduler retries while try_number <= max_tries
            ti.max_tries = min(ti.max_tries, ti.try_number - 1)
