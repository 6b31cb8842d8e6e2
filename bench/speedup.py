"""Parallel speedup of the product DAGs' fan-outs, through the real scheduler.

``fanout_render`` (ray-traced chunks) runs with every core, then one chunk at a time on the same
stack (its Airflow pool at 1 slot: ``sequential_fanout``); every task is pinned to one thread in
both runs, so the speedup is the fan-out's alone.

``fanout_preprocess`` (featurised shards, on a dataset generated beforehand and passed as
``dataset_prefix``) runs with every core and the stack's Dask cluster (one single-threaded worker
process per core; the shard tasks are its clients). Its baseline is the shards one after another
in pandas, single-threaded (read, ``featurise_frame_pandas``, write), in a warm process.

The floor is what the seeds do: ``multiprocessing.Pool.map`` of the same work function
(``render_chunk``; the pandas shard) on the same inputs, 1 process then cores; for preprocessing,
``Pool.map`` with 1 process *is* the pandas baseline.

The fan-out phase runs from the first mapped task's start to the last one's end; the run wall
adds the plan and fan-in tasks. Achieved parallelism = summed mapped task durations / fan-out wall.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import time
import urllib.parse
from pathlib import Path

from bench.common import CPUS, alternate, cpu_snapshot, distribution, median, other_load, ratio, rnd, ts
from bench.stack import BenchStack, worker_hold_by_task

RENDER_SEED = 3
DATASET_SEED = 7
DATASET_DIRT = 0.03


def dataset_prefix(sizes) -> str:
    return f"bench/rides-{sizes.preprocess_shards}x{sizes.preprocess_rows_per_shard}"


def prepare_dataset(artifact_root: Path, sizes) -> list[str]:
    """Raw shards every variant reads, generated once before anything is timed."""
    from fanout import datasets
    from fanout.storage import ArtifactStore

    spec = datasets.SyntheticSpec(
        n_shards=sizes.preprocess_shards,
        rows_per_shard=sizes.preprocess_rows_per_shard,
        seed=DATASET_SEED,
        dirt=DATASET_DIRT,
    )
    return datasets.generate_dataset(ArtifactStore(str(artifact_root)), dataset_prefix(sizes), spec)


def render_conf(sizes) -> dict:
    return {
        "n_frames": sizes.render_chunks * sizes.render_frames_per_chunk,
        "chunk_size": sizes.render_frames_per_chunk,
        "width": sizes.render_width,
        "height": sizes.render_height,
        "samples": sizes.render_samples,
        "seed": RENDER_SEED,
        "model": "",
    }


def preprocess_conf(sizes) -> dict:
    return {
        "n_shards": sizes.preprocess_shards,
        "rows_per_shard": sizes.preprocess_rows_per_shard,
        "seed": DATASET_SEED,
        "dirt": DATASET_DIRT,
        "dataset_prefix": dataset_prefix(sizes),
    }


WORKLOADS = {
    # name: (DAG, mapped task, conf builder)
    "render": ("fanout_render", "render_chunk", render_conf),
    "preprocess": ("fanout_preprocess", "featurise_shard", preprocess_conf),
}
AIRFLOW_BASELINE = ("render",)
"""Fan-outs compared with themselves at parallelism 1; the others with their Pool.map(1) baseline."""


# -- through the scheduler -------------------------------------------------------------------
def airflow_fanout(bench: BenchStack, workload: str, sizes, slots: int | None = None) -> dict:
    """One run of the workload's DAG; ``slots`` is how many mapped tasks could run at once when
    an Airflow pool, not the stack's parallelism, limits them (``sequential_fanout``)."""
    dag_id, task_id, conf = WORKLOADS[workload]
    run = bench.run_dag(dag_id, conf(sizes))
    tis = run["task_instances"]
    mapped = [t for t in tis if t["task_id"] == task_id and t["map_index"] >= 0]
    starts = [ts(t["start_date"]) for t in mapped]
    ends = [ts(t["end_date"]) for t in mapped]
    durations = [e - s for s, e in zip(starts, ends, strict=True)]
    fanout_wall = max(ends) - min(starts)
    held = worker_hold_by_task(bench, {t["id"] for t in tis})
    # What a task held its worker beyond its own run (start_date to end_date): process start,
    # DAG parse, teardown; its slot can take no other task meanwhile.
    beyond = [
        held[t["id"]] - (ts(t["end_date"]) - ts(t["start_date"]))
        for t in tis
        if t["id"] in held and t["start_date"] and t["end_date"]
    ]
    origin = min((ts(t["queued_when"]) for t in tis if t["queued_when"]), default=0.0)
    return {
        "parallelism": slots or bench.parallelism,
        "stack_parallelism": bench.parallelism,
        "most_at_once": most_at_once(zip(starts, ends, strict=True)),
        "pools": sorted({t.get("pool") for t in mapped if t.get("pool")}),
        "tasks": len(mapped),
        "run_wall_s": rnd(run["wall_s"]),
        "fanout_wall_s": rnd(fanout_wall),
        "task_sum_s": rnd(sum(durations)),
        "task_p50_s": rnd(median(durations)),
        "achieved_parallelism": rnd(sum(durations) / fanout_wall),
        "tasks_in_run": len(tis),
        "worker_hold_s": distribution(held.values()),
        "worker_held_beyond_run_s": distribution(beyond),
        "stack_cpu_s": run["resources"]["cpu_s"],
        "stack_cpu_s_by_component": run["resources"].get("cpu_s_by_component"),
        "other_load_cores": run["resources"].get("other_load_cores"),
        "peak_rss_mib": run["resources"]["peak_rss_mib"],
        # (task, map index, queued, start, end) in seconds from the first queued task: where the gaps are
        "timeline": sorted(
            (
                t["task_id"],
                t["map_index"],
                rnd(ts(t["queued_when"]) - origin, 2),
                rnd(ts(t["start_date"]) - origin, 2),
                rnd(ts(t["end_date"]) - origin, 2),
            )
            for t in tis
            if t["queued_when"] and t["start_date"] and t["end_date"]
        ),
    }


