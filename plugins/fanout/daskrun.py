"""One raw shard featurised on the shared Dask cluster; the Airflow task is only its client.

The shard's graph, per partition (a few consecutive Parquet row groups, ``partition_rows``
rows; the split depends on the file alone, never on the cluster's size):

    raw-ride-ids i ─┐                     (first: 8 bytes a row)
                    ├─ find-duplicates ─ duplicates-of i ─┐
    raw-ride-ids j ─┘                                      ├─ featurise-part i ─> <unit>/_staging/part-i
    label-part i  (reads its rows, cleans, featurises) ───┘   (marks duplicates, writes)
    hash-raw  (the raw file's SHA-256, for the record)

De-duplication is the one step that needs the whole shard, and it needs only the ride_id
column; the heavy labelling does not wait for it, as duplicates are marked afterwards.

Workers read the raw rows, clean and featurise them (``fanout.preprocess``) and write each
partition's features to the artifact store themselves, staged and renamed (or PUT) into place
(``fanout.storage``), so a task that Dask recomputes after losing a worker writes the same
bytes again. What returns to the task is a summary per partition (checksum, size, row and
drop counts, partial statistics): about 2 KB, whatever the partition's size. The task then
checks each file's size against its summary, moves the parts into ``<unit>/features/``,
writes ``stats.json`` and commits the unit's ``_SUCCESS.json`` last.

Where the graph runs: the scheduler at ``scheduler_address`` or ``DASK_SCHEDULER_ADDRESS``
(the local stack's and the Helm chart's Dask); with neither, in this process on Dask's
synchronous scheduler (a Python shell, unit tests). Both give byte-identical outputs.

Failures: bad input (a corrupt page met by a worker, a missing column) raises BadInputError,
which Airflow does not retry, and leaves the unit's earlier commit as it was; a lost worker is
Dask's to recover (it recomputes the lost partitions elsewhere); an unreachable or lost
scheduler, or no worker for ``FANOUT_DASK_TIMEOUT_SECONDS``, raises ``DaskUnavailableError``,
which Airflow retries.

Outputs (paths relative to the store): ``<unit>/features/part-NNNNN.parquet`` -- ride_id
(int64), ``FEATURE_COLUMNS`` and ``TARGET`` (float32), input order; ``<unit>/stats.json`` --
per column count, sum, sum_sq, min, max; ``<unit>/_SUCCESS.json`` also records rows_in,
rows_out, dropped (rows per reason in ``DROP_REASONS``), quality (the data quality gates'
threshold, the share kept, missing and malformed values per required column), stats, parts
(file, rows, worker), raw_sha256 and features_version.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import operator
import pickle
import time
from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING, Any

from fanout.errors import BadInputError
from fanout.preprocess import (
    FEATURE_COLUMNS,
    FEATURES_VERSION,
    ID_COLUMN,
    LOW_CARDINALITY_FEATURES,
    RAW_COLUMNS,
    REQUIRED_COLUMNS,
    STATS_COLUMNS,
    TARGET,
    check_columns,
    combine_stats,
    dropped_by_reason,
    duplicate_positions,
    label_rows,
    mark_duplicates,
    split_labelled,
    unparsed_counts,
)
from fanout.quality import DEFAULT_MIN_ROWS_KEPT, check_shard, check_threshold
from fanout.settings import env_name, settings
from fanout.storage import ArtifactStore, sha256_file

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import pyarrow.parquet as pq

log = logging.getLogger(__name__)

PARTITION_ROWS = 100_000
"""Rows per partition (whole row groups): ~70 ms of pandas work, ~25 MB of worker memory."""
FEATURES_DIR = "features"
STAGING_DIR = "_staging"
STATS_FILE = "stats.json"
IN_PROCESS = "in-process"


class DaskUnavailableError(RuntimeError):
    """The shared Dask cluster could not be reached or was lost; a retry can succeed."""


# -- reading the raw shard -------------------------------------------------------------------------
def is_corrupt_parquet(exc: BaseException) -> bool:
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


def open_raw_shard(store: ArtifactStore, raw_rel: str) -> pq.FileMetaData:
    """The shard's Parquet footer (the one read of the raw file in the task); BadInputError if unusable."""
    import pyarrow.parquet as pq

    uri = store.uri(raw_rel)
    try:
        with store.fs.open(store.path(raw_rel), "rb") as handle:
            metadata = pq.ParquetFile(handle).metadata
    except FileNotFoundError:
        raise BadInputError(f"raw shard {uri} does not exist") from None
    except Exception as exc:
        if is_corrupt_parquet(exc):
            raise BadInputError(f"raw shard {uri} is not a readable Parquet file: {exc}") from None
        raise
    check_columns(metadata.schema.names, f"raw shard {uri}")
    return metadata


