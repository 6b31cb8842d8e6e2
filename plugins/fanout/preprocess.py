"""Preprocessing workload: a synthetic taxi-ride dataset, cleaned and featurised shard by shard.

Flow (each step is one Airflow task in the DAG; nothing here imports Airflow):

1. ``generate_dataset`` writes deterministic raw Parquet shards with realistic dirt.
2. ``list_shards`` names the shards to fan out over.
3. ``featurise_shard`` cleans and featurises one shard with Dask and commits
   ``<unit>/features.parquet`` and ``<unit>/stats.json``.
4. ``merge_stats`` (fan-in) combines the per-shard statistics and writes ``manifest.json``,
   the contract with training: it lists the feature files, ``FEATURE_COLUMNS``, ``TARGET``
   and the global mean/std to normalise with.

The transformation is written once, as a per-partition pandas function
(``_label_partition``); ``clean_and_featurise`` applies it to a pandas DataFrame directly
or to every partition of a Dask DataFrame, so the single-threaded reference
(``featurise_frame_pandas``) and the parallel path cannot drift apart.

Outputs (paths relative to the store):

* ``<prefix>/shard-NNNNN.parquet`` + ``_SUCCESS.json`` (params, rows, injected dirt counts);
* ``<unit>/features.parquet`` -- ``OUTPUT_COLUMNS``: ride_id (int64), ``FEATURE_COLUMNS`` and
  ``TARGET`` (float32), input order; ``<unit>/stats.json`` -- per column count, sum, sum_sq,
  min, max; ``_SUCCESS.json`` also records rows_in, rows_out, dropped (rows per reason in
  ``DROP_REASONS``), stats, raw_sha256 and features_version;
* ``<out>/manifest.json`` -- ``feature_columns``, ``target``, ``stats`` (count, mean, std with
  ddof=0, min, max per column), ``shards`` (unit, path, rows_in, rows_out, dropped, sha256),
  ``rows_in``, ``rows_out``, ``dropped``.

pandas, pyarrow and dask are imported inside the functions that use them, so a DAG file may
import this module cheaply.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import multiprocessing
import time
from collections.abc import Generator, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from fanout.compute import available_cpus
from fanout.errors import BadInputError
from fanout.settings import settings
from fanout.storage import MANIFEST, ArtifactStore

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

log = logging.getLogger(__name__)

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
_LOW_CARDINALITY_FEATURES = [
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

FEATURES_VERSION = 1
"""Bump when the transformation changes: committed shards of another version are redone."""
GENERATOR_VERSION = 1
"""Part of a dataset's params, so a generator change never silently mixes with old shards."""

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
_REASON_COLUMN = "_drop_reason"

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
# 1. Synthetic raw data
# ==============================================================================================
_DATA_START = np.datetime64("2026-01-01T00:00:00", "s")
_DATA_DAYS = 304  # through October
_HOUR_WEIGHTS = np.array(
    [3, 2, 1.5, 1, 1, 1.5, 3, 6, 8, 7, 5, 5, 5.5, 5.5, 5.5, 6, 7, 8, 8, 7, 6, 5.5, 5, 4], dtype=float
)
_PASSENGER_WEIGHTS = np.array([0.68, 0.15, 0.07, 0.05, 0.03, 0.02])
_PAYMENT_WEIGHTS = np.array([0.62, 0.28, 0.10])
_PAYMENT_VARIANTS = ("CARD", "Cash ", " App")  # inconsistent spelling of the same three values
_BAD_DURATIONS = ("twelve", "12 min", "?", "1O.5")
_BAD_TIMESTAMPS = ("2026-02-30 10:00:00", "31/01/2026 10:00", "yesterday", "2026-13-01 25:61:00")
_UNKNOWN_ZONES = (0, 99, 264)
_DROPPING_DIRT = (
    "missing",
    "malformed_number",
    "malformed_timestamp",
    "unknown_zone",
    "outlier_distance",
    "outlier_duration",
    "outlier_speed",
    "outlier_passengers",
    "outlier_fare",
    "duplicate",
)
_MISSING_CANDIDATES = ("pickup_ts", "pickup_zone", "dropoff_zone", "distance_km", "duration_min", "fare")


def _zone_weights() -> np.ndarray:
    """Central zones are busiest; the airport gets a steady 5 %."""
    radius = np.hypot(ZONE_CENTROIDS_KM[1:AIRPORT_ZONE, 0], ZONE_CENTROIDS_KM[1:AIRPORT_ZONE, 1])
    city = np.exp(-radius / 5.0)
    city = 0.95 * city / city.sum()
    return np.append(city, 0.05)


def _true_fare(distance, duration, hour, is_weekend, pickup_zone, dropoff_zone, passengers) -> np.ndarray:
    """Metered fare before noise: tiered distance, time, and surcharges (nonlinear on purpose)."""
    tiered = 1.8 * np.minimum(distance, 12.0) + 1.2 * np.clip(distance - 12.0, 0.0, None)
    surcharge = (
        2.0 * is_night(hour)
        + 1.5 * is_rush_hour(hour, is_weekend)
        + 12.5 * ((pickup_zone == AIRPORT_ZONE) | (dropoff_zone == AIRPORT_ZONE))
        + 4.0 * (passengers >= 5)
    )
    return 3.0 + tiered + 0.40 * duration + surcharge


