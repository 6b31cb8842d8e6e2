"""Cleaning and featurising raw ride records: plain pandas and numpy, no cluster, no storage.

A raw frame (``RAW_COLUMNS``, as read from a raw Parquet shard) becomes:

* ``features`` -- the kept rows' ``OUTPUT_COLUMNS``: ride_id (int64), ``FEATURE_COLUMNS`` and
  ``TARGET`` (float32), in input order;
* partial statistics -- per column count, sum, sum of squares, min, max (``column_stats``),
  which add up across partitions and shards (``combine_stats``) into the global mean and std
  training normalises with (``summarise_stats``);
* reason counts -- rows dropped per reason in ``DROP_REASONS`` (``dropped_by_reason``).

The whole transformation is ``label_rows``: every row gets its features and the code of the
first reason it is dropped for. It works on any slice of a shard; the one step that needs the
whole shard is de-duplication by ride_id, done beforehand on the ride_id column alone
(``duplicate_positions``) and passed in. ``featurise_frame_pandas`` is the single-threaded
reference of one whole frame; ``fanout.daskrun`` runs ``featurise_part`` on every partition of
a shard on the Dask workers, so the two cannot drift apart.

Importing this module costs numpy only; pandas is imported by the functions that use it, so a
DAG file may import it cheaply.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from fanout.errors import BadInputError

if TYPE_CHECKING:
    import pandas as pd

# -- the contract with training ----------------------------------------------------------------
FEATURE_COLUMNS: list[str] = [
    "distance_km",
    "log_distance_km",
    "duration_min",
    "log_duration_min",
    "speed_kmh",
    "hour_sin",
    "hour_cos",
    "dow_sin",
    "dow_cos",
    "is_weekend",
    "is_rush_hour",
    "is_night",
    "passengers",
    "pickup_x_km",
    "pickup_y_km",
    "dropoff_x_km",
    "dropoff_y_km",
    "zone_gap_km",
    "same_zone",
    "airport_trip",
    "payment_card",
    "payment_cash",
    "payment_app",
]
# Few distinct values: worth Parquet dictionary encoding (on continuous columns it costs CPU for nothing).
LOW_CARDINALITY_FEATURES = [
    "dow_sin",
    "dow_cos",
    "is_weekend",
    "is_rush_hour",
    "is_night",
    "passengers",
    "pickup_x_km",
    "pickup_y_km",
    "dropoff_x_km",
    "dropoff_y_km",
    "zone_gap_km",
    "same_zone",
    "airport_trip",
    "payment_card",
    "payment_cash",
    "payment_app",
]
TARGET = "fare"
ID_COLUMN = "ride_id"
OUTPUT_COLUMNS: list[str] = [ID_COLUMN, *FEATURE_COLUMNS, TARGET]
STATS_COLUMNS: list[str] = [*FEATURE_COLUMNS, TARGET]

FEATURES_VERSION = 3
"""Bump when the transformation or the output layout changes: committed shards of another version
are redone. 2: features written by the Dask workers as one Parquet file per partition. 3: a shard's
record keeps the data quality gates' outcome."""

RAW_COLUMNS: tuple[str, ...] = (
    "ride_id",
    "pickup_ts",
    "pickup_zone",
    "dropoff_zone",
    "distance_km",
    "duration_min",
    "passengers",
    "payment_type",
    "fare",
)

# Reasons a row is dropped, in priority order: a row is counted once, under the first that applies.
DROP_REASONS: tuple[str, ...] = (
    "duplicate",
    "missing_value",
    "malformed_value",
    "unknown_zone",
    "implausible_distance",
    "implausible_duration",
    "implausible_speed",
    "implausible_passengers",
    "implausible_fare",
)
_KEPT = 0  # reason code of a kept row; code i + 1 is DROP_REASONS[i]
_DUPLICATE = 1  # DROP_REASONS[0]: a duplicate is counted as such whatever else is wrong with it
_REASON_COLUMN = "_drop_reason"

# Raw columns no row can do without (passengers and payment_type have defaults). Per row, bit i
# of the two mask columns says REQUIRED_COLUMNS[i] was missing, or did not parse: counted per
# column (``unparsed_counts``), they tell a column with no usable value at all (``fanout.quality``).
_DEFAULTED_COLUMNS = frozenset({"passengers", "payment_type"})
REQUIRED_COLUMNS: tuple[str, ...] = tuple(c for c in RAW_COLUMNS if c not in _DEFAULTED_COLUMNS)
_MISSING_COLUMN = "_missing_mask"
_MALFORMED_COLUMN = "_malformed_mask"

