"""fanout.daskrun: one shard's graph on real Dask scheduler and worker processes, or in-process.

A module-scoped ``LocalDaskCluster`` (``python -m dask scheduler`` and ``dask worker
--nworkers 2 --nthreads 1``) serves the cluster tests; the others run the same graph on Dask's
synchronous scheduler in this process. Shards are small (20k rows in 4k-row row groups) and
partitioned finely so every graph really has several partitions.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
import urllib.request

import pandas as pd
import pyarrow.parquet as pq
import pytest

from fanout import daskrun, datasets, preprocess
from fanout.errors import BadInputError
from fanout.localdask import LocalDaskCluster
from fanout.storage import ArtifactStore

SPEC = datasets.SyntheticSpec(n_shards=2, rows_per_shard=20_000, seed=7, dirt=0.05, row_group_rows=4_000)
PARTITION_ROWS = 8_000  # 2 row groups: 3 partitions of a 20k-row shard


@pytest.fixture(autouse=True)
def _no_cluster_configured(monkeypatch):
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    store = ArtifactStore(str(tmp_path_factory.mktemp("daskrun")))
    return store, datasets.generate_dataset(store, "raw", SPEC)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with LocalDaskCluster(tmp_path_factory.mktemp("dask"), workers=2) as running:
        yield running


@pytest.fixture
def shard(dataset, tmp_path):
    """A private store holding a copy of shard 1 at raw/shard.parquet."""
    source, shards = dataset
    store = ArtifactStore(str(tmp_path))
    os.makedirs(store.path("raw"))
    shutil.copyfile(source.path(shards[1]), store.path("raw/shard.parquet"))
    return store


def featurise(store, unit="unit", **kwargs):
    return daskrun.featurise_shard(store, "raw/shard.parquet", unit, partition_rows=PARTITION_ROWS, **kwargs)


def unit_bytes(store: ArtifactStore, unit: str) -> dict[str, bytes]:
    found = {}
    for path in store.fs.find(store.path(unit)):
        rel = os.path.relpath(path, store.path(unit))
        found[rel] = store.read_bytes(f"{unit}/{rel}")
    return found


def read_features(store: ArtifactStore, unit: str) -> pd.DataFrame:
    parts = store.verified(unit)["parts"]
    return pd.concat([pd.read_parquet(store.path(f"{unit}/{p['path']}")) for p in parts], ignore_index=True)


# -- on real Dask processes --------------------------------------------------------------------------
def test_local_cluster_is_single_threaded_worker_processes_each_in_its_session_with_a_dashboard(cluster):
    from distributed import Client

    with Client(cluster.address, set_as_default=False) as client:
        assert list(client.nthreads().values()) == [1, 1]
        pids = client.run(os.getpid)
    assert len(set(pids.values())) == 2 and os.getpid() not in pids.values()
    # Each worker is in a session of its own: with autogroup scheduling, its own CPU share.
    assert len({os.getsid(pid) for pid in pids.values()} | {os.getsid(0)}) == 3
    assert cluster.address.startswith("tcp://127.0.0.1:")
    with urllib.request.urlopen(cluster.dashboard_url, timeout=30) as answer:
        page = answer.read()
    assert b"Dask Diagnostic UI" in page and b"bokeh" in page, "the dashboard needs bokeh installed"


def test_a_killed_worker_command_is_restarted_said_and_every_process_is_the_clusters(tmp_path):
    """The cluster's commands are fanout.supervise components: a worker's nanny SIGKILLed is
    restarted (and said) and the worker process it leaves is ended; every process of the cluster
    is in the sessions or carries the tag its reaper ends, and none is left after ``stop``."""
    from distributed import Client

    from fanout.supervise import is_zombie, members_or_tagged

    said: list[str] = []
    with LocalDaskCluster(tmp_path, workers=1, report=said.append) as cluster:
        with Client(cluster.address, set_as_default=False) as client:
            (worker_pid,) = client.run(os.getpid).values()
        assert {*cluster.pids().values(), worker_pid} <= set(cluster.processes())
        os.kill(cluster.pids()["worker-0"], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while cluster.restarts["worker-0"] != 1 or not any("dask-worker-0 restarted" in m for m in said):
            assert time.monotonic() < deadline, (cluster.restarts, said)
            time.sleep(0.2)
        assert any("dask-worker-0 exited with signal SIGKILL" in m for m in said)
        assert worker_pid not in cluster.processes(), "the dead nanny's worker process was ended with it"
        with Client(cluster.address, set_as_default=False) as client:
            client.wait_for_workers(1, timeout=60)
            assert list(client.run(os.getpid).values()) != [worker_pid], "a new worker joined"
        sessions, tag = cluster._supervisor.sessions, cluster.tag
    left = [pid for pid in members_or_tagged(sessions, tag) if not is_zombie(pid)]
    assert left == [], "nothing of the cluster is left after stop"


def test_workers_write_the_features_and_only_summaries_come_back(dataset, cluster):
    store, shards = dataset
    result = daskrun.featurise_shard(
        store, shards[0], "features/shard-0", scheduler_address=cluster.address, partition_rows=PARTITION_ROWS
    )
    recorded = store.verified("features/shard-0")
    assert recorded["executor"] == cluster.address
    assert len(recorded["parts"]) == result["parts"] == 3, "the cluster path must really partition"
    assert {part["worker"] for part in recorded["parts"]} <= set(_worker_addresses(cluster))

    raw = pq.read_table(store.path(shards[0])).to_pandas()
    expected, expected_stats, expected_dropped = preprocess.featurise_frame_pandas(raw)
    pd.testing.assert_frame_equal(read_features(store, "features/shard-0"), expected)
    assert result["dropped"] == recorded["dropped"] == expected_dropped
    assert result["rows_in"] == SPEC.rows_per_shard == result["rows_out"] + sum(result["dropped"].values())
    stats = store.read_json("features/shard-0/stats.json")
    for column, expected_column in expected_stats.items():
        assert stats[column] == pytest.approx(expected_column, rel=1e-9), column

    features_bytes = sum(store.size(f"features/shard-0/{p['path']}") for p in recorded["parts"])
    assert recorded["returned_bytes"] < 3_000 * len(recorded["parts"]) < features_bytes / 50
    assert store.listdir("features/shard-0") == ["_SUCCESS.json", "features", "stats.json"], "no staging left"


def test_cluster_and_in_process_runs_write_identical_bytes(dataset, cluster, tmp_path):
    store, shards = dataset
    on_cluster = daskrun.featurise_shard(
        store, shards[1], "cluster/unit", scheduler_address=cluster.address, partition_rows=PARTITION_ROWS
    )
    here = daskrun.featurise_shard(store, shards[1], "here/unit", partition_rows=PARTITION_ROWS)
    assert (on_cluster["executor"], here["executor"]) == (cluster.address, daskrun.IN_PROCESS)
    assert store.verified("cluster/unit")["files"] == store.verified("here/unit")["files"]
    assert store.verified("here/unit")["raw_sha256"] == store.sha256(shards[1])


def test_the_scheduler_address_comes_from_the_environment(shard, cluster, monkeypatch):
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", cluster.address)
    assert featurise(shard)["executor"] == cluster.address


def test_a_corrupt_page_met_by_a_worker_is_bad_input_and_keeps_earlier_output(shard, cluster):
    """The footer is intact, a compressed page in the middle is not: the worker's error, no retry."""
    featurise(shard)
    committed = unit_bytes(shard, "unit")
    raw_file = shard.path("raw/shard.parquet")
    with open(raw_file, "r+b") as handle:
        handle.seek(os.path.getsize(raw_file) // 3)
        handle.write(bytes(range(256)) * 8)

    with pytest.raises(BadInputError, match=r"raw/shard\.parquet is corrupt"):
        featurise(shard, scheduler_address=cluster.address)
    assert {k: v for k, v in unit_bytes(shard, "unit").items() if not k.startswith("_staging")} == committed
    assert shard.verified("unit") is not None


def _worker_addresses(cluster) -> list[str]:
    from distributed import Client

    with Client(cluster.address, set_as_default=False) as client:
        return list(client.nthreads())


# -- in this process ---------------------------------------------------------------------------------
def test_unreachable_scheduler_fails_naming_the_address_and_the_variable(shard):
    from fanout.localstack import free_port

    address = f"tcp://127.0.0.1:{free_port()}"
    with (
        pytest.raises(daskrun.DaskUnavailableError, match=rf"{address}.*DASK_SCHEDULER_ADDRESS"),
        daskrun.connect(address, timeout=1),
    ):
        pass


def test_rerun_skips_a_verified_shard(shard):
    first = featurise(shard)
    files = shard.verified("unit")["files"]
    mtimes = {rel: os.stat(shard.path(f"unit/{rel}")).st_mtime_ns for rel in files}

    again = featurise(shard)

    assert again["skipped"] and not first["skipped"]
    assert {rel: os.stat(shard.path(f"unit/{rel}")).st_mtime_ns for rel in files} == mtimes
    assert {k: again[k] for k in ("rows_in", "rows_out", "dropped")} == {
        k: first[k] for k in ("rows_in", "rows_out", "dropped")
    }


def test_tampered_output_is_redone_with_the_same_bytes(shard):
    featurise(shard)
    files = shard.verified("unit")["files"]
    with open(shard.path("unit/features/part-00001.parquet"), "ab") as handle:
        handle.write(b"garbage")
    assert shard.verified("unit") is None

    redone = featurise(shard)
    assert not redone["skipped"]
    assert shard.verified("unit")["files"] == files


def test_redoing_a_unit_with_other_partitions_replaces_every_part(shard):
    featurise(shard)
    assert len(shard.listdir("unit/features")) == 3
    shard.invalidate("unit")  # e.g. an attempt that died after publishing, before its commit
    coarse = daskrun.featurise_shard(shard, "raw/shard.parquet", "unit", partition_rows=50_000)
    assert coarse["parts"] == 1
    assert shard.listdir("unit/features") == ["part-00000.parquet"], "stale parts are removed"
    assert shard.verified("unit") is not None


def test_truncated_raw_shard_is_bad_input_and_keeps_earlier_output(shard):
    featurise(shard)
    committed = unit_bytes(shard, "unit")
    raw_file = shard.path("raw/shard.parquet")
    os.truncate(raw_file, os.path.getsize(raw_file) // 2)

    with pytest.raises(BadInputError, match=r"raw/shard\.parquet"):
        featurise(shard)
    assert unit_bytes(shard, "unit") == committed
    assert shard.verified("unit") is not None


def test_missing_column_is_named(dataset, tmp_path):
    source, shards = dataset
    store = ArtifactStore(str(tmp_path))
    table = pq.read_table(source.path(shards[0])).drop_columns(["duration_min"])
    os.makedirs(store.path("raw"))
    pq.write_table(table, store.path("raw/shard.parquet"))
    with pytest.raises(BadInputError, match=r"raw/shard\.parquet.*duration_min"):
        featurise(store)
    assert not store.exists("unit")


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "does not exist"), (b"ride_id,fare\n1,2.5\n", "is not a readable Parquet file")],
)
def test_absent_or_non_parquet_raw_shard_is_bad_input(tmp_path, content, message):
    store = ArtifactStore(str(tmp_path))
    if content is not None:
        store.write_bytes("raw/shard.parquet", content)
    with pytest.raises(BadInputError, match=rf"raw/shard\.parquet {message}"):
        featurise(store)