def plan_partitions(metadata: pq.FileMetaData, partition_rows: int) -> list[tuple[int, ...]]:
    """Consecutive row groups packed into partitions of at least ``partition_rows`` rows (one if empty).

    A row group is never split (Parquet cannot read part of one), so a file written as one
    huge row group is one partition.
    """
    plan: list[tuple[int, ...]] = []
    current: list[int] = []
    rows = 0
    for index in range(metadata.num_row_groups):
        current.append(index)
        rows += metadata.row_group(index).num_rows
        if rows >= partition_rows:
            plan.append(tuple(current))
            current, rows = [], 0
    if current or not plan:
        plan.append(tuple(current))
    return plan


def read_row_groups(
    root: str, raw_rel: str, row_groups: Sequence[int], columns: Sequence[str] = RAW_COLUMNS
) -> pd.DataFrame:
    """Some row groups of a raw shard as pandas; BadInputError if their bytes are corrupt."""
    import pyarrow.parquet as pq

    store = ArtifactStore(root)
    try:
        with store.fs.open(store.path(raw_rel), "rb") as handle:
            table = pq.ParquetFile(handle).read_row_groups(
                list(row_groups), columns=list(columns), use_threads=False
            )
    except Exception as exc:
        if is_corrupt_parquet(exc):
            raise BadInputError(
                f"raw shard {store.uri(raw_rel)} is corrupt (row groups {tuple(row_groups)}): {exc}"
            ) from None
        raise
    return table.to_pandas(use_threads=False)


# -- what the workers run --------------------------------------------------------------------------
def read_ride_ids(root: str, raw_rel: str, row_groups: Sequence[int]) -> pd.Series:
    """A partition's ride_id column: all that de-duplication needs (8 bytes a row)."""
    return read_row_groups(root, raw_rel, row_groups, [ID_COLUMN])[ID_COLUMN]


def find_duplicates(*ride_id_parts: pd.Series) -> list[np.ndarray]:
    return duplicate_positions(ride_id_parts)


def hash_raw(root: str, raw_rel: str) -> str:
    store = ArtifactStore(root)
    return store.sha256(raw_rel)


def _worker_address() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):  # not on a worker: Dask's synchronous scheduler
        return IN_PROCESS


def _features_schema():
    import pyarrow as pa

    return pa.schema([(ID_COLUMN, pa.int64())] + [(name, pa.float32()) for name in STATS_COLUMNS])


def label_part(root: str, raw_rel: str, row_groups: Sequence[int]) -> pd.DataFrame:
    """Read one partition and label every row (features and drop reason), duplicates aside."""
    return label_rows(read_row_groups(root, raw_rel, row_groups))