def most_at_once(intervals) -> int:
    """The most (start, end) intervals that overlap at any instant."""
    # At the same instant an end (-1) sorts before a start: a task that starts as another ends is next.
    events = sorted(e for start, end in intervals for e in ((start, 1), (end, -1)))
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


def sequential_fanout(bench: BenchStack, workload: str, sizes) -> dict:
    """The fan-out with one mapped task at a time, on the same stack as the parallel run.

    The render chunks run in the GPU Airflow pool (``fanout.pools``; the local stack gives it one
    slot per executor slot), so that pool at 1 slot runs them one after another, with the same
    settings, threads per task (``FANOUT_TASK_CPUS=1``) and idle Dask as the parallel run. The
    run must show it: its chunks in that pool, never two at once.
    """
    from fanout.settings import settings

    name = settings(bench.stack.env()).gpu_airflow_pool
    quoted = urllib.parse.quote(name, safe="")
    before = bench.client.get(f"/pools/{quoted}")
    bench.client.set_pool(name, 1, before.get("description") or "")
    try:
        result = airflow_fanout(bench, workload, sizes, slots=1)
    finally:
        bench.client.set_pool(name, before["slots"], before.get("description") or "")
    if result["pools"] != [name] or result["most_at_once"] != 1:
        raise RuntimeError(
            f"{workload}: the sequential run's mapped tasks ran in pools {result['pools']}, up to "
            f"{result['most_at_once']} at once; one at a time in {name!r} was asked for "
            "(FANOUT_RENDER_POOL=cpu takes the render chunks out of it)"
        )
    return result


def compare(sequential: dict, parallel: dict, pool: dict) -> dict:
    speedup = ratio(sequential["fanout_wall_s"], parallel["fanout_wall_s"])
    pool_per_job = ratio(pool["sequential_s"], sequential["tasks"])
    return {
        "sequential": sequential,
        "parallel": parallel,
        "speedup": rnd(speedup),
        "efficiency": rnd(ratio(speedup, parallel["parallelism"])),
        "run_speedup": rnd(ratio(sequential["run_wall_s"], parallel["run_wall_s"])),
        # > 1 when tasks run slower side by side (shared caches, memory bandwidth, neighbours).
        "task_slowdown": rnd(ratio(parallel["task_p50_s"], sequential["task_p50_s"])),
        # What a task pays that a warm Pool worker paid once: interpreter, imports, DAG parse.
        "task_startup_s": rnd(sequential["task_p50_s"] - pool_per_job if pool_per_job else None),
        "pool_map": pool,
    }