def _pick(rng: np.random.Generator, mask: np.ndarray, choices: Sequence[str | None]) -> pa.Array:
    """One of ``choices`` for every True in ``mask``: the replacements for ``pc.replace_with_mask``."""
    import pyarrow as pa

    return pa.array([choices[i] for i in rng.integers(0, len(choices), int(mask.sum()))], pa.string())


def synthesise_shard(seed: int, shard_index: int, rows: int, dirt: float) -> tuple[pa.Table, dict[str, int]]:
    """One raw shard as an Arrow table, plus how many rows got each kind of injected dirt.

    Fully vectorised (numpy + Arrow compute); the same arguments give the same table.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    rng = np.random.default_rng([seed, shard_index])
    rate = dirt / len(_DROPPING_DIRT)
    n_duplicates = round(rows * rate)
    n = rows - n_duplicates

    zone_ids = np.arange(1, N_ZONES + 1)
    weights = _zone_weights()
    pickup_zone = rng.choice(zone_ids, size=n, p=weights)
    dropoff_zone = np.where(rng.random(n) < 0.2, pickup_zone, rng.choice(zone_ids, size=n, p=weights))
    gap = ZONE_CENTROIDS_KM[dropoff_zone] - ZONE_CENTROIDS_KM[pickup_zone]
    distance = 1.3 * np.hypot(gap[:, 0], gap[:, 1]) + rng.lognormal(np.log(1.2), 0.6, n)

    day = rng.integers(0, _DATA_DAYS, n)
    hour = rng.choice(24, size=n, p=_HOUR_WEIGHTS / _HOUR_WEIGHTS.sum())
    seconds = day * 86_400 + hour * 3_600 + rng.integers(0, 3_600, n)
    weekday = (day + (_DATA_START.astype("datetime64[D]").astype(np.int64) + 3)) % 7  # Monday = 0
    is_weekend = weekday >= 5

    speed = np.select([is_rush_hour(hour, is_weekend), is_night(hour)], [17.0, 35.0], 25.0)
    speed = speed * np.where(is_weekend, 1.15, 1.0) * rng.lognormal(0.0, 0.25, n)
    duration = distance / speed * 60.0 + rng.gamma(2.0, 0.75, n)  # plus pickup/drop-off time
    passengers = rng.choice(np.arange(1, 7), size=n, p=_PASSENGER_WEIGHTS)
    payment = rng.choice(3, size=n, p=_PAYMENT_WEIGHTS)
    fare = _true_fare(distance, duration, hour, is_weekend, pickup_zone, dropoff_zone, passengers)
    fare = np.maximum(fare * rng.lognormal(0.0, 0.06, n) + rng.normal(0.0, 0.4, n), 3.0)

    # -- dirt that must be dropped: each kind hits an independent random subset of rows --------
    def hit() -> np.ndarray:
        return rng.random(n) < rate

    injected: dict[str, int] = {}
    passengers = passengers.astype(float)
    pickup_zone, dropoff_zone = pickup_zone.astype(float), dropoff_zone.astype(float)

    rows_hit = hit()
    distance[rows_hit] = np.select(
        [rng.random(n)[rows_hit] < 0.4, rng.random(n)[rows_hit] < 0.3],
        [-rng.uniform(0.1, 50.0, n)[rows_hit], 0.0],
        rng.uniform(2_000.0, 20_000.0, n)[rows_hit],
    )
    injected["outlier_distance"] = int(rows_hit.sum())

    rows_hit = hit()
    duration[rows_hit] = np.select(
        [rng.random(n)[rows_hit] < 0.4, rng.random(n)[rows_hit] < 0.3],
        [-rng.uniform(1.0, 60.0, n)[rows_hit], 0.0],
        rng.uniform(1_000.0, 100_000.0, n)[rows_hit],
    )
    injected["outlier_duration"] = int(rows_hit.sum())

    rows_hit = hit()  # each value plausible alone, impossible together (80 km in 2 minutes)
    distance[rows_hit] = rng.uniform(40.0, 120.0, n)[rows_hit]
    duration[rows_hit] = rng.uniform(1.0, 4.0, n)[rows_hit]
    injected["outlier_speed"] = int(rows_hit.sum())

    rows_hit = hit()
    passengers[rows_hit] = np.array([0.0, 9.0, 12.0])[rng.integers(0, 3, n)[rows_hit]]
    injected["outlier_passengers"] = int(rows_hit.sum())

    rows_hit = hit()
    fare[rows_hit] = np.where(
        rng.random(n)[rows_hit] < 0.5,
        -rng.uniform(1.0, 50.0, n)[rows_hit],
        rng.uniform(5e3, 5e4, n)[rows_hit],
    )
    injected["outlier_fare"] = int(rows_hit.sum())

    rows_hit = hit()
    bad_zone = np.array(_UNKNOWN_ZONES, dtype=float)[rng.integers(0, len(_UNKNOWN_ZONES), n)]
    on_pickup = rng.random(n) < 0.5
    pickup_zone = np.where(rows_hit & on_pickup, bad_zone, pickup_zone)
    dropoff_zone = np.where(rows_hit & ~on_pickup, bad_zone, dropoff_zone)
    injected["unknown_zone"] = int(rows_hit.sum())

    # -- text columns, with formatting dirt; some of it (decimal commas, casing) is recoverable ----
    duration_text = pc.cast(pa.array(np.round(duration, 2)), pa.string())
    comma = rng.random(n) < rate
    duration_text = pc.if_else(comma, pc.replace_substring(duration_text, ".", ","), duration_text)
    rows_hit = hit()
    duration_text = pc.replace_with_mask(duration_text, rows_hit, _pick(rng, rows_hit, _BAD_DURATIONS))
    injected["malformed_number"] = int(rows_hit.sum())

    timestamps = (_DATA_START + seconds).astype("datetime64[s]")
    ts_text = pc.strftime(pa.array(timestamps), format="%Y-%m-%d %H:%M:%S")
    rows_hit = hit()
    ts_text = pc.replace_with_mask(ts_text, rows_hit, _pick(rng, rows_hit, _BAD_TIMESTAMPS))
    injected["malformed_timestamp"] = int(rows_hit.sum())

    payment_text = pc.take(pa.array(_PAYMENT_TYPES), pa.array(payment))
    variant = rng.random(n) < rate
    payment_text = pc.if_else(variant, pc.take(pa.array(_PAYMENT_VARIANTS), pa.array(payment)), payment_text)

    # -- missing values: a null (or a null marker) in one required column per hit row -------------
    rows_hit = hit()
    column = rng.integers(0, len(_MISSING_CANDIDATES), n)
    missing = {name: rows_hit & (column == i) for i, name in enumerate(_MISSING_CANDIDATES)}
    injected["missing"] = int(rows_hit.sum())
    distance[missing["distance_km"]] = np.nan
    fare[missing["fare"]] = np.nan
    pickup_zone[missing["pickup_zone"]] = np.nan
    dropoff_zone[missing["dropoff_zone"]] = np.nan
    ts_text = pc.if_else(missing["pickup_ts"], pa.scalar(None, pa.string()), ts_text)
    duration_text = pc.replace_with_mask(
        duration_text,
        missing["duration_min"],
        _pick(rng, missing["duration_min"], [None, "n/a", ""]),
    )
    # Optional columns: a missing passenger count is imputed, a missing payment type is "unknown".
    passengers[rng.random(n) < rate] = np.nan
    payment_text = pc.if_else(rng.random(n) < rate, pa.scalar(None, pa.string()), payment_text)

    def ints(values: np.ndarray, type_: pa.DataType) -> pa.Array:
        nulls = np.isnan(values)
        return pa.array(np.where(nulls, 0, values).astype(np.int64), type=type_, mask=nulls)

    table = pa.table(
        {
            "ride_id": pa.array(shard_index * 1_000_000_000 + np.arange(1, n + 1), pa.int64()),
            "pickup_ts": ts_text,
            "pickup_zone": ints(pickup_zone, pa.int16()),
            "dropoff_zone": ints(dropoff_zone, pa.int16()),
            "distance_km": pa.array(np.round(distance, 2), pa.float64(), from_pandas=True),
            "duration_min": duration_text,
            "passengers": ints(passengers, pa.int8()),
            "payment_type": payment_text,
            "fare": pa.array(np.round(fare, 2), pa.float64(), from_pandas=True),
        }
    )
    # Re-sent records: exact copies, scattered through the file like the originals.
    order = np.concatenate([np.arange(n), rng.integers(0, n, n_duplicates)])
    injected["duplicate"] = n_duplicates
    return table.take(pa.array(order[rng.permutation(rows)])), injected


def _dataset_manifest_params(n_shards: int, rows_per_shard: int, seed: int, dirt: float, row_group_rows: int):
    if not isinstance(n_shards, int) or n_shards < 1:
        raise BadInputError(f"n_shards must be a positive integer, got {n_shards!r}")
    if not isinstance(rows_per_shard, int) or not 1 <= rows_per_shard < 1_000_000_000:
        raise BadInputError(f"rows_per_shard must be an integer in [1, 1e9), got {rows_per_shard!r}")
    if not isinstance(seed, int) or seed < 0:
        raise BadInputError(f"seed must be a non-negative integer, got {seed!r}")
    if not 0.0 <= float(dirt) <= 0.5:
        raise BadInputError(f"dirt must be a fraction in [0, 0.5], got {dirt!r}")
    if not isinstance(row_group_rows, int) or row_group_rows < 1:
        raise BadInputError(f"row_group_rows must be a positive integer, got {row_group_rows!r}")
    return {
        "n_shards": n_shards,
        "rows_per_shard": rows_per_shard,
        "seed": seed,
        "dirt": float(dirt),
        "row_group_rows": row_group_rows,
        "generator_version": GENERATOR_VERSION,
    }


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


def generate_dataset(
    store: ArtifactStore,
    prefix: str,
    *,
    n_shards: int,
    rows_per_shard: int,
    seed: int,
    dirt: float = 0.03,
    row_group_rows: int = 50_000,
) -> dict:
    """Write ``prefix/shard-NNNNN.parquet`` raw shards and commit the dataset manifest last.

    Deterministic: the same parameters give byte-identical shards. Idempotent: a prefix
    already committed with the same parameters is returned as is (``skipped=True``); one
    committed with different parameters raises BadInputError rather than being overwritten.
    ``row_group_rows`` sets the Parquet row-group size, the unit Dask parallelises over.
    """
    import pyarrow.parquet as pq

    params = _dataset_manifest_params(n_shards, rows_per_shard, seed, dirt, row_group_rows)
    names = [shard_name(i) for i in range(n_shards)]
    existing = store.verified(prefix)
    if existing is not None:
        if existing.get("params") != params:
            raise BadInputError(
                f"dataset {store.uri(prefix)} already exists with params {existing.get('params')}; "
                f"refusing to overwrite it with {params} (use another prefix)"
            )
        return _dataset_summary(prefix, names, existing, skipped=True)

    store.invalidate(prefix)  # an interrupted earlier attempt is regenerated from scratch

    def write_shard(index: int) -> dict[str, int]:
        table, injected = synthesise_shard(seed, index, rows_per_shard, float(dirt))
        with store.staged(f"{prefix}/{names[index]}") as tmp:
            pq.write_table(table, tmp, row_group_size=row_group_rows, compression="zstd")
        return injected

    # numpy and Arrow release the GIL for the heavy parts, so threads overlap usefully.
    with ThreadPoolExecutor(max_workers=min(n_shards, available_cpus())) as pool:
        per_shard = list(pool.map(write_shard, range(n_shards)))
    injected = {kind: sum(shard[kind] for shard in per_shard) for kind in _DROPPING_DIRT}
    manifest = store.commit(prefix, names, params=params, rows=n_shards * rows_per_shard, injected=injected)
    log.info("generated %d shards x %d rows under %s", n_shards, rows_per_shard, store.uri(prefix))
    return _dataset_summary(prefix, names, manifest, skipped=False)


def _dataset_summary(prefix: str, names: list[str], manifest: dict, *, skipped: bool) -> dict:
    return {
        "prefix": prefix,
        "shards": [f"{prefix}/{name}" for name in names],
        "rows": manifest["rows"],
        "params": manifest["params"],
        "skipped": skipped,
    }


def list_shards(store: ArtifactStore, prefix: str) -> list[str]:
    """Shard paths (relative to the store) of a dataset, in order.

    From the dataset manifest when there is one; otherwise every ``*.parquet`` directly under
    ``prefix`` (a user-provided dataset). The manifest is read, not re-verified: hashing every
    shard here would read the whole dataset, and each shard task validates its own input.
    """
    try:
        manifest = store.read_json(f"{prefix}/{MANIFEST}")
    except FileNotFoundError:
        names = [n for n in store.listdir(prefix) if n.endswith(".parquet") and not n.startswith(".")]
    except ValueError as exc:
        where = store.uri(f"{prefix}/{MANIFEST}")
        raise BadInputError(f"dataset manifest {where} is not valid JSON: {exc}") from None
    else:
        names = sorted(n for n in manifest.get("files", {}) if n.endswith(".parquet"))
    if not names:
        raise BadInputError(f"no Parquet shards under {store.uri(prefix)}")
    return [f"{prefix}/{name}" for name in names]


# ==============================================================================================
# 2. Cleaning and features: one per-partition function, applied by pandas and by Dask
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


def _label_partition(
    raw: pd.DataFrame,
    duplicate_positions: dict[int, np.ndarray] | None = None,
    partition_info: dict | None = None,
) -> pd.DataFrame:
    """Features for every raw row plus the reason code it is dropped for (0 = kept).

    The whole transformation lives here. ``duplicate_positions`` maps a partition number to
    the row positions that repeat a ride_id seen earlier in the shard; Dask fills in
    ``partition_info`` so each partition finds its own.
    """
    import pandas as pd

    number = partition_info["number"] if partition_info else 0
    is_duplicate = np.zeros(len(raw), dtype=bool)
    if duplicate_positions:
        is_duplicate[duplicate_positions.get(number, [])] = True

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
                is_duplicate,
                missing,
                malformed,
                ~(pickup_known & dropoff_known),
                _outside(distance, DISTANCE_KM_RANGE),
                _outside(duration, DURATION_MIN_RANGE),
                _outside(speed, SPEED_KMH_RANGE),
                _outside(passengers, PASSENGERS_RANGE) | (passengers != np.round(passengers)),
                _outside(fare, FARE_RANGE),
            ],
            np.arange(1, len(DROP_REASONS) + 1, dtype=np.int8),
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
    return pd.DataFrame(columns)


def _duplicate_positions(ride_id_parts: Sequence[pd.Series]) -> dict[int, np.ndarray]:
    """Per partition, the positions of rows whose ride_id already appeared earlier in the shard.

    Only the ride_id column crosses partitions (a few MB per million rows), so de-duplication
    needs no shuffle, and the first occurrence in file order wins exactly as in pandas.
    """
    import pandas as pd

    if not ride_id_parts:
        return {}
    ids = pd.concat(list(ride_id_parts), ignore_index=True)
    repeated = (ids.duplicated(keep="first") & ids.notna()).to_numpy(dtype=bool)
    bounds = np.cumsum([0, *(len(part) for part in ride_id_parts)])
    return {
        number: np.flatnonzero(repeated[start:stop])
        for number, (start, stop) in enumerate(itertools.pairwise(bounds))
        if repeated[start:stop].any()
    }


def _check_columns(columns: Iterable[str], source: str) -> None:
    absent = [name for name in RAW_COLUMNS if name not in set(columns)]
    if absent:
        raise BadInputError(f"{source} is missing required column(s) {', '.join(absent)}")


def _label_rows(raw):
    """Every raw row with its features and drop-reason code: pandas, or lazily per Dask partition.

    De-duplication by ride_id is the one cross-partition step: only the ride_id column is
    gathered (a few MB per million rows, no shuffle), and each partition is told which of its
    rows repeat an earlier one, so the first occurrence in file order wins exactly as in pandas.
    """
    import pandas as pd

    _check_columns(raw.columns, "raw frame")
    if isinstance(raw, pd.DataFrame):
        id_parts = [raw[ID_COLUMN]]
    else:
        import dask

        id_parts = dask.compute(*raw[ID_COLUMN].to_delayed())  # reads only ride_id from Parquet
    return per_partition(raw, _label_partition, _duplicate_positions(id_parts))


def _split_labelled(labelled: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series]:
    """(kept rows' ``OUTPUT_COLUMNS``, their partial stats, rows per reason) of a labelled frame."""
    kept = labelled[_REASON_COLUMN].to_numpy() == _KEPT
    features = labelled.loc[kept, OUTPUT_COLUMNS].reset_index(drop=True)
    return features, _stats_frame(features), _count_reasons(labelled[_REASON_COLUMN])


def clean_and_featurise(raw):
    """Clean and featurise a raw frame: ``(features, reason_counts)``.

    ``raw`` is a pandas or a Dask DataFrame and the results are of the same kind (Dask ones
    are lazy). ``features`` has ``OUTPUT_COLUMNS`` (ride_id, float32 ``FEATURE_COLUMNS``,
    float32 ``TARGET``) in input order; ``reason_counts`` holds rows per reason code, turned
    into ``{reason: rows}`` by ``dropped_by_reason``.

    The transformation is written once, in ``_label_partition``: applied to the whole pandas
    frame, or with ``map_partitions`` to each Dask partition. ``featurise_frame_pandas`` and
    ``featurise_shard`` run the same two steps (``_label_rows``, then ``_split_labelled`` per
    partition); the shard path just streams the partitions to disk as they finish.
    """
    labelled = _label_rows(raw)
    features = labelled[labelled[_REASON_COLUMN] == _KEPT][OUTPUT_COLUMNS]
    # Counted per partition and summed by dropped_by_reason: value_counts would shuffle in Dask.
    return features, per_partition(labelled[_REASON_COLUMN], _count_reasons)


def per_partition(frame, func, *args):
    """``func(frame, *args)`` for a pandas object, or applied to every partition of a Dask one.

    ``func`` must also accept the empty pandas ``meta`` alone (no ``args``), from which Dask
    learns the output's columns and dtypes.
    """
    import pandas as pd

    if isinstance(frame, pd.DataFrame | pd.Series):
        return func(frame, *args)
    return frame.map_partitions(func, *args, meta=func(frame._meta))


def _count_reasons(reasons: pd.Series) -> pd.Series:
    """Rows per reason code (index 0 = kept) of one partition."""
    import pandas as pd

    return pd.Series(np.bincount(reasons.to_numpy(), minlength=len(DROP_REASONS) + 1), dtype=np.int64)


def dropped_by_reason(reason_counts: pd.Series) -> dict[str, int]:
    """``{reason: rows}`` for every reason in ``DROP_REASONS`` (zeros included), summed over partitions."""
    totals = reason_counts.groupby(level=0).sum()
    return {reason: int(totals.get(code, 0)) for code, reason in enumerate(DROP_REASONS, start=1)}


_STAT_AGGREGATES = {"count": "sum", "sum": "sum", "sum_sq": "sum", "min": "min", "max": "max"}


def _stats_frame(features: pd.DataFrame) -> pd.DataFrame:
    """Partial statistics of a frame (or one partition): a row per column, float64 accumulators."""
    import pandas as pd

    rows = {}
    for name in STATS_COLUMNS:
        values = features[name].to_numpy(dtype=np.float64)
        empty = len(values) == 0
        rows[name] = (
            len(values),
            values.sum(),
            np.square(values).sum(),  # not np.dot: BLAS threads spin on a busy machine
            np.nan if empty else values.min(),
            np.nan if empty else values.max(),
        )
    return pd.DataFrame.from_dict(rows, orient="index", columns=list(_STAT_AGGREGATES), dtype=np.float64)


def _combine_stats_frames(partials: pd.DataFrame) -> dict[str, dict[str, float | int | None]]:
    """Add up partial statistics (several rows per column) into the JSON form of ``column_stats``."""
    combined = partials.groupby(level=0, sort=False).agg(_STAT_AGGREGATES).reindex(STATS_COLUMNS)
    return {
        name: {
            "count": int(row["count"]),
            "sum": float(row["sum"]),
            "sum_sq": float(row["sum_sq"]),
            "min": None if math.isnan(row["min"]) else float(row["min"]),
            "max": None if math.isnan(row["max"]) else float(row["max"]),
        }
        for name, row in combined.fillna({"count": 0, "sum": 0.0, "sum_sq": 0.0}).iterrows()
    }


def column_stats(features: pd.DataFrame) -> dict[str, dict[str, float | int | None]]:
    """Mergeable per-column statistics: count, sum, sum of squares (float64), min, max.

    Shards combine by adding count/sum/sum_sq and taking min/max (``combine_stats``); the
    global mean and (population) variance follow from the sums.
    """
    return _combine_stats_frames(_stats_frame(features))


def combine_stats(partials: Iterable[dict]) -> dict[str, dict[str, float | int | None]]:
    """Combine several ``column_stats`` results (one per shard) into one of the same form."""
    import pandas as pd

    frames = [
        pd.DataFrame.from_dict(partial, orient="index").reindex(STATS_COLUMNS).astype(np.float64)
        for partial in partials
    ]
    empty = pd.DataFrame(index=STATS_COLUMNS, columns=list(_STAT_AGGREGATES), dtype=np.float64)
    return _combine_stats_frames(pd.concat(frames) if frames else empty)


def featurise_frame_pandas(raw: pd.DataFrame) -> tuple[pd.DataFrame, dict, dict[str, int]]:
    """Single-threaded pandas reference: ``(features, stats, dropped)`` for a raw DataFrame.

    Exactly the per-partition steps of ``featurise_shard``, with the whole frame as one partition.
    """
    features, partial_stats, reason_counts = _split_labelled(_label_rows(raw))
    return features, _combine_stats_frames(partial_stats), dropped_by_reason(reason_counts)


# ==============================================================================================
# 3. One shard on Dask
# ==============================================================================================
FEATURES_FILE = "features.parquet"
STATS_FILE = "stats.json"
FEATURES_ROW_GROUP_ROWS = 100_000


def _is_corrupt_parquet(exc: BaseException) -> bool:
    """Whether pyarrow failed on the bytes themselves, which no retry can fix.

    pyarrow reports undecodable data as ``ArrowInvalid`` (bad footer, "magic bytes not found")
    or as a bare ``OSError`` without an errno ("Unexpected end of stream", a failed
    decompression). Real I/O failures surface as the file object's own exception: an errno,
    or a subclass such as ConnectionError or FileNotFoundError, and stay retryable.
    """
    import pyarrow as pa

    if isinstance(exc, pa.ArrowInvalid | pa.ArrowNotImplementedError | pa.ArrowTypeError):
        return True
    return type(exc) is OSError and exc.errno is None


def _read_row_groups(
    row_groups: tuple[int, ...], fs, path: str, uri: str, columns: list[str] | None = None
) -> pd.DataFrame:
    """One Dask partition: some row groups of the raw shard (``columns`` lets Dask project)."""
    import pyarrow.parquet as pq

    try:
        with fs.open(path, "rb") as handle:
            table = pq.ParquetFile(handle).read_row_groups(
                list(row_groups), columns=list(columns or RAW_COLUMNS), use_threads=False
            )
    except Exception as exc:
        if _is_corrupt_parquet(exc):
            raise BadInputError(f"raw shard {uri} is corrupt (row groups {row_groups}): {exc}") from None
        raise
    return table.to_pandas()


def _open_raw_shard(store: ArtifactStore, raw_rel: str) -> pq.FileMetaData:
    """The shard's Parquet footer; BadInputError naming the file or column if it is unusable."""
    import pyarrow.parquet as pq

    uri = store.uri(raw_rel)
    try:
        with store.fs.open(store.path(raw_rel), "rb") as handle:
            metadata = pq.ParquetFile(handle).metadata
    except FileNotFoundError:
        raise BadInputError(f"raw shard {uri} does not exist") from None
    except Exception as exc:
        if _is_corrupt_parquet(exc):
            raise BadInputError(f"raw shard {uri} is not a readable Parquet file: {exc}") from None
        raise
    _check_columns(metadata.schema.names, f"raw shard {uri}")
    return metadata


def _plan_partitions(metadata: pq.FileMetaData, target_rows: int) -> list[tuple[int, ...]]:
    """Consecutive row groups packed into partitions of about ``target_rows`` rows."""
    plan: list[tuple[int, ...]] = []
    current: list[int] = []
    rows = 0
    for index in range(metadata.num_row_groups):
        current.append(index)
        rows += metadata.row_group(index).num_rows
        if rows >= target_rows:
            plan.append(tuple(current))
            current, rows = [], 0
    if current:
        plan.append(tuple(current))
    return plan


@contextlib.contextmanager
def dask_client(
    scheduler_address: str | None = None, cpus: int | None = None
) -> Generator[tuple[Any, int], None, None]:
    """Where Dask runs for the duration of a block: yields ``(client or None, parallel tasks)``.

    An external scheduler (argument, else ``DASK_SCHEDULER_ADDRESS``) is used as is; only the
    client is closed afterwards. Otherwise a LocalCluster sized to ``cpus`` (default
    ``available_cpus()``) of single-threaded worker *processes*: the pandas work holds the GIL,
    so threads would not run in parallel. With one CPU there is nothing to run in parallel, so
    the work runs synchronously in this process (client None) and no start-up is paid. A
    daemonic parent process may not start children, so it gets a threaded cluster instead.
    """
    import dask
    from distributed import Client, LocalCluster

    address = scheduler_address or settings().dask_scheduler_address
    if address:
        with Client(address) as client:
            yield client, max(1, sum(client.nthreads().values()))
        return
    cpus = max(1, int(cpus or available_cpus()))
    if cpus == 1:
        with dask.config.set(scheduler="synchronous"):
            yield None, 1
        return
    processes = not multiprocessing.current_process().daemon
    with (
        _quiet_logger("distributed", logging.ERROR),
        LocalCluster(
            n_workers=cpus if processes else 1,
            threads_per_worker=1 if processes else cpus,
            processes=processes,
            dashboard_address=None,
            # Any free local port: parallel tasks on one host would otherwise race for 8787.
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
            silence_logs=logging.ERROR,  # the workers' own handlers
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client, cpus


@contextlib.contextmanager
def _quiet_logger(name: str, level: int) -> Generator[None, None, None]:
    """Raise a logger's level for the duration of a block.

    The in-process scheduler logs every worker's start and stop at INFO, which would drown the
    task log; ``silence_logs`` only reaches the ``distributed`` logger's own handlers, not the
    root handlers Airflow installs.
    """
    logger = logging.getLogger(name)
    previous = logger.level
    logger.setLevel(max(level, logger.getEffectiveLevel()))
    try:
        yield
    finally:
        logger.setLevel(previous)


def _raw_frame(
    store: ArtifactStore, raw_rel: str, metadata: pq.FileMetaData, workers: int, partition_rows: int
):
    """The raw shard as a Dask DataFrame whose partitions the workers read themselves."""
    import dask.dataframe as dd

    total = metadata.num_rows
    target_rows = partition_rows  # bounds memory per task
    if workers > 1:  # at least two tasks per worker, so none idles while another finishes a big one
        target_rows = max(1, min(partition_rows, math.ceil(total / (2 * workers))))
    plan = _plan_partitions(metadata, target_rows) or [()]
    uri = store.uri(raw_rel)
    if len(plan) == 1 and total > target_rows:
        # A single huge row group cannot be split on read: read it here and scatter slices.
        frame = _read_row_groups(plan[0], store.fs, store.path(raw_rel), uri)
        return dd.from_pandas(frame, npartitions=math.ceil(total / target_rows), sort=False)
    return dd.from_map(
        _read_row_groups,
        plan,
        fs=store.fs,
        path=store.path(raw_rel),
        uri=uri,
        meta=metadata.schema.to_arrow_schema().empty_table().select(list(RAW_COLUMNS)).to_pandas(),
        label="read-raw-shard",
        enforce_metadata=False,
    )


def _split_partitions_in_order(client, raw) -> Iterator[tuple[pd.DataFrame, pd.DataFrame, pd.Series]]:
    """``_split_labelled`` of every partition of ``raw``, yielded in partition order.

    With a client all partitions are submitted at once and each result is yielded as soon as it
    and those before it are done, so the caller writes partition i while the workers still
    compute the later ones: gathering and encoding overlap the parallel work.
    """
    import dask

    parts = [dask.delayed(_split_labelled, pure=True)(part) for part in _label_rows(raw).to_delayed()]
    if client is None:
        yield from dask.compute(*parts)
        return
    for future in client.compute(parts):
        yield future.result()
        future.release()  # written; let the worker free it


def _write_features(path, splits: Iterable[tuple[pd.DataFrame, pd.DataFrame, pd.Series]]):
    """Write the features of ``_split_labelled`` results to one Parquet file, in order.

    Returns ``(rows written, partial stats, reason counts)`` of all partitions. Row groups have
    a fixed size rather than following the partitions, so the file's bytes do not depend on
    how many workers made it.
    """
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([(ID_COLUMN, pa.int64())] + [(name, pa.float32()) for name in STATS_COLUMNS])
    stats, counts, pending = [], [], []
    pending_rows = rows = 0
    with pq.ParquetWriter(
        path, schema, compression="zstd", use_dictionary=_LOW_CARDINALITY_FEATURES
    ) as writer:
        for features, partial_stats, reason_counts in splits:
            stats.append(partial_stats)
            counts.append(reason_counts)
            pending.append(pa.Table.from_pandas(features, schema=schema, preserve_index=False))
            pending_rows += len(features)
            rows += len(features)
            if pending_rows >= FEATURES_ROW_GROUP_ROWS:
                buffered = pa.concat_tables(pending)
                full = pending_rows - pending_rows % FEATURES_ROW_GROUP_ROWS
                writer.write_table(buffered.slice(0, full), row_group_size=FEATURES_ROW_GROUP_ROWS)
                pending, pending_rows = [buffered.slice(full)], pending_rows - full
        if pending_rows or not rows:
            writer.write_table(pa.concat_tables(pending) if pending else schema.empty_table())
    return rows, pd.concat(stats), pd.concat(counts)


def _shard_summary(raw_rel: str, out_unit: str, manifest: dict, *, skipped: bool) -> dict:
    return {
        "raw": raw_rel,
        "out_unit": out_unit,
        "features": f"{out_unit}/{FEATURES_FILE}",
        "rows_in": manifest["rows_in"],
        "rows_out": manifest["rows_out"],
        "dropped": manifest["dropped"],
        "sha256": manifest["files"][FEATURES_FILE],
        "seconds": manifest["seconds"],
        "skipped": skipped,
    }


def featurise_shard(
    store: ArtifactStore,
    raw_rel: str,
    out_unit: str,
    *,
    scheduler_address: str | None = None,
    cpus: int | None = None,
    partition_rows: int = 100_000,
    min_rows_for_cluster: int = 2_000_000,
) -> dict:
    """Clean and featurise one raw shard with Dask; commit ``out_unit`` (features + stats).

    Runs on the external scheduler when one is given (``scheduler_address``, else
    ``DASK_SCHEDULER_ADDRESS``), otherwise on a LocalCluster of ``cpus`` worker processes
    (default ``available_cpus()``). Starting and stopping that cluster costs one to two seconds
    of spawning and importing, and moving the features back to this process costs CPU too, so
    on 2 cores it only pays off for shards of several million rows: a shard smaller than
    ``min_rows_for_cluster`` runs the same Dask graph synchronously in this process (pass 0 to
    always start the cluster). Parallelism across shards comes from the DAG's fan-out.

    Skipped (``skipped=True``, the recorded summary) when ``out_unit`` is verified, was made
    from the same raw bytes and by this ``FEATURES_VERSION``; otherwise it is redone. The old
    commit is invalidated only once the new features are fully written, so bad input
    (BadInputError) or a crash leaves an earlier output as it was. Returns a small JSON-able dict.

    The workers read their row groups themselves; with an external scheduler the store must
    therefore be reachable from them (an object store, or a shared volume).
    """
    started = time.perf_counter()
    if not isinstance(partition_rows, int) or partition_rows < 1:
        raise BadInputError(f"partition_rows must be a positive integer, got {partition_rows!r}")
    metadata = _open_raw_shard(store, raw_rel)
    raw_sha256 = store.sha256(raw_rel)
    recorded = store.verified(out_unit)
    if (
        recorded is not None
        and recorded.get("raw_sha256") == raw_sha256
        and recorded.get("features_version") == FEATURES_VERSION
    ):
        log.info("%s already verified; skipping", store.uri(out_unit))
        return _shard_summary(raw_rel, out_unit, recorded, skipped=True)

    external = scheduler_address or settings().dask_scheduler_address
    if not external and metadata.num_rows < min_rows_for_cluster:
        cpus = 1  # a cluster would cost more than it saves on a shard this small
    with dask_client(external, cpus) as (client, workers):
        raw = _raw_frame(store, raw_rel, metadata, workers, partition_rows)
        try:
            with store.staged(f"{out_unit}/{FEATURES_FILE}") as tmp:
                splits = _split_partitions_in_order(client, raw)
                rows_out, partial_stats, reason_counts = _write_features(tmp, splits)
                store.invalidate(out_unit)  # the old commit stops counting just before its file is replaced
        except Exception as exc:  # a corrupt page met in this process (synchronous or gathered)
            if _is_corrupt_parquet(exc):
                raise BadInputError(f"raw shard {store.uri(raw_rel)} is corrupt: {exc}") from None
            raise
    stats = _combine_stats_frames(partial_stats)
    dropped = dropped_by_reason(reason_counts)
    rows_in = metadata.num_rows
    if rows_in != rows_out + sum(dropped.values()):
        raise RuntimeError(f"row accounting is off for {raw_rel}: {rows_in} != {rows_out} + {dropped}")

    store.write_json(f"{out_unit}/{STATS_FILE}", stats)
    seconds = round(time.perf_counter() - started, 3)
    manifest = store.commit(
        out_unit,
        [FEATURES_FILE, STATS_FILE],
        raw=raw_rel,
        raw_sha256=raw_sha256,
        features_version=FEATURES_VERSION,
        feature_columns=FEATURE_COLUMNS,
        target=TARGET,
        rows_in=rows_in,
        rows_out=rows_out,
        dropped=dropped,
        stats=stats,
        partitions=raw.npartitions,
        workers=workers,
        executor=external or ("synchronous" if client is None else "local-cluster"),
        seconds=seconds,
    )
    log.info("featurised %s: %d -> %d rows in %.2fs", raw_rel, rows_in, rows_out, seconds)
    return _shard_summary(raw_rel, out_unit, manifest, skipped=False)


# ==============================================================================================
# 4. Fan-in
# ==============================================================================================
MANIFEST_FILE = "manifest.json"


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


def merge_stats(store: ArtifactStore, units: list[str], out_prefix: str) -> dict:
    """Fan-in: combine per-shard stats into ``out_prefix/manifest.json`` (training's contract).

    Every unit must be verified and made by this ``FEATURES_VERSION`` (BadInputError names the
    first that is not). The manifest is rewritten on every call: it is cheap and always
    reflects exactly ``units``.
    """
    if not units:
        raise BadInputError("merge_stats needs at least one featurised unit")
    shards, partials = [], []
    for unit in units:
        recorded = store.verified(unit)
        if recorded is None:
            raise BadInputError(f"featurised unit {store.uri(unit)} is missing or not verified")
        if recorded.get("features_version") != FEATURES_VERSION:
            raise BadInputError(
                f"featurised unit {store.uri(unit)} has features_version "
                f"{recorded.get('features_version')}, expected {FEATURES_VERSION}; re-run it"
            )
        partials.append(recorded["stats"])
        shards.append(
            {
                "unit": unit,
                "path": f"{unit}/{FEATURES_FILE}",
                "rows_in": recorded["rows_in"],
                "rows_out": recorded["rows_out"],
                "dropped": recorded["dropped"],
                "sha256": recorded["files"][FEATURES_FILE],
            }
        )
    dropped = {reason: sum(shard["dropped"].get(reason, 0) for shard in shards) for reason in DROP_REASONS}
    if not any(shard["rows_out"] for shard in shards):
        raise BadInputError(f"no rows survived cleaning in any of {len(units)} units; nothing to train on")
    manifest = {
        "feature_columns": FEATURE_COLUMNS,
        "target": TARGET,
        "stats": summarise_stats(combine_stats(partials)),
        "shards": shards,
        "rows_in": sum(shard["rows_in"] for shard in shards),
        "rows_out": sum(shard["rows_out"] for shard in shards),
        "dropped": dropped,
    }
    store.invalidate(out_prefix)
    store.write_json(f"{out_prefix}/{MANIFEST_FILE}", manifest)
    store.commit(out_prefix, [MANIFEST_FILE], rows_out=manifest["rows_out"], shards=len(shards))
    return {
        "manifest": f"{out_prefix}/{MANIFEST_FILE}",
        "shards": len(shards),
        "rows_in": manifest["rows_in"],
        "rows_out": manifest["rows_out"],
        "dropped": dropped,
    }
