"""Raw ride data: the seeded synthetic dataset, generated shard by shard, and users' datasets.

A dataset is a prefix under the artifact root holding Parquet shards (``RAW_COLUMNS``). The
synthetic one is described by a ``SyntheticSpec`` and made in three steps, each one Airflow
task (nothing here imports Airflow):

1. ``plan_dataset`` -- which shards still need generating (none when the same spec is
   already committed; a different spec under the same prefix is refused);
2. ``write_shard`` -- one shard, streamed a row group at a time, so a task's memory does not
   grow with ``rows_per_shard``; returns its checksum and dirt counts (a few hundred bytes);
3. ``commit_dataset`` -- records every shard's checksum in the prefix's ``_SUCCESS.json``, last.

A user's dataset is any prefix of ``*.parquet`` files; ``list_shards`` names the shards of
either kind. The data are realistic on purpose: rides between city zones with fares that
depend nonlinearly on distance, time and surcharges, and dirt that cleaning must handle
(``fanout.preprocess``): missing values, malformed numbers and timestamps, unknown zones,
outliers, implausible speeds, inconsistent spelling and re-sent (duplicated) records.

Determinism: every row group is drawn from its own random stream, seeded by the spec's seed,
its ``partition`` key (empty: none), the shard and the row group, so the same spec gives
byte-identical shards, in any order and on any machine, and one partition of a scheduled
dataset can be generated without the others.

pyarrow is imported inside the functions that use it, so a DAG file may import this module.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from fanout.errors import BadInputError
from fanout.preprocess import (
    AIRPORT_ZONE,
    N_ZONES,
    ZONE_CENTROIDS_KM,
    is_night,
    is_rush_hour,
)
from fanout.storage import MANIFEST, ArtifactStore, sha256_file

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

GENERATOR_VERSION = 2
"""Part of a dataset's params, so a generator change never silently mixes with old shards.
2: drawn per row group (streamed), re-sent records copy rows of their own or the previous row group."""
ROW_GROUP_ROWS = 50_000
"""Rows per Parquet row group: the unit of generation and of Dask's partitions."""
MAX_ROWS_PER_SHARD = 999_999_999  # ride ids are shard * 1e9 + row