def featurise_and_write(
    labelled: pd.DataFrame, duplicates: np.ndarray, root: str, part_rel: str
) -> dict[str, Any]:
    """Mark a labelled partition's duplicates, keep its clean rows and write them; return its summary.

    The file is staged and renamed (or PUT) into place, so a recomputation (Dask lost the
    worker that held the result) rewrites the same bytes and a reader never sees half a file.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    store = ArtifactStore(root)
    rows_in = len(labelled)
    features, stats, reasons = split_labelled(mark_duplicates(labelled, duplicates))
    table = pa.Table.from_pandas(features, schema=_features_schema(), preserve_index=False)
    with store.staged(part_rel) as tmp:
        pq.write_table(
            table,
            tmp,
            row_group_size=PARTITION_ROWS,
            compression="zstd",
            use_dictionary=LOW_CARDINALITY_FEATURES,
        )
        digest, size = sha256_file(tmp), tmp.stat().st_size
    return {
        "name": part_rel.rsplit("/", 1)[-1],
        "rows_in": rows_in,
        "rows_out": len(features),
        "reasons": reasons,
        "unparsed": unparsed_counts(labelled),
        "stats": stats,
        "sha256": digest,
        "bytes": size,
        "worker": _worker_address(),
    }


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def shard_graph(
    store: ArtifactStore, raw_rel: str, plan: Sequence[tuple[int, ...]], out_unit: str, raw_token: str
) -> tuple[list, Any]:
    """The shard's Dask graph: (one ``featurise-part`` per partition, ``hash-raw``), lazily.

    Keys are named after what they compute: the raw file (``raw_token``) for reading and
    de-duplication, plus the output unit for the writes, so two runs never share a write.
    """
    import dask

    root = store.root_uri
    write_token = hashlib.sha256(f"{raw_token}\0{root}\0{out_unit}".encode()).hexdigest()[:16]
    # Reading the ride ids first bounds how many labelled partitions wait for de-duplication.
    with dask.annotate(priority=1):
        ids = [
            dask.delayed(read_ride_ids, pure=True)(
                root, raw_rel, groups, dask_key_name=(f"raw-ride-ids-{raw_token}", i)
            )
            for i, groups in enumerate(plan)
        ]
        duplicates = dask.delayed(find_duplicates, pure=True)(
            *ids, dask_key_name=f"find-duplicates-{raw_token}"
        )
    parts = []
    for i, groups in enumerate(plan):
        labelled = dask.delayed(label_part, pure=True)(
            root, raw_rel, groups, dask_key_name=(f"label-part-{raw_token}", i)
        )
        mine = dask.delayed(operator.getitem, pure=True)(
            duplicates, i, dask_key_name=(f"duplicates-of-{raw_token}", i)
        )
        part_rel = f"{out_unit}/{STAGING_DIR}/{part_name(i)}"
        parts.append(
            dask.delayed(featurise_and_write, pure=True)(
                labelled, mine, root, part_rel, dask_key_name=(f"featurise-part-{write_token}", i)
            )
        )
    digest = dask.delayed(hash_raw, pure=True)(root, raw_rel, dask_key_name=f"hash-raw-{raw_token}")
    return parts, digest


# -- where the graph runs --------------------------------------------------------------------------
class InProcess:
    """Dask's synchronous scheduler in this process: no cluster configured."""

    address = IN_PROCESS
    dashboard_link = None

    def compute(self, *lazy):
        import dask

        return list(dask.compute(*lazy, scheduler="synchronous"))


class SharedCluster:
    """A client of the shared cluster that fails clearly when the cluster goes away."""

    def __init__(self, client, address: str, timeout: float):
        self.client, self.address, self.timeout = client, address, timeout
        self.dashboard_link = client.dashboard_link

    def compute(self, *lazy):
        """Results of ``lazy`` (a list of Delayed), computed on the cluster."""
        from distributed import wait

        futures = self.client.compute(list(lazy))
        pending = list(futures)
        workerless_since = None
        try:
            while pending:
                try:
                    with self.client.as_current():
                        wait(pending, timeout=1.0, return_when="FIRST_COMPLETED")
                except TimeoutError:
                    workerless_since = self._check(workerless_since)
                except Exception as exc:
                    raise self._lost(exc) from exc
                for future in [f for f in pending if f.done()]:
                    if future.status == "error":
                        future.result()  # raises the task's own exception (e.g. BadInputError)
                    if future.status == "cancelled":
                        raise self._lost(_cancellation(future))
                    pending.remove(future)
            return self.client.gather(futures)
        except BaseException:
            self.client.cancel(futures)
            raise

    def _check(self, workerless_since: float | None) -> float | None:
        """Raise if the scheduler is gone, or no worker was there for ``timeout`` seconds."""
        if self.client.status != "running":
            raise self._lost(None)
        try:
            workers = len(self.client.nthreads())
        except Exception as exc:
            raise self._lost(exc) from exc
        if workers:
            return None
        now = time.monotonic()
        if workerless_since is None:
            return now
        if now - workerless_since > self.timeout:
            raise DaskUnavailableError(
                f"the Dask scheduler {self.address} has had no worker for {self.timeout:g}s "
                f"({env_name('dask_timeout_seconds')}); are the Dask workers running?"
            )
        return workerless_since

    def _lost(self, cause: BaseException | None) -> DaskUnavailableError:
        detail = f": {cause}" if cause else ""
        return DaskUnavailableError(
            f"lost the Dask scheduler {self.address} while the shard was computing{detail}; "
            "the task will be retried once the scheduler is back"
        )


def _cancellation(future) -> BaseException | None:
    try:
        future.result(timeout=0)
    except Exception as exc:
        return exc
    return None


