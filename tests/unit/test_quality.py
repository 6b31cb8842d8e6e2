"""fanout.quality: the data quality gates of a shard and of a run (no Airflow, no cluster)."""

from __future__ import annotations

import pytest

from fanout import quality
from fanout.errors import BadInputError
from fanout.preprocess import DROP_REASONS, REQUIRED_COLUMNS

CLEAN = {column: [0, 0] for column in REQUIRED_COLUMNS}


def drops(**counts: int) -> dict[str, int]:
    return {reason: counts.get(reason, 0) for reason in DROP_REASONS}


def test_a_shard_keeping_most_rows_passes_and_records_threshold_share_and_columns():
    record = quality.check_shard("s.parquet", 1000, 970, drops(missing_value=30), CLEAN, 0.5)
    assert record == {"min_rows_kept": 0.5, "kept_share": 0.97, "passed": True, "unparsed": CLEAN}


def test_a_shard_below_the_threshold_fails_with_its_share_and_drops_by_reason():
    dropped = drops(duplicate=550, implausible_fare=50)
    with pytest.raises(BadInputError) as err:
        quality.check_shard("raw shard s.parquet", 1000, 400, dropped, CLEAN, 0.5)
    assert str(err.value) == (
        "raw shard s.parquet fails the data quality gates: the shard kept 400 of 1000 rows (40.0%), "
        "below min_rows_kept=0.5; rows dropped by reason: duplicate=550, implausible_fare=50"
    )


def test_the_threshold_itself_passes():
    assert quality.check_shard("s", 10, 5, drops(duplicate=5), CLEAN, 0.5)["kept_share"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("rows_in", "expected"), [(0, "the shard has no rows"), (20, "kept none of 20 rows")]
)
def test_a_shard_keeping_no_row_fails_even_with_a_zero_threshold(rows_in, expected):
    with pytest.raises(BadInputError, match=expected):
        quality.check_shard("s", rows_in, 0, drops(implausible_fare=rows_in), CLEAN, 0.0)


@pytest.mark.parametrize(
    ("unparsed", "expected"),
    [
        (
            [20, 0],
            "required column 'fare' has no usable value in any of its 20 rows (20 missing, 0 malformed)",
        ),
        ([0, 20], "(0 missing, 20 malformed)"),
        ([12, 8], "(12 missing, 8 malformed)"),
    ],
    ids=["all-nan", "all-text", "mixed"],
)
def test_a_required_column_without_one_usable_value_is_named(unparsed, expected):
    columns = {**CLEAN, "fare": unparsed}
    with pytest.raises(BadInputError) as err:
        quality.check_shard(
            "s", 20, 0, drops(missing_value=unparsed[0], malformed_value=unparsed[1]), columns
        )
    assert expected in str(err.value)
    assert "the shard kept none of 20 rows" in str(err.value)


def test_a_required_column_with_one_usable_value_is_not_a_column_problem():
    columns = {**CLEAN, "fare": [19, 0]}
    with pytest.raises(BadInputError) as err:
        quality.check_shard("s", 20, 1, drops(missing_value=19), columns)
    assert "required column" not in str(err.value)
    assert "kept 1 of 20 rows (5.0%)" in str(err.value)


@pytest.mark.parametrize("threshold", [-0.1, 1.5, float("nan"), "0.5", True, None])
def test_a_threshold_outside_zero_to_one_is_refused_naming_it(threshold):
    with pytest.raises(BadInputError, match="min_rows_kept must be a number in"):
        quality.check_shard("s", 10, 10, drops(), CLEAN, threshold)
    with pytest.raises(BadInputError, match="min_rows_kept must be a number in"):
        quality.check_run([{"rows_in": 10, "rows_out": 10}], threshold)


def test_a_run_keeping_enough_overall_passes_and_records_it():
    shards = [{"rows_in": 100, "rows_out": 90}, {"rows_in": 100, "rows_out": 60}]
    assert quality.check_run(shards, 0.7) == {
        "min_rows_kept": 0.7,
        "kept_share": 0.75,
        "passed": True,
        "shards": 2,
    }


def test_a_run_keeping_too_little_overall_fails_naming_the_shards_that_kept_least():
    shards = [
        {"raw": "a.parquet", "rows_in": 100, "rows_out": 90, "dropped": drops(duplicate=10)},
        {
            "raw": "b.parquet",
            "rows_in": 300,
            "rows_out": 60,
            "dropped": drops(duplicate=40, missing_value=200),
        },
    ]
    with pytest.raises(BadInputError) as err:
        quality.check_run(shards, 0.5)
    assert str(err.value) == (
        "the run fails the data quality gates: its 2 shard(s) together kept 150 of 400 rows (37.5%), "
        "below min_rows_kept=0.5; rows dropped by reason: missing_value=200, duplicate=50; "
        "least kept: b.parquet kept 60 of 300, a.parquet kept 90 of 100"
    )


@pytest.mark.parametrize(
    ("rows_in", "expected"), [(0, "together have no rows"), (50, "together kept none of 50")]
)
def test_a_run_keeping_no_row_fails_whatever_the_threshold(rows_in, expected):
    with pytest.raises(BadInputError, match=expected):
        quality.check_run([{"rows_in": rows_in, "rows_out": 0}], 0.0)