_DATA_START = np.datetime64("2026-01-01T00:00:00", "s")
_DATA_DAYS = 304  # through October
_HOUR_WEIGHTS = np.array(
    [3, 2, 1.5, 1, 1, 1.5, 3, 6, 8, 7, 5, 5, 5.5, 5.5, 5.5, 6, 7, 8, 8, 7, 6, 5.5, 5, 4], dtype=float
)
_PASSENGER_WEIGHTS = np.array([0.68, 0.15, 0.07, 0.05, 0.03, 0.02])
_PAYMENT_TYPES = ("card", "cash", "app")
_PAYMENT_WEIGHTS = np.array([0.62, 0.28, 0.10])
_PAYMENT_VARIANTS = ("CARD", "Cash ", " App")  # inconsistent spelling of the same three values
_BAD_DURATIONS = ("twelve", "12 min", "?", "1O.5")
_BAD_TIMESTAMPS = ("2026-02-30 10:00:00", "31/01/2026 10:00", "yesterday", "2026-13-01 25:61:00")
_UNKNOWN_ZONES = (0, 99, 264)
DIRT_KINDS = (
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
"""Kinds of dirt that make a row unusable; each hits ``dirt / len(DIRT_KINDS)`` of the rows."""
_MISSING_CANDIDATES = ("pickup_ts", "pickup_zone", "dropoff_zone", "distance_km", "duration_min", "fare")


@dataclass(frozen=True)
class SyntheticSpec:
    """What a synthetic dataset is made of; equal specs give byte-identical shards."""

    n_shards: int
    rows_per_shard: int
    seed: int
    dirt: float = 0.03
    """Share of rows with dirt that makes them unusable (plus as much recoverable formatting dirt)."""
    row_group_rows: int = ROW_GROUP_ROWS
    partition: str = ""
    """A partition key (e.g. a date) of a scheduled dataset: each key draws its own rows."""

    def __post_init__(self) -> None:
        checks = {
            "n_shards": _is_int(self.n_shards) and self.n_shards >= 1,
            "rows_per_shard": _is_int(self.rows_per_shard) and 1 <= self.rows_per_shard <= MAX_ROWS_PER_SHARD,
            "seed": _is_int(self.seed) and self.seed >= 0,
            "dirt": isinstance(self.dirt, int | float) and 0.0 <= float(self.dirt) <= 0.5,
            "row_group_rows": _is_int(self.row_group_rows) and self.row_group_rows >= 1,
            "partition": isinstance(self.partition, str) and len(self.partition) <= 256,
        }
        forms = {
            "n_shards": "a positive integer",
            "rows_per_shard": f"an integer in [1, {MAX_ROWS_PER_SHARD:,}]",
            "seed": "a non-negative integer",
            "dirt": "a fraction in [0, 0.5]",
            "row_group_rows": "a positive integer",
            "partition": "a string of at most 256 characters",
        }
        for name, ok in checks.items():
            if not ok:
                raise BadInputError(f"{name} must be {forms[name]}, got {getattr(self, name)!r}")
        object.__setattr__(self, "dirt", float(self.dirt))

    def params(self) -> dict:
        """What the dataset manifest records: the spec and the generator's version."""
        return {**asdict(self), "generator_version": GENERATOR_VERSION}

    def default_prefix(self) -> str:
        """Where the DAG keeps this dataset: one prefix per spec, so specs never collide."""
        prefix = (
            f"datasets/rides/v{GENERATOR_VERSION}-seed{self.seed}-{self.n_shards}x{self.rows_per_shard}"
            f"-dirt{self.dirt:g}"
        )
        if self.row_group_rows != ROW_GROUP_ROWS:
            prefix += f"-rg{self.row_group_rows}"
        if self.partition:
            from fanout.storage import safe_key

            prefix += f"/{safe_key(self.partition)}"
        return prefix

    def row_groups(self) -> list[int]:
        """Rows of each row group of one shard."""
        full, rest = divmod(self.rows_per_shard, self.row_group_rows)
        return [self.row_group_rows] * full + ([rest] if rest else [])

    def _entropy(self, shard_index: int, group: int) -> list[int]:
        if not self.partition:
            return [self.seed, shard_index, group]
        key = int.from_bytes(hashlib.sha256(self.partition.encode()).digest()[:8], "big")
        return [self.seed, key, shard_index, group]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


# -- the synthetic rows ----------------------------------------------------------------------------
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


def _duplicates_in(rows: int, dirt: float) -> int:
    """Re-sent copies among ``rows`` rows of a row group: the rest are original rides."""
    return round(rows * dirt / len(DIRT_KINDS))


def _first_ride_number(spec: SyntheticSpec, group: int) -> int:
    """Original rides of the row groups before ``group``: ride numbers continue across groups."""
    sizes = spec.row_groups()[:group]
    return sum(rows - _duplicates_in(rows, spec.dirt) for rows in sizes)


def synthesise_originals(
    rng: np.random.Generator, n: int, rate: float, first_ride_id: int
) -> tuple[pa.Table, dict[str, int]]:
    """``n`` original rides (ids ``first_ride_id`` on) with dirt at ``rate`` per kind, and its counts."""
    import pyarrow as pa
    import pyarrow.compute as pc

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
            "ride_id": pa.array(first_ride_id + np.arange(n), pa.int64()),
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
    return table, injected


def synthesise_row_group(
    spec: SyntheticSpec, shard_index: int, group: int, previous: pa.Table | None = None
) -> tuple[pa.Table, pa.Table, dict[str, int]]:
    """Row group ``group`` of shard ``shard_index``: ``(rows, its original rides, dirt counts)``.

    ``previous`` holds the original rides of row group ``group - 1`` (None for the first): the
    group's re-sent records are exact copies of rides of either group, shuffled in among the
    originals, so duplicates cross row-group (and so partition) boundaries as in real feeds.
    """
    import pyarrow as pa

    rows = spec.row_groups()[group]
    rng = np.random.default_rng(spec._entropy(shard_index, group))
    n_duplicates = _duplicates_in(rows, spec.dirt)
    first = shard_index * 1_000_000_000 + 1 + _first_ride_number(spec, group)
    originals, injected = synthesise_originals(rng, rows - n_duplicates, spec.dirt / len(DIRT_KINDS), first)

    pool = originals if previous is None else pa.concat_tables([previous, originals])
    offset = pool.num_rows - originals.num_rows
    order = np.concatenate(
        [offset + np.arange(originals.num_rows), rng.integers(0, pool.num_rows, n_duplicates)]
    )
    injected["duplicate"] = n_duplicates
    return pool.take(pa.array(order[rng.permutation(rows)])), originals, injected


# -- the three steps -------------------------------------------------------------------------------
def plan_dataset(store: ArtifactStore, prefix: str, spec: SyntheticSpec) -> list[int]:
    """Indices of the shards of ``spec`` to generate under ``prefix``: none if already committed.

    A prefix committed with the same params is reused as it is: its manifest is read, not every
    shard re-hashed (that would read the whole dataset; each featurising task validates its own
    shard). One committed with other params raises BadInputError rather than being overwritten.
    """
    manifest = _read_manifest(store, prefix)
    if manifest is not None and manifest.get("params") is not None:
        if manifest["params"] != spec.params():
            raise BadInputError(
                f"dataset {store.uri(prefix)} already exists with params {manifest['params']}; "
                f"refusing to overwrite it with {spec.params()} (use another prefix)"
            )
        present = set(store.listdir(prefix))
        if all(shard_name(i) in present for i in range(spec.n_shards)):
            return []
    store.invalidate(prefix)  # an interrupted or damaged earlier attempt is regenerated
    return list(range(spec.n_shards))


def write_shard(store: ArtifactStore, prefix: str, spec: SyntheticSpec, shard_index: int) -> dict:
    """Generate shard ``shard_index`` into ``prefix``, a row group at a time; a small record of it.

    Memory holds two row groups (the current one and the previous one's originals), whatever
    ``rows_per_shard`` is. The file is staged and renamed (or PUT) into place, so a retry just
    writes the same bytes again. Returns ``{name, rows, sha256, bytes, injected}``.
    """
    import pyarrow.parquet as pq

    if not _is_int(shard_index) or not 0 <= shard_index < spec.n_shards:
        raise BadInputError(f"shard_index must be in [0, {spec.n_shards}), got {shard_index!r}")
    name = shard_name(shard_index)
    injected = dict.fromkeys(DIRT_KINDS, 0)
    previous = None
    with store.staged(f"{prefix}/{name}") as tmp:
        writer = None
        for group in range(len(spec.row_groups())):
            table, previous, counts = synthesise_row_group(spec, shard_index, group, previous)
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema, compression="zstd")
            writer.write_table(table, row_group_size=table.num_rows)
            for kind, count in counts.items():
                injected[kind] += count
        writer.close()
        digest, size = sha256_file(tmp), tmp.stat().st_size
    log.info("generated %s: %d rows", store.uri(f"{prefix}/{name}"), spec.rows_per_shard)
    return {"name": name, "rows": spec.rows_per_shard, "sha256": digest, "bytes": size, "injected": injected}