def compare_with_baseline(parallel: dict, pool: dict) -> dict:
    """The fan-out at every core against its work one after another in one process (Pool.map(1))."""
    speedup = ratio(pool["sequential_s"], parallel["fanout_wall_s"])
    return {
        "parallel": parallel,
        "baseline_s": pool["sequential_s"],
        "speedup": rnd(speedup),
        "efficiency": rnd(ratio(speedup, parallel["parallelism"])),
        "run_speedup": rnd(ratio(pool["sequential_s"], parallel["run_wall_s"])),
        "pool_map": pool,
    }


# -- the floor: multiprocessing.Pool.map -----------------------------------------------------
def _init_pool_worker() -> None:
    """The same single-thread pinning as the Airflow tasks; start-up paid before the clock starts.

    A warm pool is the floor: imports and torch's first-call set-up (a tiny frame) happen here.
    """
    os.environ["FANOUT_TASK_CPUS"] = "1"
    os.environ["FANOUT_DEVICE"] = "cpu"
    for module in ("fanout.preprocess", "fanout.train", "pandas", "pyarrow.parquet"):
        importlib.import_module(module)
    import torch

    from bench.dask_overhead import single_threaded_arrow
    from fanout import render

    torch.set_num_threads(1)
    single_threaded_arrow()
    render.render_frame(0, n_frames=1, width=8, height=8, samples=1, seed=RENDER_SEED)


def _render_work(job: tuple[str, str, dict]) -> float:
    from fanout import render
    from fanout.storage import ArtifactStore

    root, unit, kwargs = job
    return render.render_chunk(ArtifactStore(root), unit, **kwargs)["seconds"]


def _preprocess_work(job: tuple[str, str, str]) -> float:
    """One shard in pandas, single-threaded: the baseline the Dask fan-out is measured against."""
    from bench.dask_overhead import pandas_shard

    root, raw, out_rel = job
    began = time.perf_counter()
    pandas_shard(root, raw, out_rel)
    return time.perf_counter() - began


def _warm(_: int) -> None:
    time.sleep(0.05)


def pool_jobs(workload: str, artifact_root: Path, sizes, shards: list[str], tag: str) -> tuple:
    """(work function, jobs) writing to units unique to ``tag``, so nothing is skipped as done."""
    root = str(artifact_root)
    if workload == "render":
        conf = render_conf(sizes)
        per = sizes.render_frames_per_chunk
        jobs = [
            (
                root,
                f"pool/{tag}/chunk-{i:04d}",
                {
                    "start": i * per,
                    "stop": (i + 1) * per,
                    "n_frames": conf["n_frames"],
                    "width": conf["width"],
                    "height": conf["height"],
                    "samples": conf["samples"],
                    "seed": conf["seed"],
                },
            )
            for i in range(sizes.render_chunks)
        ]
        return _render_work, jobs
    return _preprocess_work, [(root, raw, f"pool/{tag}/{Path(raw).stem}/features.parquet") for raw in shards]


def pool_floors(workloads, artifact_root: Path, sizes, shards: list[str], repeats: int) -> dict[str, dict]:
    """Per workload, Pool.map with 1 process and with every core, alternated ``repeats`` times.

    The pools start once for every workload: their start-up is not what is measured.
    """
    # spawn, not fork: the parent has torch and its thread pools loaded by now.
    context = multiprocessing.get_context("spawn")
    pools = {n: context.Pool(n, initializer=_init_pool_worker) for n in (1, CPUS)}
    try:
        for n, pool in pools.items():
            pool.map(_warm, range(4 * n), chunksize=1)
        return {
            workload: _pool_floor(pools, workload, artifact_root, sizes, shards, repeats)
            for workload in workloads
        }
    finally:
        for pool in pools.values():
            pool.terminate()