@pytest.mark.parametrize("partition_rows", [0, -5, 2.5, True])
def test_partition_rows_must_be_a_positive_integer(shard, partition_rows):
    with pytest.raises(BadInputError, match="partition_rows"):
        daskrun.featurise_shard(shard, "raw/shard.parquet", "unit", partition_rows=partition_rows)


def test_empty_shard_is_bad_input_and_writes_nothing(tmp_path):
    store = ArtifactStore(str(tmp_path))
    table, _, _ = datasets.synthesise_row_group(datasets.SyntheticSpec(1, 10, 1), 0, 0)
    os.makedirs(store.path("raw"))
    pq.write_table(table.slice(0, 0), store.path("raw/shard.parquet"))

    with pytest.raises(
        BadInputError, match=r"raw/shard\.parquet fails the data quality gates: the shard has no rows"
    ):
        featurise(store)
    assert unit_bytes(store, "unit") == {}, "nothing written, nothing staged left behind"


# -- the data quality gates ----------------------------------------------------------------------------
def rewrite_raw(store: ArtifactStore, change) -> None:
    """Replace raw/shard.parquet by ``change(table)``, in 4k-row row groups as generated."""
    table = change(pq.read_table(store.path("raw/shard.parquet")))
    pq.write_table(table, store.path("raw/shard.parquet"), row_group_size=4_000)