def commit_dataset(
    store: ArtifactStore, prefix: str, spec: SyntheticSpec, written: Sequence[dict]
) -> list[str]:
    """Commit the dataset manifest from ``write_shard``'s records; return the shard paths.

    Each file's size is checked against its record (a stat, not a read); the manifest lists
    their checksums, the params and the dirt injected, summed.
    """
    names = [shard_name(i) for i in range(spec.n_shards)]
    records = {record["name"]: record for record in written}
    if sorted(records) != names:
        missing = sorted(set(names) - set(records))
        raise RuntimeError(
            f"dataset {store.uri(prefix)}: no record of shard(s) {missing[:5]} (of {len(missing)})"
        )
    injected = {kind: sum(records[name]["injected"][kind] for name in names) for kind in DIRT_KINDS}
    store.commit(
        prefix,
        names,
        written={name: records[name] for name in names},
        params=spec.params(),
        rows=spec.n_shards * spec.rows_per_shard,
        injected=injected,
    )
    log.info("committed %d shards x %d rows under %s", spec.n_shards, spec.rows_per_shard, store.uri(prefix))
    return [f"{prefix}/{name}" for name in names]


def generate_dataset(store: ArtifactStore, prefix: str, spec: SyntheticSpec) -> list[str]:
    """The three steps in this process, one shard after another (for a shell, tests and benchmarks)."""
    todo = plan_dataset(store, prefix, spec)
    if todo:
        commit_dataset(store, prefix, spec, [write_shard(store, prefix, spec, i) for i in todo])
    return list_shards(store, prefix)


# -- any dataset -----------------------------------------------------------------------------------
def _read_manifest(store: ArtifactStore, prefix: str) -> dict | None:
    try:
        return store.read_json(f"{prefix}/{MANIFEST}")
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise BadInputError(
            f"dataset manifest {store.uri(f'{prefix}/{MANIFEST}')} is not valid JSON: {exc}"
        ) from None


def list_shards(store: ArtifactStore, prefix: str) -> list[str]:
    """Shard paths (relative to the store) of a dataset, in order.

    From the dataset manifest when there is one; otherwise every ``*.parquet`` directly under
    ``prefix`` (a user-provided dataset). The manifest is read, not re-verified: hashing every
    shard here would read the whole dataset, and each shard task validates its own input.
    """
    manifest = _read_manifest(store, prefix)
    if manifest is None:
        names = [n for n in store.listdir(prefix) if n.endswith(".parquet") and not n.startswith(".")]
    else:
        names = sorted(n for n in manifest.get("files", {}) if n.endswith(".parquet"))
    if not names:
        raise BadInputError(f"no Parquet shards under {store.uri(prefix)}")
    return [f"{prefix}/{name}" for name in names]
