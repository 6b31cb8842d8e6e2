"""fanout.datasets: the synthetic rides dataset, generated shard by shard, and users' datasets."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from fanout import datasets, preprocess
from fanout.errors import BadInputError
from fanout.storage import ArtifactStore

PLUGINS = str(Path(datasets.__file__).resolve().parents[1])
SPEC = datasets.SyntheticSpec(n_shards=2, rows_per_shard=20_000, seed=7, dirt=0.05, row_group_rows=4_000)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    store = ArtifactStore(str(tmp_path_factory.mktemp("datasets")))
    prefix = SPEC.default_prefix()
    return store, prefix, datasets.generate_dataset(store, prefix, SPEC)


def read_raw(store: ArtifactStore, rel: str) -> pd.DataFrame:
    return pq.read_table(store.path(rel)).to_pandas()


def test_importing_the_module_stays_cheap():
    """DAG files may import fanout.datasets; pandas and pyarrow load inside the functions."""
    code = (
        "import sys, fanout.datasets; sys.exit(any(m in sys.modules for m in ('pandas', 'pyarrow', 'dask')))"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": PLUGINS})


def test_same_spec_gives_byte_identical_shards_in_any_order(tmp_path):
    store = ArtifactStore(str(tmp_path))
    spec = datasets.SyntheticSpec(n_shards=3, rows_per_shard=3_000, seed=11, row_group_rows=1_000)
    in_order = [datasets.write_shard(store, "a", spec, i)["sha256"] for i in range(3)]
    reversed_order = [datasets.write_shard(store, "b", spec, i)["sha256"] for i in reversed(range(3))]
    other_seed = datasets.SyntheticSpec(n_shards=3, rows_per_shard=3_000, seed=12, row_group_rows=1_000)

    assert in_order == reversed_order[::-1]
    assert len(set(in_order)) == 3, "shards differ from each other"
    assert datasets.write_shard(store, "c", other_seed, 0)["sha256"] not in in_order
    assert store.sha256(f"a/{datasets.shard_name(0)}") == in_order[0]


def test_a_partition_key_draws_its_own_rows_deterministically(tmp_path):
    """A scheduled dataset generates one partition (a date, say) without the others."""
    store = ArtifactStore(str(tmp_path))
    day = datasets.SyntheticSpec(n_shards=1, rows_per_shard=2_000, seed=7, partition="2026-11-22")
    next_day = datasets.SyntheticSpec(n_shards=1, rows_per_shard=2_000, seed=7, partition="2026-11-23")
    first = datasets.write_shard(store, "p1", day, 0)["sha256"]
    assert datasets.write_shard(store, "p2", day, 0)["sha256"] == first
    assert datasets.write_shard(store, "p3", next_day, 0)["sha256"] != first
    assert day.default_prefix().endswith("/2026-11-22") and day.params()["partition"] == "2026-11-22"


def test_shards_stream_row_groups_and_number_rides_across_them(dataset):
    store, _, shards = dataset
    metadata = pq.ParquetFile(store.path(shards[0])).metadata
    assert [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)] == [4_000] * 5
    raw = read_raw(store, shards[0])
    originals = raw["ride_id"].drop_duplicates()
    # Ride ids continue from one row group to the next, without gaps or overlaps.
    assert sorted(originals) == list(range(originals.min(), originals.min() + len(originals)))
    assert read_raw(store, shards[1])["ride_id"].min() > 1_000_000_000


def test_generated_shards_contain_every_kind_of_dirt(dataset):
    store, _, shards = dataset
    raw = read_raw(store, shards[0])
    assert len(raw) == SPEC.rows_per_shard
    assert list(raw.columns) == list(preprocess.RAW_COLUMNS)

    duplicated = raw[raw["ride_id"].duplicated(keep=False)].sort_values("ride_id")
    assert len(duplicated) > 0
    assert duplicated.groupby("ride_id").nunique(dropna=False).max().max() == 1, "copies are exact"
    # Some copies repeat a ride of the previous row group: duplicates cross partitions.
    group = pd.Series(range(len(raw))) // SPEC.row_group_rows
    first_group = group.groupby(raw["ride_id"].to_numpy()).transform("min")
    assert ((group != first_group) & raw["ride_id"].duplicated().to_numpy()).any()

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


def test_manifest_records_checksums_params_and_dirt_counts(dataset):
    store, prefix, shards = dataset
    manifest = store.verified(prefix)
    assert manifest is not None, "the recorded checksums are the files' real ones"
    assert manifest["params"] == SPEC.params()
    assert manifest["rows"] == SPEC.n_shards * SPEC.rows_per_shard
    duplicates = sum(read_raw(store, rel)["ride_id"].duplicated().sum() for rel in shards)
    assert manifest["injected"]["duplicate"] == duplicates
    assert all(count > 0 for count in manifest["injected"].values()), manifest["injected"]


def test_a_committed_dataset_is_reused_and_other_params_are_refused(dataset):
    store, prefix, shards = dataset
    mtime = os.stat(store.path(shards[0])).st_mtime_ns
    assert datasets.plan_dataset(store, prefix, SPEC) == []
    assert datasets.generate_dataset(store, prefix, SPEC) == shards
    assert os.stat(store.path(shards[0])).st_mtime_ns == mtime

    other = datasets.SyntheticSpec(n_shards=2, rows_per_shard=20_000, seed=8, dirt=0.05, row_group_rows=4_000)
    with pytest.raises(BadInputError, match=prefix):
        datasets.plan_dataset(store, prefix, other)
    assert os.stat(store.path(shards[0])).st_mtime_ns == mtime
    assert store.verified(prefix) is not None


def test_an_uncommitted_attempt_is_regenerated(tmp_path):
    store = ArtifactStore(str(tmp_path))
    spec = datasets.SyntheticSpec(n_shards=2, rows_per_shard=1_000, seed=3)
    first = datasets.write_shard(store, "d", spec, 0)  # the attempt died before shard 1 and the commit
    assert datasets.plan_dataset(store, "d", spec) == [0, 1]
    records = [datasets.write_shard(store, "d", spec, i) for i in (1, 0)]
    assert datasets.commit_dataset(store, "d", spec, records) == [
        "d/shard-00000.parquet",
        "d/shard-00001.parquet",
    ]
    assert store.verified("d")["files"]["shard-00000.parquet"] == first["sha256"]


def test_commit_refuses_a_record_that_does_not_match_the_file(tmp_path):
    store = ArtifactStore(str(tmp_path))
    spec = datasets.SyntheticSpec(n_shards=1, rows_per_shard=1_000, seed=3)
    record = datasets.write_shard(store, "d", spec, 0)
    with pytest.raises(OSError, match=r"shard-00000\.parquet"):
        datasets.commit_dataset(store, "d", spec, [{**record, "bytes": record["bytes"] + 1}])
    with pytest.raises(RuntimeError, match="no record"):
        datasets.commit_dataset(store, "d", spec, [])
    assert store.verified("d") is None


@pytest.mark.parametrize(
    "params",
    [
        {"n_shards": 0},
        {"rows_per_shard": 0},
        {"rows_per_shard": 10**9},
        {"seed": -1},
        {"dirt": 0.9},
        {"row_group_rows": 0},
        {"n_shards": True},
    ],
)
def test_bad_spec_is_refused_naming_the_param(params):
    arguments = {"n_shards": 1, "rows_per_shard": 100, "seed": 0, **params}
    with pytest.raises(BadInputError, match=next(iter(params))):
        datasets.SyntheticSpec(**arguments)


def test_list_shards_from_manifest_or_directory(dataset, tmp_path):
    store, prefix, shards = dataset
    assert datasets.list_shards(store, prefix) == shards

    user = ArtifactStore(str(tmp_path))
    os.makedirs(user.path("mine"))
    shutil.copyfile(store.path(shards[1]), user.path("mine/b.parquet"))
    shutil.copyfile(store.path(shards[0]), user.path("mine/a.parquet"))
    user.write_json("mine/notes.json", {})
    assert datasets.list_shards(user, "mine") == ["mine/a.parquet", "mine/b.parquet"]

    with pytest.raises(BadInputError, match="nothing-here"):
        datasets.list_shards(user, "nothing-here")
    user.write_bytes("broken/_SUCCESS.json", b"{not json")
    with pytest.raises(BadInputError, match="not valid JSON"):
        datasets.list_shards(user, "broken")


_PEAK_RSS = """
import json, resource, sys
from fanout import datasets
from fanout.storage import ArtifactStore
rows = int(sys.argv[2])
spec = datasets.SyntheticSpec(n_shards=1, rows_per_shard=rows, seed=1, row_group_rows=10_000)
datasets.write_shard(ArtifactStore(sys.argv[1]), "d", spec, 0)
print(json.dumps({"peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def test_generating_a_shard_takes_the_same_memory_whatever_its_rows(tmp_path):
    """Row groups are streamed: 20x the rows, the same peak (how a 50M-row shard fits its pod)."""

    def peak_mib(rows: int) -> float:
        out = subprocess.run(
            [sys.executable, "-c", _PEAK_RSS, str(tmp_path / str(rows)), str(rows)],
            env={**os.environ, "PYTHONPATH": PLUGINS},
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(out.stdout.strip().splitlines()[-1])["peak_kib"] / 1024

    small, large = peak_mib(40_000), peak_mib(800_000)
    # 800k rows held at once would be ~150 MiB of columns and strings; streamed they cost nothing extra.
    assert large - small < 25, (small, large)
