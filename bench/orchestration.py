"""Orchestration overhead: what a task costs in Airflow when the task itself does nothing.

``bench_noop`` fans out ``n`` mapped tasks that return at once, so every second of a run is
Airflow's: the scheduler queueing, the LocalExecutor worker starting a supervisor and a task
process, the Execution API calls, and the teardown after the task returned. Per task we report
queued -> start and start -> end (task instance timestamps), how long the task held its worker
(the supervisor's own "Workload finished" duration, from the scheduler log), and the CPU time
every component spent per task.

Each figure is measured on the stack as shipped and, in the same run, on plain Airflow with
the same settings (the anchor: Airflow's LocalExecutor, no fanout plugin, no fanout DAGs), so
the difference is fanout's. A fan-out still running at its cap is stopped and reported with what
it reached (expanded, queued, running, done); nothing is extrapolated from it.

A burst of concurrent trigger and unpause requests measures whether the api-server stays
responsive while the scheduler works (HTTP errors, latency).
"""

from __future__ import annotations

import threading
import time
import urllib.parse

from bench.common import clock, distribution, percentile, ratio, rnd, ts
from bench.stack import BenchStack, heartbeat_interval, worker_hold_times
from fanout.localstack import AirflowError

DAG_ID = "bench_noop"
FANOUT_TASK = "noop"


def single_task_latency(bench: BenchStack, runs: int) -> dict:
    """queued -> start -> success of one no-op task on an otherwise idle stack, ``runs`` times."""
    queued_to_start, start_to_end, queued_to_success = [], [], []
    for _ in range(runs):
        run = bench.run_dag(DAG_ID, {"n": 1})
        (ti,) = [t for t in run["task_instances"] if t["task_id"] == FANOUT_TASK]
        queued, start, end = ts(ti["queued_when"]), ts(ti["start_date"]), ts(ti["end_date"])
        queued_to_start.append(start - queued)
        start_to_end.append(end - start)
        queued_to_success.append(end - queued)
    return {
        "runs": runs,
        "queued_to_start_s": distribution(queued_to_start),
        "start_to_end_s": distribution(start_to_end),
        "queued_to_success_s": distribution(queued_to_success),
    }


def noop_fanout(bench: BenchStack, n: int, cap_s: float, interval: float) -> dict:
    """One fan-out of ``n`` no-op tasks, stopped after ``cap_s`` if it has not finished by then."""
    client = bench.client
    client.unpause(DAG_ID)
    began = time.monotonic()
    run_id = client.trigger(DAG_ID, {"n": n})
    deadline = began + cap_s
    slow_polls = 0
    while True:
        try:
            run = client.dag_run(DAG_ID, run_id)
        except (TimeoutError, OSError):
            slow_polls += 1  # the api-server did not answer within the client's 30 s: counted
            if time.monotonic() > deadline:
                run = client.dag_run(DAG_ID, run_id)
                break
            continue
        if run["state"] in ("success", "failed") or time.monotonic() > deadline:
            break
        time.sleep(0.5)  # polls only the run: listing 1,000 task instances would load the API
    ended, ended_epoch = time.monotonic(), time.time()
    capped = run["state"] not in ("success", "failed")
    if capped:
        # Failing the run marks every task instance failed, finished ones too (Airflow 3.3):
        # what it reached is read before.
        reached, mapped = _stop_run(bench, run_id, ended_epoch)
        stop_s = time.monotonic() - ended
    elif run["state"] != "success":
        raise RuntimeError(f"{DAG_ID} n={n} ended {run['state']}")
    else:
        mapped = _mapped(bench, run_id)
    # A capped run's tasks that finish while it is being stopped are not counted.
    done = [
        t for t in mapped if t["state"] == "success" and t["end_date"] and ts(t["end_date"]) <= ended_epoch
    ]
    resources = bench.monitor.window(began, ended)
    wall = None if capped else ts(run["end_date"]) - ts(run["start_date"])
    held = worker_hold_times(bench, {t["id"] for t in done})
    result = {
        "n": n,
        "completed": not capped,
        "cap_s": cap_s,
        "tasks_done": len(done),
        "wall_s": rnd(wall),
        "elapsed_s": rnd(ended - began),
        "wall_per_1000_tasks_s": rnd(wall / n * 1000) if wall else None,
        "queued_to_start_s": distribution(ts(t["start_date"]) - ts(t["queued_when"]) for t in done),
        "start_to_end_s": distribution(ts(t["end_date"]) - ts(t["start_date"]) for t in done),
        "worker_hold_s": distribution(held),
        "held_a_heartbeat_interval": rnd(
            ratio(sum(h >= 0.9 * interval for h in held), len(held)) if held else None
        ),
        "stack_cpu_s_per_task": rnd(ratio(resources["cpu_s"], len(done)), 3),
        "stack_cpu_s_per_task_by_component": {
            name: rnd(ratio(cpu, len(done)), 3)
            for name, cpu in (resources["cpu_s_by_component"] or {}).items()
        },
        "peak_rss_mib": resources["peak_rss_mib"],
        "other_load_cores": resources["other_load_cores"],
        "unanswered_polls": slow_polls,
    }
    if capped:
        result["reached"] = reached
        result["stop_s"] = rnd(stop_s, 1)  # reading what it reached, failing it, waiting for its tasks
        if not done:
            result["status"] = "error"
            result["reason"] = (
                f"no task completed within the {cap_s:g} s cap; reached {_reached_text(reached)}"
            )
    return result


