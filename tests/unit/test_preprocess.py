"""Unit tests for the preprocessing workload (fanout.preprocess), on small synthetic shards.

One module-scoped dataset (2 shards x 20k rows, 4k-row row groups so Dask gets several
partitions) is generated and featurised once: shard 0 on a 2-process LocalCluster, shard 1
in-process. Tests that damage files work on copies in their own ``tmp_path``.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fanout import preprocess
from fanout.errors import BadInputError
from fanout.storage import ArtifactStore

ROWS = 20_000
ROW_GROUP_ROWS = 4_000
SEED = 7
DIRT = 0.05
RAW_PREFIX = "datasets/rides"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    store = ArtifactStore(str(tmp_path_factory.mktemp("preprocess")))
    summary = preprocess.generate_dataset(
        store,
        RAW_PREFIX,
        n_shards=2,
        rows_per_shard=ROWS,
        seed=SEED,
        dirt=DIRT,
        row_group_rows=ROW_GROUP_ROWS,
    )
    return store, summary


@pytest.fixture(scope="module")
def featurised(dataset):
    """Shard 0 on a real 2-worker LocalCluster, shard 1 in-process (cpus=1)."""
    store, summary = dataset
    started = time.perf_counter()
    results = [
        preprocess.featurise_shard(
            store,
            summary["shards"][0],
            "features/shard-0",
            cpus=2,
            partition_rows=5_000,
            min_rows_for_cluster=0,
        ),
        preprocess.featurise_shard(
            store, summary["shards"][1], "features/shard-1", cpus=1, partition_rows=5_000
        ),
    ]
    assert time.perf_counter() - started < 20, "featurising two 20k-row shards should take seconds"
    return store, results


def read_raw(store: ArtifactStore, rel: str) -> pd.DataFrame:
    return pq.read_table(store.path(rel)).to_pandas()


def copy_into(source: ArtifactStore, rel: str, target: ArtifactStore, target_rel: str) -> None:
    os.makedirs(os.path.dirname(target.path(target_rel)), exist_ok=True)
    shutil.copyfile(source.path(rel), target.path(target_rel))


def unit_bytes(store: ArtifactStore, unit: str) -> dict[str, bytes]:
    return {name: store.read_bytes(f"{unit}/{name}") for name in store.listdir(unit)}


def valid_row(ride_id: int, **changes) -> dict:
    """A clean raw row (Monday 08:15, rush hour, zone 1 -> 8), with ``changes`` applied."""
    row = {
        "ride_id": ride_id,
        "pickup_ts": "2026-03-02 08:15:00",
        "pickup_zone": 1,
        "dropoff_zone": 8,
        "distance_km": 4.2,
        "duration_min": "12.5",
        "passengers": 1.0,
        "payment_type": "card",
        "fare": 18.3,
    }
    return {**row, **changes}


def test_importing_the_module_stays_cheap():
    """DAG files may import fanout.preprocess at parse time; pandas, pyarrow and dask load in tasks."""
    plugins = str(Path(preprocess.__file__).resolve().parents[1])
    heavy = "pandas", "pyarrow", "dask"
    code = f"import sys, fanout.preprocess; sys.exit(any(m in sys.modules for m in {heavy!r}))"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": plugins})


# -- generation ------------------------------------------------------------------------------------
def test_generation_is_deterministic(tmp_path):
    store = ArtifactStore(str(tmp_path))
    params = {"n_shards": 2, "rows_per_shard": 3_000, "seed": 11}
    first = preprocess.generate_dataset(store, "a", **params)
    second = preprocess.generate_dataset(store, "b", **params)
    other_seed = preprocess.generate_dataset(store, "c", **{**params, "seed": 12})

    digests = [[store.sha256(rel) for rel in run["shards"]] for run in (first, second, other_seed)]
    assert digests[0] == digests[1]
    assert digests[0][0] != digests[0][1], "shards must differ from each other"
    assert not set(digests[0]) & set(digests[2])
    assert store.verified("a")["params"]["seed"] == 11


def test_generated_shards_contain_every_kind_of_dirt(dataset):
    store, summary = dataset
    raw = read_raw(store, summary["shards"][0])
    assert len(raw) == ROWS
    assert list(raw.columns) == list(preprocess.RAW_COLUMNS)

    assert raw["ride_id"].duplicated().sum() > 0
    duplicated = raw[raw["ride_id"].duplicated(keep=False)].sort_values("ride_id")
    assert duplicated.groupby("ride_id").nunique(dropna=False).max().max() == 1, "copies are exact"
    for column in ("pickup_ts", "pickup_zone", "dropoff_zone", "distance_km", "fare", "passengers"):
        assert raw[column].isna().sum() > 0, column
    assert (raw["distance_km"] < 0).any() and (raw["distance_km"] > 1_000).any()
    assert (raw["fare"] < 0).any() and (raw["fare"] > 1_000).any()
    assert raw["passengers"].isin([0, 9, 12]).any()
    assert (~raw["pickup_zone"].dropna().between(1, preprocess.N_ZONES)).any()

    durations = raw["duration_min"]
    assert durations.isin(["n/a", ""]).any() and durations.isna().any()
    assert durations.isin(["twelve", "12 min", "?", "1O.5"]).any()
    assert durations.str.fullmatch(r"\d+,\d+").any(), "decimal commas"
    numeric = pd.to_numeric(durations, errors="coerce")
    assert (numeric < 0).any() and (numeric > 1_000).any()

    stamps = raw["pickup_ts"]
    parsed = pd.to_datetime(stamps, format="%Y-%m-%d %H:%M:%S", errors="coerce")
    assert (parsed.isna() & stamps.notna()).sum() > 0, "malformed timestamps"
    assert raw["payment_type"].isin(["CARD", "Cash ", " App"]).any()


def test_generate_is_idempotent_and_refuses_other_params(dataset):
    store, summary = dataset
    shard = store.path(summary["shards"][0])
    mtime = os.stat(shard).st_mtime_ns

    again = preprocess.generate_dataset(
        store,
        RAW_PREFIX,
        n_shards=2,
        rows_per_shard=ROWS,
        seed=SEED,
        dirt=DIRT,
        row_group_rows=ROW_GROUP_ROWS,
    )
    assert again["skipped"] and again["shards"] == summary["shards"]
    assert os.stat(shard).st_mtime_ns == mtime

    with pytest.raises(BadInputError, match=RAW_PREFIX):
        preprocess.generate_dataset(
            store, RAW_PREFIX, n_shards=2, rows_per_shard=ROWS, seed=SEED + 1, dirt=DIRT
        )
    assert os.stat(shard).st_mtime_ns == mtime


@pytest.mark.parametrize(
    "params",
    [{"n_shards": 0}, {"rows_per_shard": 0}, {"seed": -1}, {"dirt": 0.9}, {"row_group_rows": 0}],
)
def test_generate_rejects_bad_params(tmp_path, params):
    arguments = {"n_shards": 1, "rows_per_shard": 100, "seed": 0, **params}
    name = next(iter(params))
    with pytest.raises(BadInputError, match=name):
        preprocess.generate_dataset(ArtifactStore(str(tmp_path)), "d", **arguments)


def test_list_shards_from_manifest_or_directory(dataset, tmp_path):
    store, summary = dataset
    assert preprocess.list_shards(store, RAW_PREFIX) == summary["shards"]

    user = ArtifactStore(str(tmp_path))
    copy_into(store, summary["shards"][1], user, "mine/b.parquet")
    copy_into(store, summary["shards"][0], user, "mine/a.parquet")
    user.write_json("mine/notes.json", {})
    assert preprocess.list_shards(user, "mine") == ["mine/a.parquet", "mine/b.parquet"]

    with pytest.raises(BadInputError, match="nothing-here"):
        preprocess.list_shards(user, "nothing-here")


# -- cleaning and features -------------------------------------------------------------------------
def test_cleaning_drops_each_kind_of_dirt_once():
    raw = pd.DataFrame(
        [
            valid_row(1),
            valid_row(1, fare=99.0),  # a re-sent record: the first one wins
            valid_row(3, distance_km=1.0, duration_min="3,5"),  # decimal comma: kept as 3.5
            valid_row(4, payment_type=" CARD ", passengers=np.nan),  # normalised, imputed: kept
            valid_row(5, duration_min="n/a"),
            valid_row(6, duration_min="twelve"),
            valid_row(7, pickup_ts="2026-02-30 10:00:00"),
            valid_row(8, pickup_ts=None),
            valid_row(9, pickup_zone=99),
            valid_row(10, distance_km=-3.0),
            valid_row(11, duration_min="5000"),
            valid_row(12, distance_km=80.0, duration_min="2"),
            valid_row(13, passengers=9.0),
            valid_row(14, fare=-5.0),
            valid_row(15, fare=np.nan),
            valid_row(16, duration_min=""),
        ]
    )
    features, stats, dropped = preprocess.featurise_frame_pandas(raw)

    assert features["ride_id"].tolist() == [1, 3, 4]
    assert dropped == {
        "duplicate": 1,
        "missing_value": 4,
        "malformed_value": 2,
        "unknown_zone": 1,
        "implausible_distance": 1,
        "implausible_duration": 1,
        "implausible_speed": 1,
        "implausible_passengers": 1,
        "implausible_fare": 1,
    }
    assert list(features.columns) == preprocess.OUTPUT_COLUMNS
    assert all(features[c].dtype == np.float32 for c in [*preprocess.FEATURE_COLUMNS, preprocess.TARGET])

    first = features.iloc[0]
    assert first["fare"] == pytest.approx(18.3)
    assert first["speed_kmh"] == pytest.approx(4.2 / (12.5 / 60), rel=1e-6)
    assert first["hour_sin"] == pytest.approx(math.sin(2 * math.pi * 8.25 / 24), abs=1e-6)
    assert (first["dow_sin"], first["dow_cos"]) == pytest.approx((0.0, 1.0), abs=1e-6)  # Monday
    assert (first["is_rush_hour"], first["is_weekend"], first["is_night"]) == (1, 0, 0)
    assert (first["pickup_x_km"], first["dropoff_x_km"]) == pytest.approx((-6.25, -3.75))
    assert features.iloc[1]["duration_min"] == pytest.approx(3.5)
    assert (features.iloc[2]["payment_card"], features.iloc[2]["passengers"]) == (1, 1)
    assert stats["fare"]["count"] == 3


def test_cleaned_shard_is_plausible_and_counts_add_up(dataset):
    store, summary = dataset
    raw = read_raw(store, summary["shards"][0])
    features, stats, dropped = preprocess.featurise_frame_pandas(raw)

    assert len(raw) == len(features) + sum(dropped.values())
    assert all(count > 0 for count in dropped.values()), dropped
    assert dropped["duplicate"] == raw["ride_id"].duplicated().sum()
    assert features["ride_id"].is_unique
    assert np.isfinite(features[preprocess.STATS_COLUMNS].to_numpy()).all()
    assert features["distance_km"].between(*preprocess.DISTANCE_KM_RANGE).all()
    assert features["duration_min"].between(*preprocess.DURATION_MIN_RANGE).all()
    assert features["fare"].between(*preprocess.FARE_RANGE).all()
    assert 0.85 * ROWS < len(features) < ROWS * (1 - DIRT / 2)
    assert stats["fare"]["count"] == len(features)


def test_dask_frame_matches_pandas_with_duplicates_across_partitions(dataset):
    store, summary = dataset
    raw = read_raw(store, summary["shards"][1]).iloc[:6_000]
    expected, expected_counts = preprocess.clean_and_featurise(raw)

    with dask.config.set(scheduler="synchronous"):
        lazy_features, lazy_counts = preprocess.clean_and_featurise(
            dd.from_pandas(raw, npartitions=5, sort=False)
        )
        features, counts = dask.compute(lazy_features, lazy_counts)

    pd.testing.assert_frame_equal(features.reset_index(drop=True), expected.reset_index(drop=True))
    assert preprocess.dropped_by_reason(counts) == preprocess.dropped_by_reason(expected_counts)
    assert preprocess.dropped_by_reason(counts)["duplicate"] > 0


def test_dask_shard_equals_pandas_reference(featurised):
    store, results = featurised
    result = results[0]
    assert not result["skipped"]
    recorded = store.verified("features/shard-0")
    assert (recorded["executor"], recorded["workers"]) == ("local-cluster", 2)
    assert recorded["partitions"] > 2, "the cluster path must really partition"

    expected, expected_stats, expected_dropped = preprocess.featurise_frame_pandas(
        read_raw(store, result["raw"])
    )
    actual = pd.read_parquet(store.path(result["features"]))
    pd.testing.assert_frame_equal(
        actual.sort_values("ride_id").reset_index(drop=True),
        expected.sort_values("ride_id").reset_index(drop=True),
    )
    assert result["dropped"] == expected_dropped
    assert result["rows_in"] == ROWS == result["rows_out"] + sum(result["dropped"].values())
    assert result["sha256"] == store.sha256(result["features"])

    stats = store.read_json("features/shard-0/stats.json")
    for column, expected_column in expected_stats.items():
        assert stats[column] == pytest.approx(expected_column, rel=1e-9), column


# -- fan-in ----------------------------------------------------------------------------------------
def test_merge_stats_equals_direct_computation(featurised):
    store, results = featurised
    units = [result["out_unit"] for result in results]
    summary = preprocess.merge_stats(store, units, "merged")

    manifest = store.read_json(summary["manifest"])
    assert store.verified("merged") is not None
    assert manifest["feature_columns"] == preprocess.FEATURE_COLUMNS and manifest["target"] == "fare"
    assert [shard["unit"] for shard in manifest["shards"]] == units
    assert manifest["rows_in"] == 2 * ROWS
    assert manifest["rows_out"] == sum(result["rows_out"] for result in results) == summary["rows_out"]

    frames = []
    for shard in manifest["shards"]:
        assert store.sha256(shard["path"]) == shard["sha256"]
        frames.append(pd.read_parquet(store.path(shard["path"])))
    everything = pd.concat(frames).astype({c: np.float64 for c in preprocess.STATS_COLUMNS})
    for column in [*manifest["feature_columns"], manifest["target"]]:
        values = everything[column].to_numpy()
        stats = manifest["stats"][column]
        assert stats["count"] == len(values)
        assert stats["mean"] == pytest.approx(values.mean(), rel=1e-9, abs=1e-9), column
        assert stats["std"] == pytest.approx(values.std(), rel=1e-6, abs=1e-9), column
        assert (stats["min"], stats["max"]) == (values.min(), values.max())


def test_merge_stats_names_an_unverified_unit(featurised):
    store, results = featurised
    with pytest.raises(BadInputError, match="features/never-ran"):
        preprocess.merge_stats(store, [results[0]["out_unit"], "features/never-ran"], "merged-bad")


# -- re-runs, retries and bad input ----------------------------------------------------------------
def test_rerun_skips_a_verified_shard(featurised):
    store, results = featurised
    result = results[1]
    features_file = store.path(result["features"])
    mtime = os.stat(features_file).st_mtime_ns

    again = preprocess.featurise_shard(store, result["raw"], result["out_unit"], cpus=1)

    assert again["skipped"]
    assert os.stat(features_file).st_mtime_ns == mtime
    assert {k: again[k] for k in ("rows_in", "rows_out", "dropped", "sha256")} == {
        k: result[k] for k in ("rows_in", "rows_out", "dropped", "sha256")
    }


def test_small_shard_runs_in_process_with_identical_bytes(featurised, dataset, tmp_path):
    """Below min_rows_for_cluster no cluster starts; the file does not depend on partitioning."""
    _, results = featurised
    source, summary = dataset
    store = ArtifactStore(str(tmp_path))
    copy_into(source, summary["shards"][1], store, "raw/shard.parquet")

    result = preprocess.featurise_shard(store, "raw/shard.parquet", "unit", cpus=2)

    recorded = store.verified("unit")
    assert (recorded["executor"], recorded["workers"], recorded["partitions"]) == ("synchronous", 1, 1)
    assert result["sha256"] == results[1]["sha256"], "3 partitions or 1, the same bytes"


def test_external_scheduler_from_the_environment(featurised, dataset, tmp_path, monkeypatch):
    from distributed import LocalCluster

    _, results = featurised
    source, summary = dataset
    store = ArtifactStore(str(tmp_path))
    copy_into(source, summary["shards"][1], store, "raw/shard.parquet")

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", cluster.scheduler_address)
        result = preprocess.featurise_shard(store, "raw/shard.parquet", "unit", partition_rows=5_000)
        recorded = store.verified("unit")
        assert (recorded["executor"], recorded["workers"]) == (cluster.scheduler_address, 2)
    assert result["sha256"] == results[1]["sha256"]


def test_tampered_output_is_redone(dataset, tmp_path):
    source, summary = dataset
    store = ArtifactStore(str(tmp_path))
    copy_into(source, summary["shards"][1], store, "raw/shard.parquet")
    first = preprocess.featurise_shard(store, "raw/shard.parquet", "unit", cpus=1)

    with open(store.path(first["features"]), "ab") as handle:
        handle.write(b"garbage")
    assert store.verified("unit") is None

    redone = preprocess.featurise_shard(store, "raw/shard.parquet", "unit", cpus=1)
    assert not redone["skipped"]
    assert redone["sha256"] == first["sha256"] == store.sha256(first["features"])
    assert store.verified("unit") is not None


def test_truncated_raw_shard_raises_and_keeps_earlier_output(dataset, tmp_path):
    source, summary = dataset
    store = ArtifactStore(str(tmp_path))
    copy_into(source, summary["shards"][1], store, "raw/shard.parquet")
    first = preprocess.featurise_shard(store, "raw/shard.parquet", "unit", cpus=1)
    committed = unit_bytes(store, "unit")

    raw_file = store.path("raw/shard.parquet")
    os.truncate(raw_file, os.path.getsize(raw_file) // 2)
    with pytest.raises(BadInputError, match=r"raw/shard\.parquet"):
        preprocess.featurise_shard(store, "raw/shard.parquet", "unit", cpus=1)

    assert unit_bytes(store, "unit") == committed
    assert store.verified("unit")["files"]["features.parquet"] == first["sha256"]


def test_corrupt_page_inside_raw_shard_is_bad_input(dataset, tmp_path):
    """The footer is intact, a compressed page in the middle is not: still no retry."""
    source, summary = dataset
    store = ArtifactStore(str(tmp_path))
    copy_into(source, summary["shards"][1], store, "raw/shard.parquet")
    raw_file = store.path("raw/shard.parquet")
    with open(raw_file, "r+b") as handle:
        handle.seek(os.path.getsize(raw_file) // 3)
        handle.write(bytes(range(256)) * 8)

    with pytest.raises(BadInputError, match=r"raw/shard\.parquet is corrupt"):
        preprocess.featurise_shard(store, "raw/shard.parquet", "unit", cpus=1)
    assert not store.exists("unit/features.parquet")


def test_missing_column_is_named(dataset, tmp_path):
    source, summary = dataset
    store = ArtifactStore(str(tmp_path))
    table = pq.read_table(source.path(summary["shards"][0])).drop_columns(["duration_min"])
    os.makedirs(os.path.dirname(store.path("raw/no-duration.parquet")))
    pq.write_table(table, store.path("raw/no-duration.parquet"))

    with pytest.raises(BadInputError, match=r"raw/no-duration\.parquet.*duration_min"):
        preprocess.featurise_shard(store, "raw/no-duration.parquet", "unit", cpus=1)
    with pytest.raises(BadInputError, match="duration_min"):
        preprocess.featurise_frame_pandas(table.to_pandas())
    assert not store.exists("unit")


def test_missing_raw_shard_is_bad_input(tmp_path):
    with pytest.raises(BadInputError, match=r"raw/absent\.parquet"):
        preprocess.featurise_shard(ArtifactStore(str(tmp_path)), "raw/absent.parquet", "unit", cpus=1)


def test_not_a_parquet_file_is_bad_input(tmp_path):
    store = ArtifactStore(str(tmp_path))
    store.write_bytes("raw/text.parquet", b"ride_id,fare\n1,2.5\n")
    with pytest.raises(BadInputError, match=r"raw/text\.parquet"):
        preprocess.featurise_shard(store, "raw/text.parquet", "unit", cpus=1)


def test_empty_shard_commits_empty_features(tmp_path):
    store = ArtifactStore(str(tmp_path))
    table, _ = preprocess.synthesise_shard(seed=1, shard_index=0, rows=10, dirt=0.0)
    os.makedirs(os.path.dirname(store.path("raw/empty.parquet")))
    pq.write_table(table.slice(0, 0), store.path("raw/empty.parquet"))

    result = preprocess.featurise_shard(store, "raw/empty.parquet", "unit", cpus=1)
    assert (result["rows_in"], result["rows_out"]) == (0, 0)
    assert pq.read_table(store.path(result["features"])).schema.names == preprocess.OUTPUT_COLUMNS
    assert pa.types.is_float32(pq.read_schema(store.path(result["features"])).field("fare").type)
