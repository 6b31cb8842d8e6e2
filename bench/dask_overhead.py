"""Dask: one shard through the shared cluster versus pandas single-threaded, and what Dask costs.

The cluster is the embedded default's (``fanout.localdask``): a real ``dask scheduler`` and one
single-threaded ``dask worker`` process per core, started once, warm, as a shard task finds it.
Per shard size, alternated ``repeats`` times (medians):

* pandas in one thread: read the shard, ``featurise_frame_pandas``, write one Parquet file;
* ``daskrun.featurise_shard`` on the cluster, as the DAG's task calls it (the workers read,
  featurise and write the parts; the caller commits);
* the same graph in-process on Dask's synchronous scheduler (no cluster configured).

Per-task overhead: a no-op task's round trip through the cluster, the number of tasks of a
shard's graph, and the bytes the task gets back from the workers (the partition summaries)
against the feature bytes the workers wrote.
"""

from __future__ import annotations

import logging
import tempfile
import time
import warnings
from itertools import count

from bench.common import CPUS, alternate, cpu_snapshot, median, other_load, ratio, rnd, timed

TARGET_RATIO = 1.7
TARGET_RETURNED_PER_PART = 4_096  # bytes: a partition's summary (checksum, counts, partial stats)


def pandas_shard(root: str, raw_rel: str, out_rel: str) -> None:
    """Read, featurise and write one shard in this thread only (Arrow's pools pinned to 1 by the caller)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fanout import preprocess
    from fanout.storage import ArtifactStore

    store = ArtifactStore(root)
    table = pq.read_table(store.path(raw_rel), use_threads=False)
    features, _stats, _dropped = preprocess.featurise_frame_pandas(table.to_pandas(use_threads=False))
    store.fs.makedirs(store.path(out_rel.rsplit("/", 1)[0]), exist_ok=True)
    pq.write_table(
        pa.Table.from_pandas(features, preserve_index=False, nthreads=1),
        store.path(out_rel),
        compression="zstd",
        use_dictionary=preprocess.LOW_CARDINALITY_FEATURES,
    )


def single_threaded_arrow():
    """Pin Arrow's CPU and I/O pools to one thread; returns a function that restores them."""
    import pyarrow as pa

    cpu_count, io_count = pa.cpu_count(), pa.io_thread_count()
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)

    def restore() -> None:
        pa.set_cpu_count(cpu_count)
        pa.set_io_thread_count(io_count)

    return restore


def cluster_cpu_seconds(cluster) -> float:
    """CPU-seconds the cluster's processes (scheduler, nannies, workers) have used so far."""
    import psutil

    total = 0.0
    for pid in cluster.pids().values():
        try:
            leader = psutil.Process(pid)
            processes = [leader, *leader.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for proc in processes:
            try:
                t = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += t.user + t.system
    return total


def one_shard(store, cluster, rows: int, repeats: int) -> dict:
    """pandas single-threaded, the shared cluster and in-process, alternated, on one shard.

    Besides wall times, the CPU-seconds each way costs (the cluster's processes plus this one):
    on a machine other processes keep busy, wall-time ratios measure the neighbours too, CPU
    time much less.
    """
    from fanout import daskrun, datasets

    spec = datasets.SyntheticSpec(n_shards=1, rows_per_shard=rows, seed=7)
    (raw_rel,) = datasets.generate_dataset(store, f"raw-{rows}", spec)
    runs = count()
    units: dict[str, str] = {}
    cpu: dict[str, list[float]] = {"pandas": [], "cluster": []}

    def pandas_single_thread() -> None:
        restore = single_threaded_arrow()
        began = time.process_time()
        try:
            pandas_shard(store.root_uri, raw_rel, f"pandas/{next(runs)}/features.parquet")
        finally:
            cpu["pandas"].append(time.process_time() - began)
            restore()

    def shard(variant: str, address: str | None):
        def go() -> None:
            units[variant] = f"{variant}/{rows}/{next(runs)}"
            began = time.process_time(), cluster_cpu_seconds(cluster)
            daskrun.featurise_shard(store, raw_rel, units[variant], scheduler_address=address)
            if address:
                used = time.process_time() - began[0] + cluster_cpu_seconds(cluster) - began[1]
                cpu["cluster"].append(used)

        return go

    before = cpu_snapshot()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        times = alternate(
            repeats,
            pandas=pandas_single_thread,
            cluster=shard("cluster", cluster.address),
            in_process=shard("in_process", None),
        )
    load = other_load(before, cpu_snapshot())
    medians = {name: median(values) for name, values in times.items()}
    recorded = store.verified(units["cluster"])
    features_bytes = sum(store.size(f"{units['cluster']}/{part['path']}") for part in recorded["parts"])
    return {
        "rows": rows,
        "partitions": len(recorded["parts"]),
        # per partition: ride ids, label, duplicates-of, write; and the de-duplication and the hash
        "graph_tasks": 4 * len(recorded["parts"]) + 2,
        "pandas_single_thread_s": rnd(medians["pandas"]),
        "cluster_s": rnd(medians["cluster"]),
        "in_process_s": rnd(medians["in_process"]),
        "speedup_cluster": rnd(ratio(medians["pandas"], medians["cluster"])),
        "speedup_in_process": rnd(ratio(medians["pandas"], medians["in_process"])),
        "pandas_cpu_s": rnd(median(cpu["pandas"])),
        "cluster_cpu_s": rnd(median(cpu["cluster"])),
        # CPU the cluster spends beyond pandas' own: scheduling, transfers, the two reads of the ids.
        "cluster_cpu_overhead": rnd(ratio(median(cpu["cluster"]), median(cpu["pandas"])) - 1),
        # What the cluster costs beyond a perfect split of the pandas work over its workers.
        "fixed_overhead_s": rnd(medians["cluster"] - medians["pandas"] / cluster.workers),
        "returned_bytes": recorded["returned_bytes"],
        "returned_bytes_per_part": rnd(recorded["returned_bytes"] / len(recorded["parts"]), 1),
        "features_bytes": features_bytes,
        "other_load_cores": load,
        "samples": {name: [rnd(v) for v in values] for name, values in times.items()},
    }


def per_task_overhead(cluster, tasks: int) -> dict:
    """A no-op task's round trip through the scheduler and a worker, from a client's side.

    The no-op is a builtin (``operator.index``): the workers import nothing of the benchmark.
    """
    import operator

    from distributed import Client

    with Client(cluster.address, set_as_default=False) as client:
        client.gather(client.map(operator.index, range(CPUS * 4), pure=False))  # connections warmed up
        seconds, _ = timed(lambda: client.gather(client.map(operator.index, range(tasks), pure=False)))
        connect_s, _ = timed(lambda: Client(cluster.address, set_as_default=False).close())
    return {
        "noop_tasks": tasks,
        "noop_task_ms": rnd(seconds / tasks * 1000, 2),
        "client_connect_s": rnd(connect_s),
    }


def _warm_up(store, cluster) -> None:
    """One small shard first, untimed: workers import pandas and pyarrow once, as long-lived ones have."""
    from fanout import daskrun, datasets

    spec = datasets.SyntheticSpec(n_shards=1, rows_per_shard=50_000, seed=1)
    (raw_rel,) = datasets.generate_dataset(store, "warm-up", spec)
    daskrun.featurise_shard(store, raw_rel, "warm-up/unit", scheduler_address=cluster.address)


def run(sizes) -> dict:
    from fanout.localdask import LocalDaskCluster
    from fanout.storage import ArtifactStore

    logging.getLogger("distributed").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="fanout-bench-dask-") as tmp:
        store = ArtifactStore(f"{tmp}/artifacts")
        with LocalDaskCluster(f"{tmp}/dask", workers=CPUS) as cluster:
            _warm_up(store, cluster)
            shards = [one_shard(store, cluster, rows, sizes.repeats) for rows in sizes.dask_shard_rows]
            overhead = per_task_overhead(cluster, sizes.dask_noop_tasks)
    return {"workers": CPUS, "shards": shards, "per_task": overhead}