def _pool_floor(
    pools: dict, workload: str, artifact_root: Path, sizes, shards: list[str], repeats: int
) -> dict:
    counter = iter(range(1_000_000))

    def mapper(n: int):
        def go() -> None:
            fn, jobs = pool_jobs(workload, artifact_root, sizes, shards, f"{workload}-p{n}-{next(counter)}")
            pools[n].map(fn, jobs, chunksize=1)

        return go

    before = cpu_snapshot()
    times = alternate(repeats, sequential=mapper(1), parallel=mapper(CPUS))
    load = other_load(before, cpu_snapshot())
    sequential, parallel = median(times["sequential"]), median(times["parallel"])
    speedup = ratio(sequential, parallel)
    return {
        "processes": CPUS,
        "sequential_s": rnd(sequential),
        "parallel_s": rnd(parallel),
        "samples": {k: [rnd(v) for v in vs] for k, vs in times.items()},
        "speedup": rnd(speedup),
        "efficiency": rnd(ratio(speedup, CPUS)),
        "other_load_cores": load,
    }


# -- targets ---------------------------------------------------------------------------------
def _beyond_text(run: dict, short: bool = False) -> str:
    """How long the run's tasks held their worker beyond their own run, slots idle meanwhile."""
    beyond = run.get("worker_held_beyond_run_s")
    if not beyond or beyond.get("p50") is None:
        return "no worker hold times" if short else "the workers' hold times were not logged"
    figures = f"p50 {beyond['p50']} s, p95 {beyond['p95']} s"
    if short:
        return figures
    return (
        f"each of the run's {run['tasks_in_run']} tasks held its worker {figures} beyond its own run "
        "(process start, DAG parse, teardown), its slot idle meanwhile"
    )


def targets(section: dict) -> list[dict]:
    """speedup >= 0.9 x cores (1.8x on 2), efficiency >= 0.9, within 10 % of Pool.map's speedup."""
    rows = []
    for workload in WORKLOADS:
        entry = section.get(workload)
        if not entry or "speedup" not in entry:
            continue
        pool, par = entry["pool_map"], entry["parallel"]
        cores = par["parallelism"]
        if workload in AIRFLOW_BASELINE:
            figure = f"{workload} fan-out speedup, parallelism {cores} vs 1"
            note = f"sequential {entry['sequential']['fanout_wall_s']} s, parallel {par['fanout_wall_s']} s"
        else:
            figure = (
                f"{workload} fan-out (Airflow + Dask, {cores} slots and {cores} workers) vs its shards one after "
                "another in pandas"
            )
            note = f"pandas {entry['baseline_s']} s, fan-out {par['fanout_wall_s']} s"
        blocker = _blocker(workload, entry, section)
        rows += [
            {
                "id": f"{workload}_speedup" if workload in AIRFLOW_BASELINE else f"{workload}_vs_pandas",
                "benchmark": "speedup",
                "figure": f"{figure} ({note})",
                "value": entry["speedup"],
                "unit": "x",
                "target": f">= {0.9 * cores:.1f}x",
                "met": entry["speedup"] is not None and entry["speedup"] >= 0.9 * cores,
                "blocker": blocker,
            },
            {
                "id": f"{workload}_efficiency",
                "benchmark": "speedup",
                "figure": f"{workload} parallel efficiency",
                "value": entry["efficiency"],
                "unit": "",
                "target": ">= 0.9",
                "met": entry["efficiency"] is not None and entry["efficiency"] >= 0.9,
                "blocker": blocker,
            },
            {
                "id": f"{workload}_vs_pool",
                "benchmark": "speedup",
                "figure": f"{workload} speedup / Pool.map speedup ({pool['speedup']}x)",
                "value": rnd(ratio(entry["speedup"], pool["speedup"])),
                "unit": "",
                "target": ">= 0.9",
                "met": (ratio(entry["speedup"], pool["speedup"]) or 0) >= 0.9,
                "blocker": blocker,
            },
        ]
    return rows


