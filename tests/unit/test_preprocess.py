"""fanout.preprocess: cleaning and featurising raw rows, in plain pandas (no cluster, no storage)."""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fanout import datasets, preprocess
from fanout.errors import BadInputError

ROWS = 20_000
DIRT = 0.05


@pytest.fixture(scope="module")
def raw() -> pd.DataFrame:
    """One synthetic shard (5 row groups of 4k rows), as pandas."""
    spec = datasets.SyntheticSpec(n_shards=1, rows_per_shard=ROWS, seed=7, dirt=DIRT, row_group_rows=4_000)
    previous, groups = None, []
    for group in range(len(spec.row_groups())):
        table, previous, _ = datasets.synthesise_row_group(spec, 0, group, previous)
        groups.append(table.to_pandas())
    return pd.concat(groups, ignore_index=True)


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
    """DAG files may import fanout.preprocess at parse time; pandas and friends load in tasks."""
    plugins = str(Path(preprocess.__file__).resolve().parents[1])
    heavy = "pandas", "pyarrow", "dask", "distributed"
    code = f"import sys, fanout.preprocess; sys.exit(any(m in sys.modules for m in {heavy!r}))"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": plugins})


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


def test_cleaned_shard_is_plausible_and_counts_add_up(raw):
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


@pytest.mark.parametrize("cuts", [[6_000], [1, 4_000, 4_001, 13_500], list(range(1_000, ROWS, 1_000))])
def test_parts_with_duplicates_found_across_them_add_up_to_the_whole_frame(raw, cuts):
    """What the Dask workers do per partition equals the single-threaded reference, row for row."""
    expected, expected_stats, expected_dropped = preprocess.featurise_frame_pandas(raw)
    bounds = [0, *cuts, len(raw)]
    parts = [raw.iloc[a:b].reset_index(drop=True) for a, b in itertools.pairwise(bounds)]
    duplicates = preprocess.duplicate_positions([part["ride_id"] for part in parts])
    results = [preprocess.featurise_part(part, dups) for part, dups in zip(parts, duplicates, strict=True)]

    features = pd.concat([r[0] for r in results], ignore_index=True)
    pd.testing.assert_frame_equal(features, expected)
    assert preprocess.dropped_by_reason([r[2] for r in results]) == expected_dropped
    assert expected_dropped["duplicate"] > 0
    stats = preprocess.combine_stats(r[1] for r in results)
    for column, expected_column in expected_stats.items():
        assert stats[column] == pytest.approx(expected_column, rel=1e-9), column


def test_statistics_combine_into_the_mean_and_std_of_everything(raw):
    features, _, _ = preprocess.featurise_frame_pandas(raw)
    halves = [features.iloc[: len(features) // 3], features.iloc[len(features) // 3 :], features.iloc[:0]]
    summary = preprocess.summarise_stats(preprocess.combine_stats(preprocess.column_stats(h) for h in halves))
    for column in preprocess.STATS_COLUMNS:
        values = features[column].to_numpy(dtype=np.float64)
        assert summary[column]["count"] == len(values)
        assert summary[column]["mean"] == pytest.approx(values.mean(), rel=1e-9, abs=1e-12), column
        assert summary[column]["std"] == pytest.approx(values.std(), rel=1e-6, abs=1e-9), column
        assert (summary[column]["min"], summary[column]["max"]) == (values.min(), values.max())
    empty = preprocess.summarise_stats(preprocess.combine_stats([preprocess.column_stats(features.iloc[:0])]))
    assert empty["fare"] == {"count": 0, "mean": None, "std": None, "min": None, "max": None}


def test_a_missing_column_is_named(raw):
    with pytest.raises(BadInputError, match="duration_min"):
        preprocess.featurise_frame_pandas(raw.drop(columns=["duration_min"]))


def test_missing_and_malformed_values_are_counted_per_required_column():
    raw = pd.DataFrame(
        [
            valid_row(1, fare=None),
            valid_row(2, fare="twelve"),
            valid_row(3, distance_km="n/a", pickup_ts="yesterday"),
            valid_row(4.5),
            valid_row(5, passengers="n/a"),  # not required: a missing count defaults to 1
            valid_row(5),  # a duplicate is counted like any other row
        ]
    )
    counts = preprocess.unparsed_counts(preprocess.label_rows(raw))
    assert counts == {
        "ride_id": [0, 1],
        "pickup_ts": [0, 1],
        "pickup_zone": [0, 0],
        "dropoff_zone": [0, 0],
        "distance_km": [1, 0],
        "duration_min": [0, 0],
        "fare": [1, 1],
    }
    halves = [
        preprocess.unparsed_counts(preprocess.label_rows(raw.iloc[cut])) for cut in (slice(0, 3), slice(3, 6))
    ]
    assert {c: [a + b for a, b in zip(*(h[c] for h in halves), strict=True)] for c in counts} == counts
