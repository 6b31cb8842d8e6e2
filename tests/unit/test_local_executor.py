"""fanout.local_executor: a sized task's memory budget, its breach explained, its retry given more."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import uuid
from types import SimpleNamespace
from unittest import mock

import psutil
import pytest
from airflow.models.log import Log
from airflow.models.taskinstancekey import TaskInstanceKey
from airflow.utils.state import TaskInstanceState

from fanout import local_executor
from fanout.failures import OOM_KILLED
from fanout.local_executor import Budget, FanoutLocalExecutor
from fanout.memory_budget import Breach

KEY = TaskInstanceKey("fanout_probe_memory", "needs_more_memory", "manual__1", try_number=1, map_index=-1)
RETRY = KEY._replace(try_number=2)
MI = 1 << 20


@pytest.fixture
def ti():
    return SimpleNamespace(note=None, max_tries=2, try_number=1, state=TaskInstanceState.RUNNING)


@pytest.fixture
def db(monkeypatch, ti):
    session = mock.Mock(scalar=mock.Mock(return_value=ti))
    monkeypatch.setattr(local_executor, "create_session", contextlib.contextmanager(lambda: (yield session)))
    return session


@pytest.fixture
def executor():
    return FanoutLocalExecutor()


def events(session) -> list[Log]:
    return [call.args[0] for call in session.add.call_args_list if isinstance(call.args[0], Log)]


def test_a_breached_try_fails_explained_and_its_retry_gets_a_larger_budget(executor, db, ti):
    executor._breaches[KEY] = (
        Budget(KEY, "bookkeeping", 768 * MI),
        Breach(900 * MI, 768 * MI, 4242, 850 * MI),
    )

    executor.change_state(KEY, TaskInstanceState.SUCCESS)  # what the worker reports after the kill

    state, info = executor.event_buffer[KEY]
    assert state == TaskInstanceState.FAILED
    assert info.startswith(
        "OOMKilled: the task's processes held 900Mi, past its memory budget 768Mi (its 'bookkeeping' size's "
        "memory), so fanout stopped the largest (pid 4242, 850Mi) with SIGKILL"
    )
    assert info.endswith("A retry gets x1.5 the memory (at most 2304Mi).")
    assert ti.note == f"Try 1: {info}" and ti.max_tries == 2
    (record,) = executor.failed_tries[KEY.dag_id, KEY.task_id, KEY.run_id, KEY.map_index]
    assert (record.cause, record.memory_limit, record.try_number) == (OOM_KILLED, "768Mi", 1)

    ti.try_number = 2
    executor._set_budget("ti-id", RETRY, "bookkeeping")
    assert executor._budgets["ti-id"] == Budget(RETRY, "bookkeeping", 1152 * MI)
    assert ti.note.endswith(
        "Try 2: retry with 1152Mi of memory budget after OOMKilled at 768Mi in try 1 (x1.5, at most 2304Mi)"
    )
    assert [e.event for e in events(db)] == ["memory budget exceeded", "retry budget changed"]


def test_a_breach_at_the_most_memory_the_task_may_get_ends_the_task(executor, db, ti):
    ti.try_number = 3
    key = KEY._replace(try_number=3)
    executor._breaches[key] = (
        Budget(key, "bookkeeping", 2304 * MI),
        Breach(2400 * MI, 2304 * MI, 7, 2300 * MI),
    )
    executor.change_state(key, TaskInstanceState.SUCCESS)
    assert (
        "No retry: 2304Mi is already the most memory a 'bookkeeping' task may get"
        in executor.event_buffer[key][1]
    )
    assert ti.max_tries == 2, "try 3 is the last"


def test_tries_that_ended_without_a_breach_pass_through(executor, db):
    executor._budgets["ti-id"] = Budget(KEY, "bookkeeping", 768 * MI)
    executor.change_state(KEY, TaskInstanceState.SUCCESS)
    assert executor.event_buffer[KEY] == (TaskInstanceState.SUCCESS, None)
    assert not executor._budgets and not events(db)


def test_the_watcher_finds_the_task_process_by_its_title_and_stops_it_past_its_budget(executor):
    """A real process titled as Airflow's task runner titles the task process, holding 200Mi."""
    ti_id = str(uuid.uuid4())
    code = (
        "import setproctitle, time, sys; setproctitle.setproctitle(sys.argv[1]); "
        "held = [b'x' * (1 << 20) for _ in range(200)]; print('ready', flush=True); time.sleep(60)"
    )
    task = subprocess.Popen(
        [sys.executable, "-c", code, f"airflow worker -- {ti_id}"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert task.stdout.readline().strip() == "ready"
        executor.workers = {psutil.Process().pid: None}  # this test process stands in for a worker
        executor._budgets[ti_id] = Budget(KEY, "bookkeeping", 100 * MI)
        executor._budgets["other"] = Budget(RETRY, "bookkeeping", 100 * MI)
        executor._check_budgets()
        assert task.wait(timeout=10) == -9
        budget, breach = executor._breaches[KEY]
        assert breach.killed_pid == task.pid and breach.held > 180 * MI and budget.limit == 100 * MI
        assert ti_id not in executor._budgets and "other" in executor._budgets
    finally:
        task.kill()
        task.wait()


# --- a dead scheduler's tasks (the chaos test runs this through the real scheduler) -------------------


def test_a_dead_schedulers_task_instances_are_all_adopted_instead_of_reset(executor):
    """Airflow's LocalExecutor returns them all, and the scheduler resets each into its next try."""
    orphans = [
        SimpleNamespace(key=KEY, state=TaskInstanceState.RUNNING),
        SimpleNamespace(key=RETRY, state=TaskInstanceState.QUEUED),
    ]
    assert list(executor.try_adopt_task_instances(orphans)) == []


def test_a_task_stuck_in_queued_is_forgotten_so_the_scheduler_can_requeue_it(executor):
    """Airflow's LocalExecutor refuses to revoke (NotImplementedError): the task would stay queued."""
    executor.queued_tasks[KEY] = object()
    executor.running.add(KEY)
    executor.revoke_task(ti=SimpleNamespace(key=KEY))
    assert KEY not in executor.queued_tasks and KEY not in executor.running
