"""``make demo`` and ``make up``: the whole pipeline through the real scheduler on one machine.

python -m fanout.demo run   # start Dask and Airflow, trigger preprocessing, follow the asset-triggered
                            # training and rendering runs, stop both, print a summary
python -m fanout.demo up    # keep them running (Airflow's web UI on :8080, Dask's dashboard) until Ctrl-C

Both start a real Dask scheduler and one single-threaded worker process per CPU beside Airflow
(``fanout.localdask``); the preprocessing tasks are its clients (``fanout.daskrun``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from fanout.localstack import PROJECT_ROOT, AirflowClient, AirflowError, AirflowStack

PIPELINE = ("fanout_preprocess", "fanout_train", "fanout_render")


def _ts(value: str | None) -> float | None:
    return datetime.fromisoformat(value).timestamp() if value else None


@dataclass
class RunReport:
    dag_id: str
    run_id: str
    state: str
    wall_s: float
    task_sum_s: float
    tasks: int
    mapped: dict[str, int]
    outputs: dict
    partition_key: str | None = None

    @property
    def prefix(self) -> str:
        """Where the run wrote its outputs (its generation of its partition, see fanout.partitions)."""
        from fanout.partitions import run_prefix

        return run_prefix(self.dag_id.removeprefix("fanout_"), self.run_id, self.partition_key)

    @property
    def parallelism(self) -> float:
        return self.task_sum_s / self.wall_s if self.wall_s else 0.0


def summarise_run(client: AirflowClient, dag_id: str, run_id: str) -> RunReport:
    """Wall time, summed task time and achieved parallelism of one finished run."""
    run = client.dag_run(dag_id, run_id)
    tis = client.task_instances(dag_id, run_id)
    durations = [
        _ts(ti["end_date"]) - _ts(ti["start_date"]) for ti in tis if ti["start_date"] and ti["end_date"]
    ]
    mapped: dict[str, int] = {}
    for ti in tis:
        if ti["map_index"] >= 0:
            mapped[ti["task_id"]] = mapped.get(ti["task_id"], 0) + 1
    wall = (_ts(run["end_date"]) or time.time()) - (_ts(run["start_date"]) or time.time())
    return RunReport(
        dag_id, run_id, run["state"], wall, sum(durations), len(tis), mapped, {}, run.get("partition_key")
    )


class Progress:
    """Prints a line whenever a run's task counts change: task done/total, running, failed."""

    def __init__(self, dag_id: str, out=sys.stdout):
        self.dag_id, self.out, self.last = dag_id, out, ""

    def __call__(self, run: dict, tis: list[dict]) -> None:
        by_task: dict[str, list[str]] = {}
        for ti in tis:
            by_task.setdefault(ti["task_id"], []).append(ti["state"] or "none")
        parts = []
        for task_id, states in by_task.items():
            done = states.count("success")
            extra = [f"{states.count(s)} {s}" for s in ("running", "up_for_retry", "failed") if s in states]
            parts.append(f"{task_id} {done}/{len(states)}" + (f" ({', '.join(extra)})" if extra else ""))
        line = f"  [{self.dag_id}] {run['state']:<8} " + " | ".join(parts)
        if line != self.last:
            self.out.write(f"{time.strftime('%H:%M:%S')} {line}\n")
            self.out.flush()
            self.last = line


def run_pipeline(
    client: AirflowClient, conf: dict | None = None, timeout: float = 1800, partition_key: str | None = None
) -> list[RunReport]:
    """Trigger preprocessing of one partition and follow the runs its assets trigger, to the video.

    ``partition_key`` defaults to the partition the schedule's last tick covered; training and
    rendering follow partitioned asset events only.
    """
    from fanout.partitions import last_partition_key
    from fanout.settings import settings

    for dag_id in PIPELINE:
        client.unpause(dag_id)
    started = datetime.now(UTC).isoformat()
    reports = []
    key = partition_key or last_partition_key(settings().schedule)
    run_id = client.trigger(PIPELINE[0], conf or {}, partition_key=key)
    for index, dag_id in enumerate(PIPELINE):
        if index:
            run_id = wait_partition_run(client, dag_id, key, after=started)
        print(f"{time.strftime('%H:%M:%S')} {dag_id}: run {run_id}", flush=True)
        run = client.wait_run(dag_id, run_id, timeout=timeout, on_poll=Progress(dag_id), interval=2)
        reports.append(summarise_run(client, dag_id, run_id))
        if run["state"] != "success":
            break
    return reports


def wait_partition_run(client: AirflowClient, dag_id: str, key: str, after: str, timeout: float = 300) -> str:
    """The first asset-triggered run of ``dag_id`` for partition ``key`` queued after ``after`` (ISO time)."""
    deadline = time.monotonic() + timeout
    while True:
        runs = [
            r
            for r in client.dag_runs(dag_id)
            if r["run_type"] == "asset_triggered"
            and r.get("partition_key") == key
            and (r.get("queued_at") or "") > after
        ]
        if runs:
            return min(runs, key=lambda r: r["queued_at"])["dag_run_id"]
        if time.monotonic() > deadline:
            raise AirflowError(f"no asset-triggered run of {dag_id} for partition {key} within {timeout}s")
        time.sleep(1)