def targets(section: dict) -> list[dict]:
    shard = section["shards"][-1]  # the biggest
    overhead = section["per_task"]
    value = shard["speedup_cluster"]
    per_part = shard["returned_bytes_per_part"]
    return [
        {
            "id": "dask_vs_pandas",
            "benchmark": "dask",
            "figure": f"one shard ({shard['rows']:,} rows, {shard['partitions']} partitions) through the shared "
            f"Dask cluster ({section['workers']} worker processes) vs pandas 1 thread",
            "value": value,
            "unit": "x",
            "target": f">= {TARGET_RATIO}x",
            "met": value is not None and value >= TARGET_RATIO,
            "blocker": (
                f"the cluster run is {shard['fixed_overhead_s']} s longer than a perfect split of the pandas work "
                f"over {section['workers']} workers; it spent {shard['cluster_cpu_s']} CPU-s against pandas' "
                f"{shard['pandas_cpu_s']} (+{round(100 * shard['cluster_cpu_overhead'])} %: the shard's "
                f"{shard['graph_tasks']} tasks at ~{overhead['noop_task_ms']} ms each, the ride ids read twice, "
                "the scheduler, the de-duplication on one worker); other processes kept "
                f"{shard['other_load_cores']} of the {section['workers']} cores busy during these runs"
            ),
        },
        {
            "id": "dask_returned_bytes",
            "benchmark": "dask",
            "figure": f"bytes the task gets back from the workers per partition ({shard['rows']:,}-row shard; "
            f"the workers wrote {shard['features_bytes']:,} bytes of features)",
            "value": per_part,
            "unit": "B",
            "target": f"<= {TARGET_RETURNED_PER_PART} B (the summary only)",
            "met": per_part is not None and per_part <= TARGET_RETURNED_PER_PART,
            "blocker": "a partition's summary grew: see fanout.daskrun.featurise_and_write",
        },
    ]


def figures(section: dict) -> list[tuple[str, str]]:
    rows = []
    for shard in section["shards"]:
        rows.append(
            (
                f"one shard, {shard['rows']:,} rows ({shard['partitions']} partitions, {shard['graph_tasks']} tasks)",
                f"pandas 1 thread {shard['pandas_single_thread_s']} s; shared cluster {shard['cluster_s']} s "
                f"({shard['speedup_cluster']}x pandas); in-process graph {shard['in_process_s']} s "
                f"({shard['speedup_in_process']}x); CPU-seconds pandas {shard['pandas_cpu_s']}, cluster "
                f"{shard['cluster_cpu_s']} (+{round(100 * shard['cluster_cpu_overhead'])} %); other load "
                f"{shard['other_load_cores']} cores; returned to the task {shard['returned_bytes']:,} B for "
                f"{shard['features_bytes']:,} B of features written by the workers",
            )
        )
    overhead = section["per_task"]
    rows.append(
        (
            "Dask per task",
            f"no-op round trip {overhead['noop_task_ms']} ms ({overhead['noop_tasks']} tasks); "
            f"a client's connection {overhead['client_connect_s']} s",
        )
    )
    return rows