@contextlib.contextmanager
def connect(address: str | None = None, timeout: float | None = None) -> Generator[InProcess | SharedCluster]:
    """Where a shard's graph runs: the shared cluster at ``address`` (or DASK_SCHEDULER_ADDRESS), else here.

    Waits up to ``timeout`` seconds (FANOUT_DASK_TIMEOUT_SECONDS) for the scheduler and for a
    first worker, then raises DaskUnavailableError naming the address.
    """
    current = settings()
    address = address or current.dask_scheduler_address
    if not address:
        yield InProcess()
        return
    timeout = timeout or current.dask_timeout_seconds
    from distributed import Client

    try:
        client = Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise DaskUnavailableError(
            f"cannot reach the Dask scheduler at {address} ({env_name('dask_scheduler_address')}) "
            f"within {timeout:g}s: {exc}"
        ) from None
    try:
        try:
            client.wait_for_workers(1, timeout=timeout)
        except TimeoutError:
            raise DaskUnavailableError(
                f"no Dask worker joined the scheduler at {address} within {timeout:g}s; are the workers running?"
            ) from None
        yield SharedCluster(client, address, timeout)
    finally:
        client.close()


# -- one shard -------------------------------------------------------------------------------------
def _shard_summary(raw_rel: str, out_unit: str, manifest: dict, *, skipped: bool) -> dict:
    """What the task returns (its XCom): counts and where the outputs are, a few hundred bytes."""
    return {
        "raw": raw_rel,
        "out_unit": out_unit,
        "rows_in": manifest["rows_in"],
        "rows_out": manifest["rows_out"],
        "dropped": manifest["dropped"],
        "quality": manifest["quality"],
        "parts": len(manifest["parts"]),
        "seconds": manifest["seconds"],
        "executor": manifest["executor"],
        "skipped": skipped,
    }


def _publish(store: ArtifactStore, out_unit: str, summaries: list[dict]) -> dict[str, dict]:
    """Check what the workers staged, then move it into ``features/``; the records by file name.

    Only now is the unit's earlier commit invalidated, so a failure before this point (bad
    input, a lost cluster) leaves earlier outputs as they were.
    """
    staging, features = f"{out_unit}/{STAGING_DIR}", f"{out_unit}/{FEATURES_DIR}"
    store.fs.invalidate_cache(store.path(out_unit))  # the workers wrote there; object stores cache listings
    staged = {
        entry["name"].rsplit("/", 1)[-1]: entry["size"]
        for entry in store.fs.ls(store.path(staging), detail=True)
    }
    for summary in summaries:
        name = summary["name"]
        if staged.get(name) != summary["bytes"]:
            raise OSError(
                f"{store.uri(f'{staging}/{name}')}: a worker reported {summary['bytes']} bytes, "
                f"the store has {staged.get(name)}"
            )
    store.invalidate(out_unit)
    keep = {summary["name"] for summary in summaries}
    for stale in set(store.listdir(features)) - keep:  # from an earlier attempt with other partitions
        store.remove(f"{features}/{stale}")
    for summary in summaries:
        store.move(f"{staging}/{summary['name']}", f"{features}/{summary['name']}")
    store.remove(staging, recursive=True)
    return {f"{FEATURES_DIR}/{summary['name']}": summary for summary in summaries}