# Physical limits of a real city ride; outside them a row is a recording error, not a rare trip.
DISTANCE_KM_RANGE = (0.05, 300.0)
DURATION_MIN_RANGE = (0.5, 360.0)
SPEED_KMH_RANGE = (1.0, 150.0)
PASSENGERS_RANGE = (1, 6)
FARE_RANGE = (2.0, 1000.0)
_NULL_MARKERS = ["", "n/a", "na", "nan", "null", "none", "-"]
_PAYMENT_TYPES = ("card", "cash", "app")

# -- the city: zone centroids (a target-free zone encoding) ----------------------------------------
_GRID_COLS, _GRID_ROWS, _GRID_SPACING_KM = 6, 4, 2.5
N_CITY_ZONES = _GRID_COLS * _GRID_ROWS
AIRPORT_ZONE = N_CITY_ZONES + 1
N_ZONES = AIRPORT_ZONE


def _zone_centroids() -> np.ndarray:
    """Row z holds zone z's (x, y) in km from the city centre; row 0 is unused (NaN)."""
    centroids = np.full((N_ZONES + 1, 2), np.nan)
    zone = np.arange(N_CITY_ZONES)
    centroids[1 : N_CITY_ZONES + 1, 0] = (zone % _GRID_COLS - (_GRID_COLS - 1) / 2) * _GRID_SPACING_KM
    centroids[1 : N_CITY_ZONES + 1, 1] = (zone // _GRID_COLS - (_GRID_ROWS - 1) / 2) * _GRID_SPACING_KM
    centroids[AIRPORT_ZONE] = (16.0, -11.0)
    return centroids


ZONE_CENTROIDS_KM = _zone_centroids()


def is_rush_hour(hour: np.ndarray, is_weekend: np.ndarray) -> np.ndarray:
    """Weekday rush hours (7-10 h, 16-19 h): a feature, and a surcharge in the synthetic fare."""
    return ~is_weekend & (((hour >= 7) & (hour < 10)) | ((hour >= 16) & (hour < 19)))


def is_night(hour: np.ndarray) -> np.ndarray:
    """Night hours (22-6 h): a feature, and a surcharge in the synthetic fare."""
    return (hour >= 22) | (hour < 6)


# ==============================================================================================
# Cleaning and features
# ==============================================================================================
def _parse_numbers(values: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(float64 values, missing, malformed) from a numeric or a text column.

    Text accepts a decimal comma ("3,5"); blanks and markers such as "n/a" count as missing,
    anything else that does not parse ("twelve") as malformed.
    """
    import pandas as pd

    if pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype):
        numbers = values.to_numpy(dtype=np.float64, na_value=np.nan, copy=True)
        return numbers, np.isnan(numbers), np.zeros(len(numbers), dtype=bool)
    text = values.astype("str").str.strip()
    missing = (text.isna() | text.str.lower().isin(_NULL_MARKERS)).to_numpy(dtype=bool)
    numbers = pd.to_numeric(text.str.replace(",", ".", regex=False), errors="coerce")
    numbers = numbers.to_numpy(dtype=np.float64, na_value=np.nan, copy=True)
    numbers[missing] = np.nan
    return numbers, missing, np.isnan(numbers) & ~missing


def _parse_timestamps(values: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(seconds since the epoch as float64, missing, malformed); wall-clock time, zone dropped."""
    import pandas as pd

    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        parsed = values
        missing = values.isna().to_numpy(dtype=bool)
    else:
        text = values.astype("str").str.strip()
        missing = (text.isna() | text.str.lower().isin(_NULL_MARKERS)).to_numpy(dtype=bool)
        try:
            parsed = pd.to_datetime(text, format="ISO8601", errors="coerce")
        except ValueError:  # mixed UTC offsets: normalise them instead of failing the shard
            parsed = pd.to_datetime(text, format="ISO8601", errors="coerce", utc=True)
    if getattr(parsed.dtype, "tz", None) is not None:
        parsed = parsed.dt.tz_localize(None)
    stamps = parsed.to_numpy(dtype="datetime64[s]")
    invalid = np.isnat(stamps)
    seconds = np.where(invalid, np.nan, stamps.astype(np.int64).astype(np.float64))
    return seconds, missing, invalid & ~missing


def _outside(values: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
    return ~((values >= bounds[0]) & (values <= bounds[1]))  # NaN counts as outside


def check_columns(columns: Iterable[str], source: str) -> None:
    """BadInputError naming every required raw column that ``source`` lacks."""
    present = set(columns)
    absent = [name for name in RAW_COLUMNS if name not in present]
    if absent:
        raise BadInputError(f"{source} is missing required column(s) {', '.join(absent)}")


def duplicate_positions(ride_id_parts: Sequence[pd.Series]) -> list[np.ndarray]:
    """Per part, the positions of rows whose ride_id already appeared earlier in the shard.

    ``ride_id_parts`` are the ride_id columns of a shard's consecutive parts, in file order; the
    first occurrence in file order is kept. Only this column crosses parts (8 bytes a row), so
    de-duplication needs no shuffle of the rows themselves.
    """
    import pandas as pd

    if not ride_id_parts:
        return []
    ids = pd.concat(list(ride_id_parts), ignore_index=True)
    repeated = (ids.duplicated(keep="first") & ids.notna()).to_numpy(dtype=bool)
    bounds = np.cumsum([0, *(len(part) for part in ride_id_parts)])
    return [np.flatnonzero(repeated[start:stop]) for start, stop in itertools.pairwise(bounds)]


def label_rows(raw: pd.DataFrame) -> pd.DataFrame:
    """Features for every raw row plus the code of the first reason it is dropped for (0 = kept).

    The whole transformation lives here, except de-duplication, which needs the whole shard:
    ``mark_duplicates`` then labels the repeated rows (``duplicate`` comes first among the
    reasons, so it replaces whatever other reason such a row had).
    """
    import pandas as pd

    check_columns(raw.columns, "raw frame")

    ride_id, id_missing, id_malformed = _parse_numbers(raw["ride_id"])
    seconds, ts_missing, ts_malformed = _parse_timestamps(raw["pickup_ts"])
    pickup, pickup_missing, pickup_malformed = _parse_numbers(raw["pickup_zone"])
    dropoff, dropoff_missing, dropoff_malformed = _parse_numbers(raw["dropoff_zone"])
    distance, distance_missing, distance_malformed = _parse_numbers(raw["distance_km"])
    duration, duration_missing, duration_malformed = _parse_numbers(raw["duration_min"])
    passengers, passengers_missing, passengers_malformed = _parse_numbers(raw["passengers"])
    fare, fare_missing, fare_malformed = _parse_numbers(raw[TARGET])
    passengers[passengers_missing] = 1.0  # the usual default when the driver did not key it in
    payment = raw["payment_type"].astype("str").str.strip().str.lower()

    with np.errstate(invalid="ignore", divide="ignore"):
        id_malformed |= ~id_missing & (ride_id != np.round(ride_id))
        pickup_known = (pickup >= 1) & (pickup <= N_ZONES) & (pickup == np.round(pickup))
        dropoff_known = (dropoff >= 1) & (dropoff <= N_ZONES) & (dropoff == np.round(dropoff))
        speed = distance / (duration / 60.0)
        missing = id_missing | ts_missing | pickup_missing | dropoff_missing
        missing |= distance_missing | duration_missing | fare_missing
        malformed = id_malformed | ts_malformed | pickup_malformed | dropoff_malformed
        malformed |= distance_malformed | duration_malformed | passengers_malformed | fare_malformed
        reason = np.select(
            [
                missing,
                malformed,
                ~(pickup_known & dropoff_known),
                _outside(distance, DISTANCE_KM_RANGE),
                _outside(duration, DURATION_MIN_RANGE),
                _outside(speed, SPEED_KMH_RANGE),
                _outside(passengers, PASSENGERS_RANGE) | (passengers != np.round(passengers)),
                _outside(fare, FARE_RANGE),
            ],
            np.arange(2, len(DROP_REASONS) + 1, dtype=np.int8),  # code 1, duplicate: mark_duplicates
            _KEPT,
        ).astype(np.int8)

        # Features are computed for every row (vectorised) and the dropped ones filtered later.
        days = np.floor(seconds / 86_400.0)
        hour = (seconds - days * 86_400.0) / 3_600.0
        weekday = np.mod(days + 3.0, 7.0)  # 1970-01-01 was a Thursday; Monday = 0
        is_weekend = weekday >= 5
        whole_hour = np.floor(hour)
        pickup_xy = ZONE_CENTROIDS_KM[np.where(pickup_known, pickup, 0).astype(np.int64)]
        dropoff_xy = ZONE_CENTROIDS_KM[np.where(dropoff_known, dropoff, 0).astype(np.int64)]
        features = {
            "distance_km": distance,
            "log_distance_km": np.log1p(distance),
            "duration_min": duration,
            "log_duration_min": np.log1p(duration),
            "speed_kmh": speed,
            "hour_sin": np.sin(2 * np.pi * hour / 24.0),
            "hour_cos": np.cos(2 * np.pi * hour / 24.0),
            "dow_sin": np.sin(2 * np.pi * weekday / 7.0),
            "dow_cos": np.cos(2 * np.pi * weekday / 7.0),
            "is_weekend": is_weekend,
            "is_rush_hour": is_rush_hour(whole_hour, is_weekend),
            "is_night": is_night(whole_hour),
            "passengers": passengers,
            "pickup_x_km": pickup_xy[:, 0],
            "pickup_y_km": pickup_xy[:, 1],
            "dropoff_x_km": dropoff_xy[:, 0],
            "dropoff_y_km": dropoff_xy[:, 1],
            "zone_gap_km": np.hypot(dropoff_xy[:, 0] - pickup_xy[:, 0], dropoff_xy[:, 1] - pickup_xy[:, 1]),
            "same_zone": pickup == dropoff,
            "airport_trip": (pickup == AIRPORT_ZONE) | (dropoff == AIRPORT_ZONE),
            **{f"payment_{kind}": (payment == kind).to_numpy(dtype=bool) for kind in _PAYMENT_TYPES},
        }
    columns = {ID_COLUMN: np.where(id_missing, -1, np.nan_to_num(ride_id)).astype(np.int64)}
    columns.update({name: np.asarray(features[name], dtype=np.float32) for name in FEATURE_COLUMNS})
    columns[TARGET] = fare.astype(np.float32)
    columns[_REASON_COLUMN] = reason
    parsed = {
        "ride_id": (id_missing, id_malformed),
        "pickup_ts": (ts_missing, ts_malformed),
        "pickup_zone": (pickup_missing, pickup_malformed),
        "dropoff_zone": (dropoff_missing, dropoff_malformed),
        "distance_km": (distance_missing, distance_malformed),
        "duration_min": (duration_missing, duration_malformed),
        "fare": (fare_missing, fare_malformed),
    }
    columns[_MISSING_COLUMN] = _bitmask([parsed[name][0] for name in REQUIRED_COLUMNS], len(raw))
    columns[_MALFORMED_COLUMN] = _bitmask([parsed[name][1] for name in REQUIRED_COLUMNS], len(raw))
    return pd.DataFrame(columns)


def _bitmask(flags: Sequence[np.ndarray], rows: int) -> np.ndarray:
    """One uint8 per row: bit i set where ``flags[i]`` is (at most 8 flags)."""
    mask = np.zeros(rows, dtype=np.uint8)
    for bit, flag in enumerate(flags):
        mask |= flag.astype(np.uint8) << np.uint8(bit)
    return mask


def unparsed_counts(labelled: pd.DataFrame) -> dict[str, list[int]]:
    """``{column: [rows missing, rows malformed]}`` for every column in ``REQUIRED_COLUMNS``.

    Counted over all rows of ``label_rows``'s result, duplicates included; the counts of two
    slices of a shard add up.
    """
    missing = labelled[_MISSING_COLUMN].to_numpy()
    malformed = labelled[_MALFORMED_COLUMN].to_numpy()
    return {
        name: [int(np.count_nonzero(missing & (1 << bit))), int(np.count_nonzero(malformed & (1 << bit)))]
        for bit, name in enumerate(REQUIRED_COLUMNS)
    }


def mark_duplicates(labelled: pd.DataFrame, duplicates: np.ndarray | None) -> pd.DataFrame:
    """``labelled`` with the rows at positions ``duplicates`` (``duplicate_positions``) labelled duplicates.

    A new frame: the input may be a result Dask still holds for a recomputation.
    """
    if duplicates is None or not len(duplicates):
        return labelled
    reasons = labelled[_REASON_COLUMN].to_numpy(copy=True)
    reasons[duplicates] = _DUPLICATE
    return labelled.assign(**{_REASON_COLUMN: reasons})


def split_labelled(labelled: pd.DataFrame) -> tuple[pd.DataFrame, dict, list[int]]:
    """(kept rows' ``OUTPUT_COLUMNS``, their ``column_stats``, rows per reason code) of ``label_rows``."""
    reasons = labelled[_REASON_COLUMN].to_numpy()
    features = labelled.loc[reasons == _KEPT, OUTPUT_COLUMNS].reset_index(drop=True)
    counts = np.bincount(reasons, minlength=len(DROP_REASONS) + 1)
    return features, column_stats(features), [int(count) for count in counts]


def featurise_part(
    raw: pd.DataFrame, duplicates: np.ndarray | None = None
) -> tuple[pd.DataFrame, dict, list[int]]:
    """One slice of a shard, whose rows at positions ``duplicates`` repeat earlier rides."""
    return split_labelled(mark_duplicates(label_rows(raw), duplicates))


def featurise_frame_pandas(raw: pd.DataFrame) -> tuple[pd.DataFrame, dict, dict[str, int]]:
    """Single-threaded reference: ``(features, column_stats, dropped_by_reason)`` of a whole raw frame."""
    check_columns(raw.columns, "raw frame")
    (duplicates,) = duplicate_positions([raw[ID_COLUMN]])
    features, stats, counts = featurise_part(raw, duplicates)
    return features, stats, dropped_by_reason(counts)


def dropped_by_reason(reason_counts: Iterable[Sequence[int]] | Sequence[int]) -> dict[str, int]:
    """``{reason: rows}`` for every reason in ``DROP_REASONS`` (zeros included).

    ``reason_counts`` is one list of rows per reason code (index 0 = kept), or several to add up.
    """
    lists = list(reason_counts)
    if lists and not isinstance(lists[0], Sequence):
        lists = [lists]
    totals = [sum(counts[code] for counts in lists) for code in range(len(DROP_REASONS) + 1)]
    return {reason: int(totals[code]) for code, reason in enumerate(DROP_REASONS, start=1)}


# -- statistics ------------------------------------------------------------------------------------
def column_stats(features: pd.DataFrame) -> dict[str, dict[str, float | int | None]]:
    """Mergeable per-column statistics: count, sum, sum of squares (float64), min, max.

    Parts and shards combine by adding count/sum/sum_sq and taking min/max (``combine_stats``);
    the global mean and (population) variance follow from the sums.
    """
    stats = {}
    for name in STATS_COLUMNS:
        values = features[name].to_numpy(dtype=np.float64)
        empty = len(values) == 0
        stats[name] = {
            "count": len(values),
            "sum": float(values.sum()),
            "sum_sq": float(np.square(values).sum()),  # not np.dot: BLAS threads spin on a busy machine
            "min": None if empty else float(values.min()),
            "max": None if empty else float(values.max()),
        }
    return stats


def combine_stats(partials: Iterable[dict]) -> dict[str, dict[str, float | int | None]]:
    """Add up several ``column_stats`` results, in order (the same order gives the same floats)."""
    combined = {
        name: {"count": 0, "sum": 0.0, "sum_sq": 0.0, "min": None, "max": None} for name in STATS_COLUMNS
    }
    for partial in partials:
        for name, total in combined.items():
            part = partial[name]
            total["count"] += int(part["count"])
            total["sum"] += float(part["sum"])
            total["sum_sq"] += float(part["sum_sq"])
            for key, pick in (("min", min), ("max", max)):
                if part[key] is not None:
                    total[key] = part[key] if total[key] is None else pick(total[key], part[key])
    return combined


def summarise_stats(combined: dict) -> dict[str, dict[str, float | int | None]]:
    """count, mean, std (population, ddof=0), min, max per column; std is 0 for a constant column."""
    summary = {}
    for name, total in combined.items():
        count = total["count"]
        mean = total["sum"] / count if count else None
        variance = max(total["sum_sq"] / count - mean * mean, 0.0) if count else None
        summary[name] = {
            "count": count,
            "mean": mean,
            "std": math.sqrt(variance) if variance is not None else None,
            "min": total["min"],
            "max": total["max"],
        }
    return summary