def with_column(table, name: str, values):
    import pyarrow as pa

    return table.set_column(table.schema.get_field_index(name), name, pa.array(values))


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda t: with_column(t, "fare", ["twelve"] * t.num_rows),
            "required column 'fare' has no usable value in any of its 20000 rows (0 missing, 20000 malformed)",
        ),
        (
            lambda t: with_column(t, "fare", [float("nan")] * t.num_rows),
            "required column 'fare' has no usable value in any of its 20000 rows (20000 missing, 0 malformed)",
        ),
        (
            lambda t: with_column(t, "distance_km", ["n/a"] * 10_000 + ["far"] * 10_000),
            "required column 'distance_km' has no usable value in any of its 20000 rows "
            "(10000 missing, 10000 malformed)",
        ),
    ],
    ids=["text-in-fare", "all-nan-fare", "no-distance"],
)
def test_a_required_column_without_a_usable_value_fails_the_shard_and_keeps_earlier_output(
    shard, change, expected
):
    featurise(shard)
    committed = unit_bytes(shard, "unit")
    rewrite_raw(shard, change)

    with pytest.raises(BadInputError) as err:
        featurise(shard)
    message = str(err.value)
    assert message.startswith(f"raw shard {shard.uri('raw/shard.parquet')} fails the data quality gates: ")
    assert expected in message
    assert "the shard kept none of 20000 rows" in message
    assert "rows dropped by reason: " in message
    assert unit_bytes(shard, "unit") == committed, "the earlier commit stands, no staging left behind"
    assert shard.verified("unit") is not None


