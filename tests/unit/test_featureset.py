"""fanout.featureset: the preprocessing fan-in, merging shard units into training's manifest."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fanout import daskrun, datasets, featureset, preprocess
from fanout.errors import BadInputError
from fanout.storage import ArtifactStore

SPEC = datasets.SyntheticSpec(n_shards=2, rows_per_shard=12_000, seed=5, row_group_rows=3_000)


@pytest.fixture(scope="module")
def units(tmp_path_factory):
    store = ArtifactStore(str(tmp_path_factory.mktemp("featureset")))
    shards = datasets.generate_dataset(store, "raw", SPEC)
    results = [
        daskrun.featurise_shard(store, raw, f"pre/shards/{i}", scheduler_address=None, partition_rows=6_000)
        for i, raw in enumerate(shards)
    ]
    return store, results


def test_manifest_lists_every_feature_file_and_the_global_statistics(units):
    store, results = units
    summary = featureset.merge_stats(store, [r["out_unit"] for r in results], "merged")

    manifest = store.read_json(summary["manifest"])
    assert store.verified("merged") is not None
    assert manifest["feature_columns"] == preprocess.FEATURE_COLUMNS and manifest["target"] == "fare"
    assert [s["unit"] for s in manifest["shards"]] == [r["out_unit"] for r in results]
    assert [s["dropped"] for s in manifest["shards"]] == [r["dropped"] for r in results]
    assert [s["rows_in"] - s["rows_out"] for s in manifest["shards"]] == [
        sum(r["dropped"].values()) for r in results
    ]
    assert manifest["rows_in"] == SPEC.n_shards * SPEC.rows_per_shard == summary["rows_in"]
    assert manifest["rows_out"] == sum(r["rows_out"] for r in results) == summary["rows_out"]
    assert summary["dropped"] == {
        reason: sum(r["dropped"][reason] for r in results) for reason in preprocess.DROP_REASONS
    }

    # "files" is what training reads: every part file, in order, with its rows and checksum.
    assert len(manifest["files"]) == 4
    assert [f["path"] for f in manifest["files"]] == [p for s in manifest["shards"] for p in s["files"]]
    frames = []
    for entry in manifest["files"]:
        assert store.sha256(entry["path"]) == entry["sha256"]
        frames.append(pd.read_parquet(store.path(entry["path"])))
        assert len(frames[-1]) == entry["rows_out"]
    everything = pd.concat(frames).astype({c: np.float64 for c in preprocess.STATS_COLUMNS})
    for column in [*manifest["feature_columns"], manifest["target"]]:
        values = everything[column].to_numpy()
        stats = manifest["stats"][column]
        assert stats["count"] == len(values)
        assert stats["mean"] == pytest.approx(values.mean(), rel=1e-9, abs=1e-9), column
        assert stats["std"] == pytest.approx(values.std(), rel=1e-6, abs=1e-9), column
        assert (stats["min"], stats["max"]) == (values.min(), values.max())


def test_training_reads_the_merged_manifest(units):
    from fanout import train

    store, results = units
    featureset.merge_stats(store, [r["out_unit"] for r in results], "for-training")
    x, y, _ = train._load_dataset(store, "for-training/manifest.json")
    assert len(x) == len(y) == sum(r["rows_out"] for r in results)


def test_an_unverified_or_outdated_unit_is_named(units):
    store, results = units
    with pytest.raises(BadInputError, match="pre/never-ran"):
        featureset.merge_stats(store, [results[0]["out_unit"], "pre/never-ran"], "merged-bad")
    record = store.read_json(f"{results[1]['out_unit']}/_SUCCESS.json")
    store.write_json("old/_SUCCESS.json", {**record, "files": {}, "features_version": 1})
    with pytest.raises(BadInputError, match="features_version 1"):
        featureset.merge_stats(store, ["old"], "merged-bad")
    with pytest.raises(BadInputError, match="at least one"):
        featureset.merge_stats(store, [], "merged-bad")


def test_the_manifest_records_each_shards_gate_and_the_runs(units):
    store, results = units
    summary = featureset.merge_stats(
        store, [r["out_unit"] for r in results], "merged-gates", min_rows_kept=0.6
    )
    manifest = store.read_json(summary["manifest"])
    assert [s["quality"] for s in manifest["shards"]] == [r["quality"] for r in results]
    assert all(
        s["quality"]["passed"] and s["quality"]["min_rows_kept"] == pytest.approx(0.5)
        for s in manifest["shards"]
    )
    expected = {
        "min_rows_kept": 0.6,
        "kept_share": manifest["rows_out"] / manifest["rows_in"],
        "passed": True,
        "shards": 2,
    }
    assert manifest["quality"] == summary["quality"] == expected


def test_a_run_keeping_too_little_overall_fails_and_keeps_the_earlier_manifest(units):
    store, results = units
    unit_paths = [r["out_unit"] for r in results]
    featureset.merge_stats(store, unit_paths, "merged-strict")
    before = store.read_bytes("merged-strict/manifest.json")
    with pytest.raises(
        BadInputError,
        match=r"the run fails the data quality gates: its 2 shard\(s\) together kept \d+ of 24000 rows "
        r"\(9\d\.\d%\), below min_rows_kept=0\.99; rows dropped by reason: .+; least kept: raw/shard-",
    ):
        featureset.merge_stats(store, unit_paths, "merged-strict", min_rows_kept=0.99)
    assert store.read_bytes("merged-strict/manifest.json") == before
    assert store.verified("merged-strict") is not None
