"""Dask: one preprocessing shard with Dask versus pandas single-threaded, and Dask's per-task cost.

Per shard size, alternated: pandas in one thread (read, the same ``featurise_frame_pandas``
transformation, write); ``featurise_shard`` as the DAG's task calls it (it starts a LocalCluster
of one single-threaded worker process per core only for shards of at least
``min_rows_for_cluster`` rows, and runs the graph synchronously below that); the same with the
cluster forced where the task would not start one; and on a cluster started beforehand (the
shard without the cluster's start-up).

Per-task overhead at fanout's partition size: a no-op task's round trip through the cluster,
and moving one featurised partition from a worker back to the task process, against the pandas
work on that partition.
"""

from __future__ import annotations

import inspect
import logging
import tempfile
import warnings
from itertools import count

from bench.common import CPUS, alternate, median, ratio, rnd, timed

TARGET_RATIO = 1.7


def _pandas_reference(store, raw_rel: str, out_rel: str) -> None:
    """Read, featurise and write one shard in this thread only (Arrow's pools pinned to 1)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fanout import preprocess

    table = pq.read_table(store.path(raw_rel), use_threads=False)
    features, _stats, _dropped = preprocess.featurise_frame_pandas(table.to_pandas(use_threads=False))
    store.fs.makedirs(store.path(out_rel.rsplit("/", 1)[0]), exist_ok=True)
    pq.write_table(
        pa.Table.from_pandas(features, preserve_index=False, nthreads=1),
        store.path(out_rel),
        compression="zstd",
    )


def _noop(item: int) -> int:
    return item


def _features_partition(rows: int):
    """A featurised partition's shape: ride_id plus float32 features and target."""
    import numpy as np
    import pandas as pd

    from fanout import preprocess

    data = {"ride_id": np.arange(rows, dtype=np.int64)}
    for name in [*preprocess.FEATURE_COLUMNS, preprocess.TARGET]:
        data[name] = np.random.default_rng(0).random(rows, dtype=np.float32)
    return pd.DataFrame(data)


def _shard_policy() -> dict:
    """featurise_shard's defaults that decide how a shard runs."""
    from fanout import preprocess

    params = inspect.signature(preprocess.featurise_shard).parameters
    return {
        name: params[name].default for name in ("partition_rows", "min_rows_for_cluster") if name in params
    }


def one_shard(store, cluster, rows: int, repeats: int) -> dict:
    """pandas, the task's own way, the cluster forced, and a running cluster, on one shard."""
    import pyarrow as pa

    from fanout import preprocess

    prefix = f"raw-{rows}"
    raw_rel = preprocess.generate_dataset(store, prefix, n_shards=1, rows_per_shard=rows, seed=7)["shards"][0]
    policy = _shard_policy()
    runs = count()
    units: dict[str, str] = {}
    cpu_count, io_count = pa.cpu_count(), pa.io_thread_count()

    def pandas_single_thread() -> None:
        pa.set_cpu_count(1)
        pa.set_io_thread_count(1)
        try:
            _pandas_reference(store, raw_rel, f"pandas/{next(runs)}/features.parquet")
        finally:
            pa.set_cpu_count(cpu_count)
            pa.set_io_thread_count(io_count)

    def shard(variant: str, **kwargs):
        def go() -> None:
            units[variant] = f"{variant}/{rows}/{next(runs)}"
            preprocess.featurise_shard(store, raw_rel, units[variant], cpus=CPUS, **kwargs)

        return go

    variants = {"pandas": pandas_single_thread, "task": shard("task")}
    task_uses_cluster = "min_rows_for_cluster" not in policy or rows >= policy["min_rows_for_cluster"]
    if not task_uses_cluster:
        variants["cluster"] = shard("cluster", min_rows_for_cluster=0)
    variants["warm"] = shard("warm", scheduler_address=cluster.scheduler_address)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dashboards' "port in use" notices
        times = alternate(repeats, **variants)
    medians = {name: median(values) for name, values in times.items()}
    cluster_s = medians.get("cluster", medians["task"])
    manifest = store.verified(units["task"])
    return {
        "rows": rows,
        "partitions": store.verified(units["warm"])["partitions"],
        "task_executor": manifest.get("executor", "local-cluster" if task_uses_cluster else "synchronous"),
        "pandas_single_thread_s": rnd(medians["pandas"]),
        "task_s": rnd(medians["task"]),
        "local_cluster_s": rnd(cluster_s),
        "warm_cluster_s": rnd(medians["warm"]),
        "cluster_start_stop_s": rnd(cluster_s - medians["warm"]),
        # What a running cluster costs beyond a perfect split of the pandas work.
        "fixed_overhead_s": rnd(medians["warm"] - medians["pandas"] / CPUS),
        "speedup_task": rnd(ratio(medians["pandas"], medians["task"])),
        "speedup_local_cluster": rnd(ratio(medians["pandas"], cluster_s)),
        "speedup_warm_cluster": rnd(ratio(medians["pandas"], medians["warm"])),
        "samples": {name: [rnd(v) for v in values] for name, values in times.items()},
        "raw_rel": raw_rel,
    }