def _blocker(workload: str, entry: dict, section: dict) -> str:
    par = entry["parallel"]
    cores = par["parallelism"]
    text = (
        f"achieved parallelism {par['achieved_parallelism']} of {cores}: {par['tasks']} mapped tasks of p50 "
        f"{par['task_p50_s']} s took {par['fanout_wall_s']} s; {_beyond_text(par)}"
    )
    if workload in AIRFLOW_BASELINE:
        seq = entry["sequential"]
        text += f" (p=1: {_beyond_text(seq, short=True)})"
        if entry["task_startup_s"] and entry["task_startup_s"] > 0.2:
            text += (
                f"; each task spends ~{entry['task_startup_s']} s starting (imports, DAG parse) that a warm "
                "Pool worker paid once"
            )
        if entry["task_slowdown"] and entry["task_slowdown"] > 1.1:
            text += (
                f"; tasks ran {entry['task_slowdown']}x slower side by side than alone (other processes kept "
                f"{par['other_load_cores']} cores busy during the p={cores} run, {seq['other_load_cores']} during p=1)"
            )
    else:
        per_shard = ratio(entry["baseline_s"], par["tasks"])
        pool = entry["pool_map"]
        text += (
            f"; the same pandas work on {pool['processes']} Pool.map processes reached {pool['speedup']}x in this "
            f"run; a shard takes {rnd(per_shard)} s in pandas alone, against which each shard task's own start (a "
            "fresh interpreter, Airflow, the Dask client's import and connection: ~1 s of CPU on the cores the "
            "workers use) and Dask's share (the ride ids read twice, scheduling, the de-duplication on one worker) "
            "weigh"
        )
        if par.get("other_load_cores"):
            text += f"; other processes kept {par['other_load_cores']} cores busy during the fan-out"
    whatif = section.get("whatif", {}).get(workload)
    if whatif:
        text += (
            f"; with Airflow's default min_heartbeat_interval (5 s) the p={cores} fan-out took "
            f"{whatif['fanout_wall_s']} s (achieved parallelism {whatif['achieved_parallelism']})"
        )
    return text


def figures(section: dict) -> list[tuple[str, str]]:
    rows = []
    for workload in WORKLOADS:
        entry = section.get(workload)
        if not entry or "speedup" not in entry:
            continue
        par, pool = entry["parallel"], entry["pool_map"]
        if workload in AIRFLOW_BASELINE:
            seq = entry["sequential"]
            rows.append(
                (
                    f"{workload}: fan-out wall p=1 / p={par['parallelism']}",
                    f"{seq['fanout_wall_s']} / {par['fanout_wall_s']} s ({par['tasks']} tasks of p50 "
                    f"{seq['task_p50_s']} / {par['task_p50_s']} s); whole run {seq['run_wall_s']} / "
                    f"{par['run_wall_s']} s ({entry['run_speedup']}x); achieved parallelism "
                    f"{seq['achieved_parallelism']} / {par['achieved_parallelism']}; other processes' load "
                    f"{seq['other_load_cores']} / {par['other_load_cores']} cores",
                )
            )
        else:
            rows.append(
                (
                    f"{workload}: shards one after another in pandas / fan-out through Airflow + Dask",
                    f"{entry['baseline_s']} / {par['fanout_wall_s']} s ({par['tasks']} shard tasks of p50 "
                    f"{par['task_p50_s']} s); whole run {par['run_wall_s']} s ({entry['run_speedup']}x); achieved "
                    f"parallelism of the shard tasks {par['achieved_parallelism']}; other processes' load "
                    f"{par['other_load_cores']} cores",
                )
            )
        rows.append(
            (
                f"{workload}: Pool.map 1 / {pool['processes']} processes",
                f"{pool['sequential_s']} / {pool['parallel_s']} s ({pool['speedup']}x, efficiency {pool['efficiency']}); "
                f"other processes' load {pool['other_load_cores']} cores",
            )
        )
        whatif = section.get("whatif", {}).get(workload)
        if whatif:
            rows.append(
                (
                    f"{workload}: fan-out wall p={whatif['parallelism']} with Airflow's default min_heartbeat_interval (5 s)",
                    f"{whatif['fanout_wall_s']} s (shipped: {par['fanout_wall_s']} s); achieved parallelism "
                    f"{whatif['achieved_parallelism']} (shipped: {par['achieved_parallelism']})",
                )
            )
    return rows
