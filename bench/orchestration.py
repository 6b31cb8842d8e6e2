"""Orchestration overhead: what a task costs in Airflow when the task itself does nothing.

``bench_noop`` fans out ``n`` mapped tasks that return at once, so every second of a run is
Airflow's: the scheduler queueing, the LocalExecutor worker starting a supervisor and a task
process, the Execution API calls, and the teardown after the task returned. Per task we report
queued -> start and start -> end (task instance timestamps), and how long the task held its
worker (the supervisor's own "Workload finished" duration, from the scheduler log).

Where the time goes, measured on Airflow 3.3.2: after a task process closes its sockets the
supervisor loops in ``_monitor_subprocess`` while the exit code is unknown; with no sockets
left to wake it, ``select`` sleeps the full ``[workers] min_heartbeat_interval`` (5 s) before
noticing the exit. Tasks that lose that race hold their worker ~5 s longer than they ran.
"""

from __future__ import annotations

import time
import urllib.parse

from bench.common import distribution, ratio, rnd, ts
from bench.stack import BenchStack, heartbeat_interval, worker_hold_times

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
    """One fan-out of ``n`` no-op tasks; stopped after ``cap_s`` and extrapolated if unfinished."""
    client = bench.client
    client.unpause(DAG_ID)
    began = time.monotonic()
    run_id = client.trigger(DAG_ID, {"n": n})
    deadline = began + cap_s
    while True:
        run = client.dag_run(DAG_ID, run_id)
        if run["state"] in ("success", "failed") or time.monotonic() > deadline:
            break
        time.sleep(0.5)  # polls only the run: listing 1,000 task instances would load the API
    ended, ended_epoch = time.monotonic(), time.time()
    capped = run["state"] not in ("success", "failed")
    if capped:
        _stop_run(bench, run_id)
    elif run["state"] != "success":
        raise RuntimeError(f"{DAG_ID} n={n} ended {run['state']}")
    tis = client.task_instances(DAG_ID, run_id)
    mapped = [t for t in tis if t["task_id"] == FANOUT_TASK and t["map_index"] >= 0]
    # A capped run's tasks that finish while it is being stopped are not counted.
    done = [
        t for t in mapped if t["state"] == "success" and t["end_date"] and ts(t["end_date"]) <= ended_epoch
    ]
    resources = bench.monitor.window(began, ended)
    elapsed = ended - began
    if capped:
        # Extrapolate from the fan-out's steady rate: tasks finished since the first one started.
        first_start = min((ts(t["start_date"]) for t in done), default=None)
        last_end = max((ts(t["end_date"]) for t in done), default=None)
        rate = ratio(len(done), (last_end - first_start) if done else None)
        wall = None
        projected = elapsed if not rate else (first_start - ts(run["start_date"])) + n / rate
    else:
        wall = ts(run["end_date"]) - ts(run["start_date"])
        projected = wall
    held = worker_hold_times(bench, {t["id"] for t in done})
    return {
        "n": n,
        "completed": not capped,
        "tasks_done": len(done),
        "wall_s": rnd(wall),
        "elapsed_s": rnd(elapsed),
        "projected_wall_s": rnd(projected),
        "wall_per_1000_tasks_s": rnd(projected / n * 1000),
        "tasks_per_s": rnd(ratio(n, projected)),
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
    }


def _stop_run(bench: BenchStack, run_id: str, timeout: float = 30) -> None:
    """Fail a capped run and wait until its tasks have left the workers."""
    quoted = urllib.parse.quote(run_id, safe="")
    bench.client.patch(f"/dags/{DAG_ID}/dagRuns/{quoted}", {"state": "failed"})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = [
            t
            for t in bench.client.task_instances(DAG_ID, run_id)
            if t["state"] in ("queued", "running", "scheduled", "restarting")
        ]
        if not busy:
            break
        time.sleep(1)
    time.sleep(2)  # teardown of the last supervisors


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


def run(bench: BenchStack, sizes) -> dict:
    """Every orchestration figure on ``bench``: one-task latency, each fan-out size, the floor."""
    interval = heartbeat_interval(bench)
    return {
        "parallelism": bench.parallelism,
        "min_heartbeat_interval_s": interval,
        "single_task": single_task_latency(bench, sizes.single_task_runs),
        "fanouts": [noop_fanout(bench, n, sizes.noop_cap_s, interval) for n in sizes.noop_sizes],
        "pool_map_floor": pool_map_floor(max(sizes.noop_sizes), bench.parallelism),
    }