def per_task_overhead(store, client, raw_rel: str, partitions: int, tasks: int) -> dict:
    """A no-op round trip, one partition's transfer to the client, and that partition's work."""
    import pyarrow.parquet as pq
    from distributed import wait

    from fanout import preprocess

    client.gather(client.map(_noop, range(CPUS * 4), pure=False))  # workers warmed up
    noop_s, _ = timed(lambda: client.gather(client.map(_noop, range(tasks), pure=False)))
    raw = pq.read_table(store.path(raw_rel), use_threads=False).to_pandas()
    part = raw.iloc[: -(-len(raw) // partitions)].copy()  # one partition as featurise_shard cuts it
    partition = client.submit(_features_partition, len(part), pure=False)
    wait(partition)
    transfer_s, _ = timed(partition.result)
    compute_s = median(timed(lambda: preprocess.featurise_frame_pandas(part))[0] for _ in range(3))
    noop_ms = noop_s / tasks * 1000
    return {
        "partition_rows": len(part),
        "noop_task_ms": rnd(noop_ms, 2),
        "partition_transfer_ms": rnd(transfer_s * 1000, 1),
        "partition_compute_ms": rnd(compute_s * 1000, 1),
        "overhead_share": rnd(ratio(noop_ms + transfer_s * 1000, compute_s * 1000)),
    }


def run(sizes) -> dict:
    from distributed import Client, LocalCluster

    from fanout.storage import ArtifactStore

    # Airflow's logging set-up (imported by now) would print the in-process scheduler's INFO lines.
    logging.getLogger("distributed").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="fanout-bench-dask-") as tmp:
        store = ArtifactStore(tmp)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cluster = LocalCluster(
                n_workers=CPUS,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                silence_logs=logging.ERROR,
            )
        try:
            client = Client(cluster)
            shards = [one_shard(store, cluster, rows, sizes.repeats) for rows in sizes.dask_shard_rows]
            smallest = shards[0]
            overhead = per_task_overhead(
                store, client, smallest["raw_rel"], smallest["partitions"], sizes.dask_noop_tasks
            )
            client.close()
        finally:
            cluster.close()
    return {"workers": CPUS, "policy": _shard_policy(), "shards": shards, "per_task": overhead}


def targets(section: dict) -> list[dict]:
    shard = section["shards"][-1]  # the biggest: the one the task runs on a cluster, if any
    overhead = section["per_task"]
    value = shard["speedup_task"]
    uses_cluster = shard["task_executor"] != "synchronous"
    return [
        {
            "id": "dask_vs_pandas",
            "benchmark": "dask",
            "figure": f"one shard ({shard['rows']:,} rows) through featurise_shard ({shard['task_executor']}, "
            f"{section['workers']} cores) vs pandas 1 thread",
            "value": value,
            "unit": "x",
            "target": f">= {TARGET_RATIO}x",
            "met": value is not None and value >= TARGET_RATIO,
            "blocker": (
                (
                    ""
                    if uses_cluster
                    else f"the task runs shards under {section['policy'].get('min_rows_for_cluster'):,} "
                    f"rows synchronously; forced onto a LocalCluster it is {shard['speedup_local_cluster']}x. "
                )
                + _start_stop_text(shard)
                + f"; on a running cluster the shard is {shard['speedup_warm_cluster']}x pandas, {shard['fixed_overhead_s']} s more "
                f"than a perfect split over {section['workers']} workers; a {overhead['partition_rows']:,}-row "
                f"partition is {overhead['partition_compute_ms']} ms of pandas work plus "
                f"{overhead['partition_transfer_ms']} ms to ship its result to the task and "
                f"{overhead['noop_task_ms']} ms of scheduling"
            ),
        }
    ]


def _start_stop_text(shard: dict) -> str:
    cost = shard["cluster_start_stop_s"]
    if cost is None or cost < 0.1:
        return "the LocalCluster's start and stop are lost in this run's noise"
    return f"starting and stopping the LocalCluster costs {cost} s"


def figures(section: dict) -> list[tuple[str, str]]:
    rows = []
    for shard in section["shards"]:
        rows.append(
            (
                f"one shard, {shard['rows']:,} rows ({shard['partitions']} partitions)",
                f"pandas 1 thread {shard['pandas_single_thread_s']} s; featurise_shard as the task runs it "
                f"({shard['task_executor']}) {shard['task_s']} s; on a new LocalCluster {shard['local_cluster_s']} s; "
                f"on a running cluster {shard['warm_cluster_s']} s ({shard['speedup_warm_cluster']}x pandas)",
            )
        )
    overhead = section["per_task"]
    rows.append(
        (
            f"Dask per task at {overhead['partition_rows']:,}-row partitions",
            f"no-op {overhead['noop_task_ms']} ms, result transfer {overhead['partition_transfer_ms']} ms, "
            f"vs {overhead['partition_compute_ms']} ms of work ({overhead['overhead_share']} of it)",
        )
    )
    return rows