def test_a_shard_keeping_less_than_min_rows_kept_fails_with_its_drops_by_reason(shard):
    # Every ride three times over: two thirds of the rows are duplicates.
    import pyarrow as pa

    rewrite_raw(shard, lambda t: pa.concat_tables([t, t, t]))
    with pytest.raises(BadInputError) as err:
        featurise(shard)
    message = str(err.value)
    assert "the shard kept " in message and "below min_rows_kept=0.5" in message
    assert "rows dropped by reason: duplicate=" in message, "the largest reason comes first"
    assert "required column" not in message
    assert unit_bytes(shard, "unit") == {}

    passed = featurise(shard, min_rows_kept=0.3)
    assert passed["quality"]["passed"] and passed["quality"]["min_rows_kept"] == pytest.approx(0.3)
    assert 0.3 <= passed["quality"]["kept_share"] < 1 / 3


def test_the_gates_outcome_is_recorded_and_judged_again_when_the_shard_is_skipped(shard):
    result = featurise(shard)
    recorded = shard.verified("unit")["quality"]
    assert recorded == result["quality"]
    assert recorded["min_rows_kept"] == pytest.approx(0.5) and recorded["passed"]
    assert recorded["kept_share"] == result["rows_out"] / result["rows_in"]
    assert recorded["unparsed"]["fare"][0] > 0, "the dirt's missing fares are counted"
    assert set(recorded["unparsed"]) == set(preprocess.REQUIRED_COLUMNS)

    committed = unit_bytes(shard, "unit")
    with pytest.raises(BadInputError, match=r"below min_rows_kept=0\.99"):
        featurise(shard, min_rows_kept=0.99)
    assert unit_bytes(shard, "unit") == committed


def test_min_rows_kept_must_be_a_share(shard):
    with pytest.raises(BadInputError, match="min_rows_kept must be a number in"):
        featurise(shard, min_rows_kept=2)


def test_partitions_follow_row_groups_never_the_cluster():
    metadata = pq.ParquetFile(_write_groups([3, 3, 3, 9, 1])).metadata
    assert daskrun.plan_partitions(metadata, 5) == [(0, 1), (2, 3), (4,)]
    assert daskrun.plan_partitions(metadata, 100) == [(0, 1, 2, 3, 4)]
    assert daskrun.plan_partitions(metadata, 1) == [(0,), (1,), (2,), (3,), (4,)]


def _write_groups(sizes: list[int]) -> str:
    import tempfile

    import pyarrow as pa

    path = os.path.join(tempfile.mkdtemp(), "groups.parquet")
    with pq.ParquetWriter(path, pa.schema([("x", pa.int64())])) as writer:
        for size in sizes:
            writer.write_table(pa.table({"x": list(range(size))}))
    return path