def whatif_section(bench: BenchStack, n: int, cap_s: float, baseline: dict) -> dict:
    """The same no-op fan-out with Airflow's default ``min_heartbeat_interval`` (5 s) beside the
    stack as shipped (1 s): what the shipped setting buys."""
    airflow_default = noop_fanout(bench, n, cap_s, heartbeat_interval(bench))
    shipped = next((f for f in baseline["fanouts"] if f["n"] == n), None)
    return {
        "override": bench.overrides,
        "fanout": airflow_default,
        "shipped_speedup": rnd(
            ratio(
                airflow_default["wall_per_1000_tasks_s"],
                shipped["wall_per_1000_tasks_s"] if shipped else None,
            )
        ),
    }


def targets(section: dict, whatif: dict | None) -> list[dict]:
    """Targets: single no-op queued -> success p50 <= 0.3 s; 1,000 no-ops done in <= 60 s."""
    rows = []
    single = section["single_task"]["queued_to_success_s"]["p50"]
    fanouts = section["fanouts"]
    biggest = max(fanouts, key=lambda f: f["n"])
    hold = biggest["worker_hold_s"]
    blocker = (
        f"each task holds its worker p50 {hold['p50']} s / p95 {hold['p95']} s although it runs "
        f"{biggest['start_to_end_s']['p50']} s; {_pct(biggest['held_a_heartbeat_interval'])} of tasks wait out "
        f"min_heartbeat_interval ({section['min_heartbeat_interval_s']:g} s) in the supervisor after exiting; "
        f"the stack spends {biggest['stack_cpu_s_per_task']} CPU-s per task "
        f"({_by_component(biggest)}), so {biggest['n']:,} tasks need "
        f"{biggest['n'] * (biggest['stack_cpu_s_per_task'] or 0) / section['parallelism']:.0f} s of all "
        f"{section['parallelism']} cores even with no waiting"
    )
    if whatif:
        blocker += (
            f"; with Airflow's default min_heartbeat_interval (5 s) the same fan-out runs "
            f"{whatif['shipped_speedup']}x slower than shipped"
        )
    rows.append(
        {
            "id": "noop_queued_to_success_p50",
            "benchmark": "orchestration",
            "figure": "no-op task queued→success p50",
            "value": single,
            "unit": "s",
            "target": "<= 0.3 s",
            "met": None if single is None else single <= 0.3,
            "blocker": "process start of the supervisor and the task, and its Execution API calls",
        }
    )
    thousand = next((f for f in fanouts if f["n"] == 1000), None)
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
                "note": f"full mode only; projected from n={biggest['n']}: {biggest['wall_per_1000_tasks_s']} s",
            }
        )
    else:
        value = thousand["wall_s"] if thousand["completed"] else thousand["projected_wall_s"]
        rows.append(
            {
                "id": "noop_1000_wall",
                "benchmark": "orchestration",
                "figure": "1,000-task no-op fan-out"
                + (
                    "" if thousand["completed"] else f" (projected: {thousand['tasks_done']} done in the cap)"
                ),
                "value": value,
                "unit": "s",
                "target": "<= 60 s",
                "met": value is not None and value <= 60,
                "blocker": blocker,
            }
        )
    return rows


def _by_component(fanout: dict) -> str:
    """'scheduler (its workers and tasks) 0.31, api-server 0.12, ...' CPU-s per task."""
    parts = sorted(fanout["stack_cpu_s_per_task_by_component"].items(), key=lambda kv: -(kv[1] or 0))
    return ", ".join(
        f"{'scheduler with its workers and tasks' if name == 'scheduler' else name} {cpu}"
        for name, cpu in parts
    )


def _pct(value: float | None) -> str:
    return "?" if value is None else f"{value * 100:.0f} %"


def figures(section: dict) -> list[tuple[str, str]]:
    """Informative lines for the table: per-size walls and per-task percentiles."""
    rows = []
    for fanout in section["fanouts"]:
        label = f"no-op x{fanout['n']}" + ("" if fanout["completed"] else " (capped)")
        rows.append(
            (
                f"{label}: wall per 1,000 tasks",
                f"{fanout['wall_per_1000_tasks_s']} s; queued→start p50/p95 "
                f"{fanout['queued_to_start_s']['p50']}/{fanout['queued_to_start_s']['p95']} s; "
                f"start→end {fanout['start_to_end_s']['p50']}/{fanout['start_to_end_s']['p95']} s; "
                f"worker held {fanout['worker_hold_s']['p50']}/{fanout['worker_hold_s']['p95']} s; "
                f"{fanout['stack_cpu_s_per_task']} CPU-s/task ({_by_component(fanout)})",
            )
        )
    floor = section["pool_map_floor"]
    rows.append((f"Pool.map floor x{floor['n']}", f"{floor['per_task_ms']} ms per task"))
    single = section["single_task"]
    rows.append(
        (
            "single no-op task",
            f"queued→start {single['queued_to_start_s']['p50']} s, start→end {single['start_to_end_s']['p50']} s",
        )
    )
    return rows