def _reached_text(reached: dict) -> str:
    return (
        f"{reached['expanded']} expanded, {reached['queued']} queued, {reached['started']} started, "
        f"{reached['done']} done"
    )


def _mapped(bench: BenchStack, run_id: str) -> list[dict]:
    return [
        t
        for t in bench.client.task_instances(DAG_ID, run_id)
        if t["task_id"] == FANOUT_TASK and t["map_index"] >= 0
    ]


def _stop_run(
    bench: BenchStack, run_id: str, at_epoch: float, timeout: float = 30
) -> tuple[dict, list[dict]]:
    """What a capped run reached at ``at_epoch`` and its mapped task instances as they were then;
    then fail it and wait until its tasks left the workers."""
    tis = _mapped(bench, run_id)

    def before(value: str | None) -> bool:
        return bool(value) and ts(value) <= at_epoch

    reached = {
        "expanded": len(tis),
        "queued": sum(before(t["queued_when"]) for t in tis),
        "started": sum(before(t["start_date"]) for t in tis),
        "done": sum(t["state"] == "success" and before(t["end_date"]) for t in tis),
    }
    _fail_runs(bench, [run_id])
    left_busy = _wait_idle(bench, [run_id], timeout)
    if left_busy:
        reached["left_busy"] = left_busy
    return reached, tis


def _fail_runs(bench: BenchStack, run_ids: list[str], tries: int = 3) -> None:
    """Mark runs failed. Airflow's "mark failed" updates the task instances, then the run, while
    the scheduler locks them the other way round: PostgreSQL may end one as a deadlock (HTTP 500),
    and a retry then finds no one holding the locks."""
    for run_id in run_ids:
        path = f"/dags/{DAG_ID}/dagRuns/{urllib.parse.quote(run_id, safe='')}"
        for attempt in range(tries):
            try:
                bench.client.patch(path, {"state": "failed"})
                break
            except AirflowError as exc:
                if "HTTP 500" not in str(exc) or attempt == tries - 1:
                    raise
                time.sleep(1)


BUSY_STATES = ("queued", "running", "scheduled", "restarting")


def _wait_idle(bench: BenchStack, run_ids: list[str], timeout: float = 30) -> dict[str, int]:
    """Wait until no task of ``run_ids`` is queued or running, and the supervisors are gone.

    Returns what was still busy, by state, if ``timeout`` ran out (empty when idle). Tasks still
    busy after 5 s have their runs failed once more: Airflow's "mark failed" skips the task
    instances that exist when it runs, and a quick run's cap (2 s) once left its run busy for
    the whole 30 s (cause not caught; the states are recorded now).
    """
    began = time.monotonic()
    failed_again = False
    busy: dict[str, int] = {}
    while time.monotonic() < began + timeout:
        # Counted by the API (one small answer per state), not listed: a capped run has 1,000.
        busy = {
            state: count
            for state in BUSY_STATES
            if (
                count := sum(
                    bench.client.get(
                        f"/dags/{DAG_ID}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances",
                        state=[state],
                        limit=1,
                    )["total_entries"]
                    for run_id in run_ids
                )
            )
        }
        if not busy:
            break
        if not failed_again and time.monotonic() > began + 5:
            _fail_runs(bench, run_ids)
            failed_again = True
        time.sleep(1)
    time.sleep(2)  # teardown of the last supervisors
    return busy