def _raw_token(store: ArtifactStore, raw_rel: str, metadata: pq.FileMetaData, plan) -> str:
    """The raw file's identity for Dask keys, without reading it here: its size and its footer
    (row-group sizes, offsets, per-column statistics); the workers hash the bytes themselves."""
    footer = json.dumps(metadata.to_dict(), sort_keys=True, default=str)
    identity = f"{store.uri(raw_rel)}\0{store.size(raw_rel)}\0{plan}\0{footer}"
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def featurise_shard(
    store: ArtifactStore,
    raw_rel: str,
    out_unit: str,
    *,
    scheduler_address: str | None = None,
    partition_rows: int = PARTITION_ROWS,
    min_rows_kept: float = DEFAULT_MIN_ROWS_KEPT,
) -> dict:
    """Clean and featurise one raw shard on the shared Dask cluster; commit ``out_unit``.

    Skipped (``skipped=True``, the recorded summary) when ``out_unit`` is verified, was made
    from the same raw bytes and by this ``FEATURES_VERSION``; otherwise it is redone. The old
    commit is invalidated only once every new part is written and the shard passed the data
    quality gates (``fanout.quality``, ``min_rows_kept``), so bad input (BadInputError) or a
    lost cluster leaves an earlier output as it was. Returns a small JSON-able dict.

    With a cluster the store must be reachable from its workers under the same URI (an object
    store, or a volume mounted at the same path).
    """
    started = time.perf_counter()
    if not isinstance(partition_rows, int) or isinstance(partition_rows, bool) or partition_rows < 1:
        raise BadInputError(f"partition_rows must be a positive integer, got {partition_rows!r}")
    min_rows_kept = check_threshold(min_rows_kept)
    metadata = open_raw_shard(store, raw_rel)
    plan = plan_partitions(metadata, partition_rows)
    recorded = store.verified(out_unit)
    with connect(scheduler_address) as cluster:
        if cluster.address != IN_PROCESS and "memory" in store.fs.protocol:
            raise BadInputError(
                f"{store.root_uri} lives in this process's memory; Dask workers cannot reach it"
            )
        raw_token = _raw_token(store, raw_rel, metadata, plan)
        parts, digest = shard_graph(store, raw_rel, plan, out_unit, raw_token)
        if recorded is not None and recorded.get("features_version") == FEATURES_VERSION:
            (raw_sha256,) = cluster.compute(digest)
            if recorded.get("raw_sha256") == raw_sha256:
                log.info("%s already verified; skipping", store.uri(out_unit))
                # Judged again: this run's threshold may differ from the one recorded.
                recorded["quality"] = check_shard(
                    f"raw shard {store.uri(raw_rel)}",
                    recorded["rows_in"],
                    recorded["rows_out"],
                    recorded["dropped"],
                    recorded["quality"]["unparsed"],
                    min_rows_kept,
                )
                return _shard_summary(raw_rel, out_unit, recorded, skipped=True)
        log.info(
            "featurising %s: %d rows in %d partitions on %s%s",
            store.uri(raw_rel),
            metadata.num_rows,
            len(plan),
            cluster.address,
            f" (dashboard {cluster.dashboard_link})" if cluster.dashboard_link else "",
        )
        *summaries, raw_sha256 = cluster.compute(*parts, digest)

    returned_bytes = len(pickle.dumps((summaries, raw_sha256)))
    rows_in = sum(summary["rows_in"] for summary in summaries)
    rows_out = sum(summary["rows_out"] for summary in summaries)
    dropped = dropped_by_reason([summary["reasons"] for summary in summaries])
    if rows_in != metadata.num_rows or rows_in != rows_out + sum(dropped.values()):
        raise RuntimeError(
            f"row accounting is off for {raw_rel}: {metadata.num_rows} rows, {rows_in} read, "
            f"{rows_out} kept + {dropped} dropped"
        )
    unparsed = {
        column: [sum(s["unparsed"][column][i] for s in summaries) for i in (0, 1)]
        for column in REQUIRED_COLUMNS
    }
    try:
        quality = check_shard(
            f"raw shard {store.uri(raw_rel)}", rows_in, rows_out, dropped, unparsed, min_rows_kept
        )
    except BadInputError:
        store.remove(f"{out_unit}/{STAGING_DIR}", recursive=True)  # never published: the old commit stands
        raise
    log.info(
        "%s passes the data quality gates: kept %.1f%% of its rows", raw_rel, 100 * quality["kept_share"]
    )
    stats = combine_stats(summary["stats"] for summary in summaries)
    written = _publish(store, out_unit, summaries)
    store.write_json(f"{out_unit}/{STATS_FILE}", stats)
    seconds = round(time.perf_counter() - started, 3)
    manifest = store.commit(
        out_unit,
        [*written, STATS_FILE],
        written=written,
        raw=raw_rel,
        raw_sha256=raw_sha256,
        features_version=FEATURES_VERSION,
        feature_columns=FEATURE_COLUMNS,
        target=TARGET,
        rows_in=rows_in,
        rows_out=rows_out,
        dropped=dropped,
        quality=quality,
        stats=stats,
        parts=[
            {"path": rel, "rows_in": s["rows_in"], "rows_out": s["rows_out"], "worker": s["worker"]}
            for rel, s in written.items()
        ],
        executor=cluster.address,
        returned_bytes=returned_bytes,
        seconds=seconds,
    )
    log.info("featurised %s: %d -> %d rows in %.2fs", raw_rel, rows_in, rows_out, seconds)
    return _shard_summary(raw_rel, out_unit, manifest, skipped=False)
