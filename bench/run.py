"""The benchmark run: every benchmark in order, the result JSON and the markdown table.

Order matters for noise and time: benchmarks without Airflow first (parse, task start, kernels,
Dask, the Pool.map floors), then one stack with every core (orchestration, the demo-like pipeline
for memory, the render and preprocessing fan-outs, then the render fan-out again with its Airflow
pool at 1 slot: the sequential run), plain Airflow with the same settings (the anchor of the
orchestration figures), and the KubernetesExecutor on the local cluster harness. Only the stack
with every core runs Dask: the others run no preprocessing. The same stack on the other database
(SQLite, the ``database`` group) runs only when asked for with ``--only``.

``phase_seconds`` in the result says where the run's time went (stack starts and stops included).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from bench import (
    common,
    dask_overhead,
    kernels,
    kubernetes,
    memory,
    orchestration,
    parse_time,
    report,
    speedup,
    task_start,
)
from bench.common import CPUS, RESULTS_DIR, clock, log_to_stderr, run_section
from bench.stack import SHIPPED_HEARTBEAT_INTERVAL_S, BenchStack, bench_stack, dag_processor_durations
from fanout.settings import settings

# What ``--only`` selects; the stacks start only for the groups that need them.
GROUPS = (
    "parse",
    "task_start",
    "kernels",
    "dask",
    "speedup",
    "orchestration",
    "memory",
    "kubernetes",
    "database",
)
OPT_IN = ("database",)
"""Groups a full run leaves out: only ``--only`` runs them (bench/README.md says why)."""


def run_all(
    sizes: common.Sizes, log: Callable[[str], None] = log_to_stderr, only: set[str] | None = None
) -> dict:
    """Every benchmark, or the groups in ``only`` (a partial run: no runtime target)."""
    started = time.monotonic()

    def wanted(group: str) -> bool:
        return group in only if only is not None else group not in OPT_IN

    results: dict = {
        "schema": 1,
        "mode": sizes.mode,
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": common.machine(),
        "sizes": common.sizes_dict(sizes),
        "sections": {},
        "phase_seconds": {},
    }
    if only is not None:
        results["only"] = sorted(only)
    sections = results["sections"]

    if wanted("parse"):
        sections["parse"] = run_section("parse", lambda: parse_time.run(sizes.repeats), log)
    if wanted("task_start"):
        sections["task_start"] = run_section("task start", lambda: task_start.run(sizes.repeats), log)
    if wanted("kernels"):
        sections["kernels"] = run_section(
            "kernels", lambda: kernels.run(sizes.kernel_seconds, sizes.kernel_policies), log
        )
    if wanted("dask"):
        sections["dask"] = run_section("dask", lambda: dask_overhead.run(sizes), log)

    fanouts: dict[str, dict] = {name: {} for name in speedup.WORKLOADS} if wanted("speedup") else {}
    failures: list[str] = []
    phases: dict[str, float] = results["phase_seconds"]

    def phase(name: str, fn: Callable[[], None]) -> None:
        section = run_section(name, lambda: fn() or {}, log)
        phases[name] = section["seconds"]
        if section["status"] != "ok":
            failures.append(f"{name}: {section['reason']}")

    def stack_times(label: str, stack: BenchStack) -> None:
        phases[f"{label}: start"] = round(stack.started_s, 1)
        if stack.stopped_s is not None:
            phases[f"{label}: stop"] = round(stack.stopped_s, 1)
            log(f"   {label} stopped in {stack.stopped_s:.1f} s")

    with tempfile.TemporaryDirectory(prefix="fanout-bench-shared-") as shared:
        artifact_root = Path(shared)
        shards: list[str] = []
        if fanouts:
            phase("dataset", lambda: shards.extend(speedup.prepare_dataset(artifact_root, sizes)))

        def pool_floors() -> None:
            for name, floor in speedup.pool_floors(fanouts, artifact_root, sizes, shards, repeats=1).items():
                fanouts[name]["pool_map"] = floor

        if fanouts:
            phase("pool-map floors", pool_floors)

        def all_cores() -> None:
            # Every task pinned to one thread (what cores // parallelism gives anyway), so that the
            # render fan-out at 1 pool slot and at every slot differ only in how many run at once.
            with bench_stack(
                CPUS,
                sizes.stack_overrides,
                fanout_params=sizes.demo_params,
                task_cpus=1,
                artifact_root=artifact_root,
            ) as stack:
                log(f"   stack with parallelism {CPUS} up in {stack.started_s:.1f} s")
                if wanted("orchestration"):
                    sections["orchestration"] = run_section(
                        "orchestration", lambda: orchestration.run(stack, sizes), log
                    )
                if wanted("memory") and sizes.demo_params:
                    sections["memory"] = run_section(
                        "memory", lambda: memory.run_pipeline(stack, sizes.demo_params), log
                    )
                for name in fanouts:
                    log(f"-- {name} fan-out, parallelism {CPUS}")
                    with clock(phases, f"{name} fan-out, parallelism {CPUS}"):
                        fanouts[name]["parallel"] = speedup.airflow_fanout(stack, name, sizes)
                for name in speedup.AIRFLOW_BASELINE if fanouts else ():
                    log(f"-- {name} fan-out, one at a time (its Airflow pool at 1 slot)")
                    with clock(phases, f"{name} fan-out, 1 pool slot"):
                        fanouts[name]["sequential"] = speedup.sequential_fanout(stack, name, sizes)
                if wanted("memory"):
                    if not sizes.demo_params:
                        sections["memory"] = {
                            "status": "ok",
                            **memory.over_session(stack, "fan-outs of this stack (quick mode)"),
                        }
                    sections["memory"]["session_peak_rss_mib"] = stack.monitor.window(0, float("inf"))[
                        "peak_rss_mib"
                    ]
                processor = dag_processor_durations(stack)
                for entry in (sections.get("parse") or {}).get("files", []):
                    entry["dag_processor_s"] = processor.get(entry["file"])
            stack_times(f"stack, parallelism {CPUS}", stack)

        if fanouts or wanted("orchestration") or wanted("memory"):
            phase(f"stack, parallelism {CPUS}", all_cores)

        orchestration_section = sections.get("orchestration") or {}
        if sizes.anchor and orchestration_section.get("status") == "ok":

            def anchor() -> dict:
                with bench_stack(
                    CPUS, sizes.stack_overrides, artifact_root=artifact_root, plain=True, dask=False
                ) as stack:
                    log(f"   plain Airflow with parallelism {CPUS} up in {stack.started_s:.1f} s")
                    section = orchestration.run(stack, sizes, floor=False)
                stack_times("plain Airflow", stack)
                return section

            sections["orchestration_anchor"] = run_section(
                "orchestration, plain Airflow (anchor)", anchor, log
            )

        if wanted("database") and sizes.whatif_noop:
            shipped = orchestration_section.get("database") or settings().local_database
            other = "sqlite" if shipped == "postgres" else "postgres"

            def database() -> dict:
                with bench_stack(
                    CPUS, sizes.stack_overrides, artifact_root=artifact_root, database=other, dask=False
                ) as stack:
                    log(f"   stack on {other} up in {stack.started_s:.1f} s")
                    section = orchestration.database_whatif(stack, sizes)
                stack_times(f"stack on {other}", stack)
                return section

            sections["orchestration_database"] = run_section(f"orchestration on {other}", database, log)

    if fanouts:
        sections["speedup"] = _speedup_section(fanouts, failures)
    if (sections.get("speedup") or {}).get("status") == "ok":
        sections["speedup"]["min_heartbeat_interval_s"] = float(
            sizes.stack_overrides.get(
                "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL", SHIPPED_HEARTBEAT_INTERVAL_S
            )
        )

    local_fanout = next(
        (
            f
            for f in orchestration_section.get("fanouts", [])
            if f["n"] == sizes.kubernetes_noop and f["completed"] and f.get("status") != "error"
        ),
        None,
    )
    if wanted("kubernetes"):
        sections["kubernetes"] = run_section(
            "kubernetes",
            lambda: kubernetes.run(
                sizes.kubernetes_noop, CPUS, local_fanout, sizes.stack_overrides, sizes.repeats
            ),
            log,
        )

    for name in ("orchestration", "memory"):
        if wanted(name):
            sections.setdefault(name, {"status": "error", "reason": "; ".join(failures) or "not run"})
    results["failures"] = failures
    results["duration_s"] = round(time.monotonic() - started, 1)
    results["targets"] = report.collect_targets(results)
    return results


def _speedup_section(fanouts: dict[str, dict], failures: list[str]) -> dict:
    section: dict = {"status": "ok"}
    for name, parts in fanouts.items():
        against_itself = name in speedup.AIRFLOW_BASELINE
        missing = {"pool_map", "parallel", *(["sequential"] if against_itself else [])} - set(parts)
        if missing:
            return {
                "status": "error",
                "reason": f"{name}: no {', '.join(sorted(missing))} ({'; '.join(failures) or 'not run'})",
            }
        if against_itself:
            section[name] = speedup.compare(parts["sequential"], parts["parallel"], parts["pool_map"])
        else:
            section[name] = speedup.compare_with_baseline(parts["parallel"], parts["pool_map"])
    return section


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: every code path in < 2 minutes")
    parser.add_argument("--out", type=Path, help="result JSON (default bench/results/<date>[-quick].json)")
    parser.add_argument("--no-readme", action="store_true", help="leave bench/README.md as it is")
    parser.add_argument(
        "--only",
        type=lambda text: set(text.split(",")),
        help=f"comma-separated groups to run, of {', '.join(GROUPS)} (a partial run: "
        "<date>-partial.json, bench/README.md left as it is, no runtime target)",
    )
    args = parser.parse_args(argv)
    if args.only is not None and not args.only <= set(GROUPS):
        parser.error(f"--only: unknown {sorted(args.only - set(GROUPS))}; groups: {', '.join(GROUPS)}")
    sizes = common.QUICK if args.quick else common.FULL
    # Workload and Dask progress lines would bury the benchmark's own; warnings still show.
    for name in ("distributed", "fanout", "airflow"):
        logging.getLogger(name).setLevel(logging.WARNING)
    log_to_stderr(f"fanout benchmarks, {sizes.mode} mode, {CPUS} cores")
    results = run_all(sizes, only=args.only)
    suffix = ("-quick" if args.quick else "") + ("-partial" if args.only is not None else "")
    out = args.out or RESULTS_DIR / f"{results['date']}{suffix}.json"
    common.write_json(out, results)
    table = report.markdown(results)
    print(table)
    print(f"results: {out}")
    if not args.quick and not args.no_readme and args.only is None:
        report.update_readme(table, out)
    errors = [name for name, s in results["sections"].items() if s.get("status") == "error"]
    errors += [row["figure"] for row in results["targets"] if row.get("status") == "error"]
    if errors:
        log_to_stderr(f"benchmarks that failed: {', '.join(errors)}")
    return 1 if errors else 0
