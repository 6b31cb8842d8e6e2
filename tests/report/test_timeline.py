"""Parallelism, capacity, critical path and queue wait from a run's tries (no Airflow)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from fanout.report.model import Limits, Run, Task, TaskInstance, Try, reasons_from_note
from fanout.report.timeline import capacity, concurrency, critical_path, peak_concurrency, summarise

T0 = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def attempt(
    task_id, map_index=-1, try_number=1, queued=0.0, start=0.0, end=1.0, state="success", **kw
) -> Try:
    return Try(task_id, map_index, try_number, state, queued=at(queued), start=at(start), end=at(end), **kw)


def ti(*tries: Try, label: str = "") -> TaskInstance:
    first = tries[0]
    return TaskInstance(first.task_id, first.map_index, tries[-1].state, label, tries)


def fan_run(mapped: list[tuple[float, float, float]], limits: Limits | None = None) -> Run:
    """plan (0-1 s) -> work x len(mapped) as (queued, start, end) -> merge, ending 1 s after the last."""
    last = max(end for _, _, end in mapped)
    tis = [
        ti(attempt("plan", queued=0.0, start=0.0, end=1.0)),
        *(
            ti(attempt("work", i, queued=q, start=s, end=e), label=f"shard-{i}")
            for i, (q, s, e) in enumerate(mapped)
        ),
        ti(attempt("merge", queued=last + 0.2, start=last + 0.5, end=last + 1.0)),
    ]
    tasks = {
        "plan": Task("plan"),
        "work": Task(
            "work", upstream=("plan",), mapped=True, max_active_tis_per_dagrun=16, pool="default_pool"
        ),
        "merge": Task("merge", upstream=("work",)),
    }
    return Run(
        "d", "r", "success", "manual", at(0), at(0), at(last + 1.5), tuple(tis), tasks, limits or Limits()
    )


def test_concurrency_counts_overlaps_and_back_to_back_tries_do_not_overlap():
    tries = [attempt("a", start=0, end=2), attempt("b", start=1, end=3), attempt("c", start=3, end=4)]
    assert [(when - T0).total_seconds() for when, _ in concurrency(tries)] == [0, 1, 2, 3, 4]
    assert [n for _, n in concurrency(tries)] == [1, 2, 1, 1, 0]
    assert peak_concurrency(tries) == 2


def test_achieved_parallelism_is_task_time_over_wall_time():
    run = fan_run([(1.0, 1.0, 5.0), (1.0, 1.0, 5.0), (1.0, 1.0, 5.0)], Limits(parallelism=4))
    summary = summarise(run)
    # 1 s plan + 3 x 4 s work + 0.5 s merge over 6.5 s of wall time
    assert summary.run_seconds == pytest.approx(13.5)
    assert summary.wall_seconds == pytest.approx(6.5)
    assert summary.achieved_parallelism == pytest.approx(13.5 / 6.5)
    assert summary.peak_concurrency == 3
    (work,) = summary.fan_outs
    assert work.count == 3 and work.parallelism == pytest.approx(3.0) and work.peak == 3
    assert work.capacity.slots == 3 and work.efficiency == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("limits", "task_kwargs", "slots", "why"),
    [
        (Limits(), {}, 8, "8 task instances"),
        (Limits(parallelism=2), {}, 2, "[core] parallelism"),
        (Limits(max_active_tasks=3), {}, 3, "the DAG's max_active_tasks"),
        (Limits(), {"max_active_tis_per_dagrun": 4}, 4, "max_active_tis_per_dagrun"),
        (Limits(pool_slots={"fanout_gpu": 1}), {"pool": "fanout_gpu"}, 1, "pool fanout_gpu (1 slots)"),
        (
            Limits(pool_slots={"fanout_gpu": 4}),
            {"pool": "fanout_gpu", "pool_slots": 2},
            2,
            "pool fanout_gpu (4 slots)",
        ),
        (
            Limits(pool_slots={"default_pool": -1}, parallelism=32),
            {"pool": "default_pool"},
            8,
            "8 task instances",
        ),
    ],
)
def test_capacity_is_the_tightest_limit_and_names_it(limits, task_kwargs, slots, why):
    cap = capacity(Task("work", mapped=True, **task_kwargs), 8, limits)
    assert (cap.slots, cap.limited_by) == (slots, why)


def test_a_fan_out_held_to_one_slot_runs_serially_at_full_efficiency_of_that_slot():
    run = fan_run([(1, 1, 3), (1, 3, 5), (1, 5, 7)], Limits(pool_slots={"default_pool": 1}))
    (work,) = summarise(run).fan_outs
    assert work.capacity.slots == 1 and "pool default_pool" in work.capacity.limited_by
    assert work.parallelism == pytest.approx(1.0) and work.efficiency == pytest.approx(1.0)
    assert work.queue_wait_max == pytest.approx(4.0)  # the third waited for two others


def test_critical_path_goes_through_the_mapped_instance_that_finished_last():
    run = fan_run([(1.0, 1.2, 3.0), (1.0, 1.1, 6.0), (1.0, 1.3, 4.0)])
    path = critical_path(run)
    assert [(s.task_id, s.map_index) for s in path] == [("plan", -1), ("work", 1), ("merge", -1)]
    work = path[1]
    assert work.scheduling_seconds == pytest.approx(0.0)  # queued the moment plan ended
    assert work.queued_seconds == pytest.approx(0.1)
    assert work.running_seconds == pytest.approx(4.9)


def test_critical_path_split_adds_up_to_the_wall_time():
    run = fan_run([(2.0, 3.0, 5.0), (1.5, 1.6, 9.0)])
    summary = summarise(run)
    assert sum(summary.critical_path_split.values()) == pytest.approx(summary.wall_seconds)
    assert summary.critical_path_split["finishing"] == pytest.approx(0.5)


def test_a_retried_instance_counts_every_try_and_its_retry_delay():
    failed = attempt("work", 0, 1, queued=1.0, start=1.0, end=2.0, state="failed")
    retried = attempt("work", 0, 2, queued=4.0, start=4.5, end=6.0)
    tis = (ti(attempt("plan", end=1.0)), ti(failed, retried, label="shard-0"))
    tasks = {"plan": Task("plan"), "work": Task("work", upstream=("plan",), mapped=True)}
    run = Run("d", "r", "success", "manual", at(0), at(0), at(6.0), tis, tasks)
    summary = summarise(run)
    assert summary.tries == 3 and summary.failed_tries == 1
    assert summary.run_seconds == pytest.approx(1.0 + 1.0 + 1.5)
    step = summary.critical_path[-1]
    assert step.tries == 2 and step.running_seconds == pytest.approx(2.5)
    assert step.retry_seconds == pytest.approx(5.0 - 2.5)  # 2 s of delay and 0.5 s queued again
    assert tis[1].failed_tries == [failed]


def test_pod_start_overhead_is_measured_on_kubernetes_tries_only():
    local = attempt("a", queued=0.0, start=0.5, end=1.0, executor="LocalExecutor")
    pod = attempt("b", queued=0.0, start=7.0, end=9.0, executor="fanout.executors.FanoutKubernetesExecutor")
    run = Run("d", "r", "success", "manual", at(0), at(0), at(9), (ti(local), ti(pod)), {})
    summary = summarise(run)
    assert summary.pod_start_mean == pytest.approx(7.0) and summary.pod_start_max == pytest.approx(7.0)
    assert summary.queue_wait_mean == pytest.approx(3.75)


def test_a_run_still_running_has_no_wall_time_and_no_critical_path_yet():
    running = Try("a", -1, 1, "running", queued=at(0), start=at(1))
    run = Run("d", "r", "running", "manual", at(0), at(0), None, (ti(running),), {"a": Task("a")})
    summary = summarise(run)
    assert summary.wall_seconds is None and summary.achieved_parallelism is None
    assert summary.critical_path == []


def test_failure_reasons_are_read_per_try_from_the_executors_note():
    note = (
        "Try 1: The worker pod fanout-workers/fanout-render-abc ran out of memory (OOMKilled).\n"
        "someone's own remark\nTry 3: The worker pod was deleted while the task ran."
    )
    assert reasons_from_note(note) == {
        1: "The worker pod fanout-workers/fanout-render-abc ran out of memory (OOMKilled).",
        3: "The worker pod was deleted while the task ran.",
    }
    assert reasons_from_note(None) == {}