def trigger_burst(bench: BenchStack, requests: int) -> dict:
    """``requests`` concurrent API calls, alternately triggering ``bench_noop`` and (un)pausing it.

    The runs it creates are failed right after (they would queue behind each other), so the burst
    leaves nothing running. Reports every answer that was not a success and the latency.
    """
    client = bench.client
    client.unpause(DAG_ID)
    client.token()  # one login before the burst, not one per thread
    latencies: list[float] = []
    errors: list[str] = []
    run_ids: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(requests)

    def one(index: int) -> None:
        start.wait()
        began = time.perf_counter()
        try:
            if index % 2:
                client.patch(f"/dags/{DAG_ID}", {"is_paused": False})
            else:
                run_ids.append(client.trigger(DAG_ID, {"n": 1}))
            outcome = None
        except (AirflowError, OSError) as exc:
            outcome = str(exc)[:200]
        with lock:
            latencies.append(time.perf_counter() - began)
            if outcome:
                errors.append(outcome)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(requests)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    cleaning = time.monotonic()
    _fail_runs(bench, run_ids)
    left_busy = _wait_idle(bench, run_ids)
    return {
        "requests": requests,
        "stop_s": rnd(time.monotonic() - cleaning, 1),  # failing its runs, waiting for their tasks
        **({"left_busy": left_busy} if left_busy else {}),
        "errors": len(errors),
        "error_examples": errors[:3],
        "latency_s": {
            "p50": rnd(percentile(latencies, 50)),
            "p95": rnd(percentile(latencies, 95)),
            "max": rnd(max(latencies)),
        },
    }