def print_summary(reports: list[RunReport], total_wall: float, artifact_root: str) -> dict:
    print("\nfanout demo summary")
    print(f"{'DAG':<20}{'state':<9}{'wall s':>8}{'task s':>9}{'parallel':>10}  mapped tasks")
    for r in reports:
        mapped = ", ".join(f"{k} x{v}" for k, v in r.mapped.items())
        print(
            f"{r.dag_id:<20}{r.state:<9}{r.wall_s:>8.1f}{r.task_sum_s:>9.1f}{r.parallelism:>9.2f}x  {mapped}"
        )
    task_sum = sum(r.task_sum_s for r in reports)
    print(f"{'pipeline':<20}{'':<9}{total_wall:>8.1f}{task_sum:>9.1f}{task_sum / total_wall:>9.2f}x")
    outputs = locate_outputs(reports, artifact_root)
    print("\noutputs:")
    for name, path in outputs.items():
        print(f"  {name:<15} {path}")
    return {
        "total_wall_s": round(total_wall, 1),
        "runs": [
            {
                "dag_id": r.dag_id,
                "run_id": r.run_id,
                "state": r.state,
                "wall_s": round(r.wall_s, 1),
                "task_sum_s": round(r.task_sum_s, 1),
                "parallelism": round(r.parallelism, 2),
                "mapped": r.mapped,
            }
            for r in reports
        ],
        "outputs": outputs,
    }


def locate_outputs(reports: list[RunReport], artifact_root: str) -> dict[str, str]:
    runs = {r.dag_id: r.prefix for r in reports if r.state == "success"}
    candidates = {
        "features": ("fanout_preprocess", "{run}/merged/manifest.json"),
        "model": ("fanout_train", "{run}/best/model.pt"),
        "metrics": ("fanout_train", "{run}/best/metrics.json"),
        "video": ("fanout_render", "{run}/video/render.mp4"),
        "contact sheet": ("fanout_render", "{run}/video/contact_sheet.png"),
    }
    return {
        name: f"{artifact_root}/{rel.format(run=runs[dag_id])}"
        for name, (dag_id, rel) in candidates.items()
        if dag_id in runs
    }


DEMO_SCHEDULE = "*/3 * * * *"
"""``make up``'s cadence unless FANOUT_SCHEDULE is set: a partition every three minutes, to watch."""


def make_stack(home: Path, port: int = 0, extra_env: dict[str, str] | None = None) -> AirflowStack:
    return AirflowStack(home=home, port=port, dask=True, report=_say, extra_env=extra_env or {})


def _say(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


def describe_dask(stack: AirflowStack) -> str:
    cluster = stack.dask_cluster
    return (
        f"Dask scheduler {cluster.address} with {cluster.workers} single-threaded worker processes; "
        f"dashboard {cluster.dashboard_url}"
    )


def prepare(client: AirflowClient, stack: AirflowStack) -> None:
    """Create the GPU Airflow pool with the stack's settings, then wait for the DAGs."""
    from fanout.settings import settings

    current = settings(stack.env())
    client.set_pool(
        current.gpu_airflow_pool, current.gpu_airflow_pool_slots, "GPU-sized tasks: trials and render chunks"
    )
    client.wait_for_dags(list(PIPELINE))


def cmd_run(args: argparse.Namespace) -> int:
    from fanout.settings import settings

    artifact_root = settings().artifact_root
    print(f"fanout demo: Airflow home {args.home}, artifacts in {artifact_root}", flush=True)
    started = time.monotonic()
    stack = make_stack(Path(args.home))
    client = stack.start()
    print(f"Airflow is up at {stack.base_url} after {time.monotonic() - started:.1f}s", flush=True)
    print(describe_dask(stack), flush=True)
    try:
        prepare(client, stack)
        t0 = time.monotonic()
        reports = run_pipeline(client, json.loads(args.conf) if args.conf else None)
        summary = print_summary(reports, time.monotonic() - t0, artifact_root)
    finally:
        stack.stop()
    summary_path = Path(args.home) / "demo-summary.json"
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nsummary JSON: {summary_path}; whole demo {time.monotonic() - started:.0f}s")
    ok = len(reports) == len(PIPELINE) and all(r.state == "success" for r in reports)
    return 0 if ok else 1


def cmd_up(args: argparse.Namespace) -> int:
    schedule = os.environ.get("FANOUT_SCHEDULE") or DEMO_SCHEDULE
    stack = make_stack(Path(args.home), port=args.port, extra_env={"FANOUT_SCHEDULE": schedule})
    client = stack.start()
    try:
        prepare(client, stack)
        for dag_id in PIPELINE:  # scheduled runs start on their own: one partition per tick
            client.unpause(dag_id)
        print(f"fanout_preprocess runs on '{schedule}' (UTC), one partition per run (FANOUT_SCHEDULE)")
        print(f"Airflow UI: {stack.base_url}  user: admin  password: {client.password}")
        print("Each DAG run's page has a 'Fanout report' tab (or open /fanout/runs/<dag_id>/<run_id>).")
        print(describe_dask(stack))
        print(
            f"Logs: {stack.home}/logs. A component that dies is restarted (said here); "
            "Ctrl-C stops every component.",
            flush=True,
        )
        while True:
            time.sleep(3600)  # the supervisor's thread does the watching
    except KeyboardInterrupt:
        pass
    finally:
        stack.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fanout.demo", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--home",
        default=os.environ.get("AIRFLOW_HOME") or str(PROJECT_ROOT / ".airflow"),
        help="AIRFLOW_HOME",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the whole pipeline once and print a summary")
    run.add_argument("--conf", help="JSON conf for the preprocessing run, e.g. '{\"n_shards\": 8}'")
    run.set_defaults(func=cmd_run)
    up = sub.add_parser("up", help="keep Airflow running with its web UI")
    up.add_argument("--port", type=int, default=8080)
    up.set_defaults(func=cmd_up)
    args = parser.parse_args(argv)
    # A SIGTERM (timeout, CI, kill) unwinds like Ctrl-C, so the stack's process groups are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