def pool_map_floor(n: int, processes: int) -> dict:
    """The same no-op through ``multiprocessing.Pool.map``: the floor of per-task overhead."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with context.Pool(processes) as pool:
        pool.map(_noop, range(processes))  # workers are up before the clock starts
        started = time.perf_counter()
        pool.map(_noop, range(n), chunksize=1)
        wall = time.perf_counter() - started
    return {"n": n, "processes": processes, "wall_s": rnd(wall, 4), "per_task_ms": rnd(wall / n * 1000, 3)}


def _noop(item: int) -> int:
    return item


def run(bench: BenchStack, sizes, floor: bool = True) -> dict:
    """Every orchestration figure on ``bench``: one-task latency, each fan-out size, a burst."""
    interval = heartbeat_interval(bench)
    phases: dict[str, float] = {}
    section = {
        "stack": "plain Airflow (anchor)" if bench.plain else "fanout",
        "database": bench.stack.database if not bench.stack.database_uri else "external",
        "parallelism": bench.parallelism,
        "min_heartbeat_interval_s": interval,
    }
    with clock(phases, "single task"):
        section["single_task"] = single_task_latency(bench, sizes.single_task_runs)
    section["fanouts"] = []
    for n in sizes.noop_sizes:
        with clock(phases, f"no-op x{n}"):
            section["fanouts"].append(noop_fanout(bench, n, sizes.noop_cap_s, interval))
    with clock(phases, "burst"):
        section["burst"] = trigger_burst(bench, sizes.burst_requests)
    if floor:
        with clock(phases, "Pool.map floor"):
            section["pool_map_floor"] = pool_map_floor(max(sizes.noop_sizes), bench.parallelism)
    if sizes.capped_probe and not bench.plain:
        n, cap = sizes.capped_probe
        with clock(phases, f"capped probe x{n}"):
            section["capped_probe"] = noop_fanout(bench, n, cap, interval)
    section["phase_seconds"] = phases
    return section


def database_whatif(bench: BenchStack, sizes) -> dict:
    """The burst and the middle fan-out on a stack that differs only in its database."""
    interval = heartbeat_interval(bench)
    n = sizes.whatif_noop
    phases: dict[str, float] = {}
    with clock(phases, f"no-op x{n}"):
        fanout = noop_fanout(bench, n, sizes.noop_cap_s, interval)
    with clock(phases, "burst"):
        burst = trigger_burst(bench, sizes.burst_requests)
    return {"database": bench.stack.database, "fanout": fanout, "burst": burst, "phase_seconds": phases}


# -- the table -------------------------------------------------------------------------------
def _fanout_of(section: dict | None, n: int) -> dict | None:
    return next((f for f in (section or {}).get("fanouts", []) if f["n"] == n), None)


def _wall_text(fanout: dict | None) -> str:
    if fanout is None:
        return "not measured"
    if fanout.get("status") == "error":
        return f"error: {fanout['reason']}"
    if not fanout["completed"]:
        return f"not done within the {fanout['cap_s']:g} s cap ({_reached_text(fanout['reached'])})"
    return f"{fanout['wall_s']} s"


def targets(section: dict, anchor: dict | None, database: dict | None = None) -> list[dict]:
    """single no-op queued -> success p50 <= 0.3 s; 1,000 no-ops <= 60 s; no error in a burst."""
    rows = []
    single = section["single_task"]["queued_to_success_s"]["p50"]
    anchor_single = (anchor or {}).get("single_task", {}).get("queued_to_success_s", {}).get("p50")
    rows.append(
        {
            "id": "noop_queued_to_success_p50",
            "benchmark": "orchestration",
            "figure": "no-op task queued→success p50",
            "value": single,
            "unit": "s",
            "target": "<= 0.3 s",
            "met": None if single is None else single <= 0.3,
            "note": f"plain Airflow {anchor_single} s" if anchor_single is not None else "",
            "blocker": "process start of the supervisor and the task, and its Execution API calls",
        }
    )
    biggest = max(section["fanouts"], key=lambda f: f["n"])
    thousand = _fanout_of(section, 1000)
    anchor_thousand = _fanout_of(anchor, 1000)
    if thousand is None:
        rows.append(
            {
                "id": "noop_1000_wall",
                "benchmark": "orchestration",
                "figure": "1,000-task no-op fan-out",
                "value": None,
                "unit": "s",
                "target": "<= 60 s",
                "met": None,
                "note": "full mode only",
            }
        )
    else:
        value = thousand["wall_s"] if thousand["completed"] else None
        error = thousand.get("status") == "error"
        rows.append(
            {
                "id": "noop_1000_wall",
                "benchmark": "orchestration",
                "figure": "1,000-task no-op fan-out"
                + ("" if thousand["completed"] else f": {_wall_text(thousand)}"),
                "value": value,
                "unit": "s",
                # A fan-out stopped at a cap no longer than the target missed it: that is measured.
                "target": "<= 60 s",
                "met": value <= 60 if value is not None else (False if thousand["cap_s"] <= 60 else None),
                "note": f"plain Airflow: {_wall_text(anchor_thousand)}",
                "blocker": "" if error else _blocker(biggest, section),
                **({"status": "error"} if error else {}),
            }
        )
    for fanout in section["fanouts"]:
        if fanout["n"] != 1000 and fanout.get("status") == "error":
            rows.append(
                {
                    "id": f"noop_{fanout['n']}_wall",
                    "benchmark": "orchestration",
                    "figure": f"no-op x{fanout['n']} fan-out: {_wall_text(fanout)}",
                    "value": None,
                    "unit": "s",
                    "target": "completes",
                    "met": None,
                    "status": "error",
                }
            )
    burst = section.get("burst")
    if burst:
        sqlite = (database or {}).get("burst")
        plain = (anchor or {}).get("burst")
        rows.append(
            {
                "id": "burst_errors",
                "benchmark": "orchestration",
                "figure": f"{burst['requests']} concurrent trigger/unpause requests: failed answers",
                "value": burst["errors"],
                "unit": "",
                "target": "0",
                "met": burst["errors"] == 0,
                "note": f"p95 {burst['latency_s']['p95']} s"
                + (
                    f"; plain Airflow {plain['errors']} failed, p95 {plain['latency_s']['p95']} s"
                    if plain
                    else ""
                )
                + (
                    f"; on SQLite {sqlite['errors']} failed, p95 {sqlite['latency_s']['p95']} s"
                    if sqlite
                    else ""
                ),
                "blocker": "; ".join(burst["error_examples"]),
            }
        )
    return rows


def _blocker(fanout: dict, section: dict) -> str:
    if fanout.get("status") == "error":
        return ""
    hold = fanout["worker_hold_s"]
    cpu = fanout["stack_cpu_s_per_task"]
    return (
        f"each task holds its worker p50 {hold['p50']} s / p95 {hold['p95']} s although it runs "
        f"{fanout['start_to_end_s']['p50']} s; the stack spends {cpu} CPU-s per task ({_by_component(fanout)})"
        + (
            f", so {fanout['n']:,} tasks need {fanout['n'] * cpu / section['parallelism']:.0f} s of all "
            f"{section['parallelism']} cores even with no waiting"
            if cpu
            else ""
        )
    )


def _by_component(fanout: dict) -> str:
    """'scheduler (its workers and tasks) 0.31, api-server 0.12, ...' CPU-s per task."""
    parts = sorted(fanout["stack_cpu_s_per_task_by_component"].items(), key=lambda kv: -(kv[1] or 0))
    return ", ".join(f"{name} {cpu}" for name, cpu in parts)


def figures(
    section: dict | None, anchor: dict | None = None, database: dict | None = None
) -> list[tuple[str, str]]:
    """Informative lines for the table: per-size walls, per-task percentiles, CPU by component.

    ``section`` is None when only the what-if stack ran (``--only database``)."""
    rows = []
    for label, sec in (("fanout", section), ("plain Airflow", anchor)):
        if not sec:
            continue
        for fanout in sec["fanouts"]:
            rows.append((f"{label}: no-op x{fanout['n']}", _fanout_text(fanout)))
        single = sec["single_task"]
        rows.append(
            (
                f"{label}: single no-op task",
                f"queued→start {single['queued_to_start_s']['p50']} s, start→end {single['start_to_end_s']['p50']} s",
            )
        )
        burst = sec.get("burst")
        if burst:
            rows.append((f"{label}: burst of {burst['requests']} requests", _burst_text(burst)))
    if database:
        rows.append(
            (
                f"fanout on {database['database']}: no-op x{database['fanout']['n']}",
                _fanout_text(database["fanout"]),
            )
        )
        rows.append(
            (
                f"fanout on {database['database']}: burst of {database['burst']['requests']} requests",
                _burst_text(database["burst"]),
            )
        )
    floor = (section or {}).get("pool_map_floor")
    if floor:
        rows.append((f"Pool.map floor x{floor['n']}", f"{floor['per_task_ms']} ms per task"))
    return rows


def _fanout_text(fanout: dict) -> str:
    if fanout.get("status") == "error":
        return f"error: {fanout['reason']}"
    head = (
        f"{fanout['wall_per_1000_tasks_s']} s per 1,000 tasks"
        if fanout["completed"]
        else f"not done within the {fanout['cap_s']:g} s cap ({_reached_text(fanout['reached'])})"
    )
    return (
        f"{head}; queued→start p50/p95 {fanout['queued_to_start_s']['p50']}/{fanout['queued_to_start_s']['p95']} s; "
        f"start→end {fanout['start_to_end_s']['p50']}/{fanout['start_to_end_s']['p95']} s; "
        f"worker held {fanout['worker_hold_s']['p50']}/{fanout['worker_hold_s']['p95']} s; "
        f"{fanout['stack_cpu_s_per_task']} CPU-s/task ({_by_component(fanout)}); "
        f"other processes' load {fanout['other_load_cores']} cores"
    )


def _burst_text(burst: dict) -> str:
    text = (
        f"{burst['errors']} failed; latency p50 {burst['latency_s']['p50']} s, p95 {burst['latency_s']['p95']} s, "
        f"max {burst['latency_s']['max']} s"
    )
    return text + (f" ({burst['error_examples'][0]})" if burst["error_examples"] else "")
