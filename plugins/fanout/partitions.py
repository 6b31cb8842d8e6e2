"""Where a run's outputs live, and the pointers readers follow: one partition, replaced atomically.

A run of a partitioned DAG (a scheduled run, a backfill, a trigger with a partition key) writes
under ``<kind>/partitions/<key>/<run>/``: its own *generation* of that partition, so a re-run
never writes into the folder readers use. When the run has verified its outputs it switches the
partition's pointer, ``<kind>/partitions/<key>/current.json``, in one atomic write (a rename
locally, a single PUT on an object store): readers see the old generation or the new one, never
a mix. The generation the previous pointer had replaced is then removed: superseded twice, nobody
reads it (a reader that followed the previous pointer a moment ago still finds its files). A run
that failed before publishing leaves its generation in place for inspection; nothing points at it.

``<kind>/latest.json`` names the newest partition's current generation (the greatest key, not
the last run to finish: backfilling last month does not make last month's model the latest).
Runs of several partitions publish at once in a backfill, and neither stores nor this module
lock: each publisher copies the newest partition's pointer to ``latest.json`` and looks again
until what it reads there is the newest pointer it lists, so the last write is always right.

A run without a partition key (an ad hoc trigger) writes under ``<kind>/<run>/`` as before and
moves no pointer. Nothing here imports Airflow; ``fanout.dagkit`` passes the run's ids in.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from fanout.keys import check_partition_key, partition_key_format
from fanout.storage import ArtifactStore, safe_key

log = logging.getLogger(__name__)

CURRENT = "current.json"
LATEST = "latest.json"


def last_partition_key(cron: str, now: datetime | None = None) -> str:
    """The key of the partition the schedule's most recent tick covers (the one before that tick).

    What a scheduled run at that tick would process; ``make demo`` triggers it by hand.
    """
    from croniter import croniter

    ticks = croniter(cron, now or datetime.now(UTC))
    ticks.get_prev(datetime)
    return ticks.get_prev(datetime).strftime(partition_key_format(cron))


def partition_prefix(kind: str, key: str) -> str:
    """``<kind>/partitions/<key>``: every generation of one partition, and its pointer."""
    return f"{kind}/partitions/{check_partition_key(key)}"


def run_prefix(kind: str, run_id: str, partition_key: str | None = None) -> str:
    """Where one run writes: its generation of the partition, or ``<kind>/<run>`` without one."""
    if partition_key:
        return f"{partition_prefix(kind, partition_key)}/{safe_key(run_id)}"
    return f"{kind}/{safe_key(run_id)}"


def current(store: ArtifactStore, kind: str, key: str) -> dict[str, Any] | None:
    """The partition's pointer (``run_id``, ``prefix`` and the published paths), if published."""
    try:
        return store.read_json(f"{partition_prefix(kind, key)}/{CURRENT}")
    except FileNotFoundError:
        return None


def latest(store: ArtifactStore, kind: str) -> dict[str, Any] | None:
    """The pointer of the newest partition published, if any."""
    try:
        return store.read_json(f"{kind}/{LATEST}")
    except FileNotFoundError:
        return None


def publish(store: ArtifactStore, kind: str, key: str, run_id: str, **paths: str) -> dict[str, Any]:
    """Make this run's generation the partition's current one; move ``latest`` if it is the newest.

    ``paths`` are the run's outputs consumers read (e.g. ``manifest=...``), each inside the
    run's generation. Returns the pointer written.
    """
    prefix = run_prefix(kind, run_id, key)
    for name, rel in paths.items():
        if not rel.startswith(f"{prefix}/"):
            raise ValueError(f"{name}={rel!r} is not inside this run's outputs {prefix}/")
    previous = current(store, kind, key)
    again = previous is not None and previous["prefix"] == prefix  # a cleared task publishing again
    pointer = {
        "partition_key": key,
        "run_id": run_id,
        "prefix": prefix,
        "published_at": datetime.now(UTC).isoformat(),
        "replaced": (previous.get("replaced") if again else previous["prefix"]) if previous else None,
        **paths,
    }
    store.write_json(f"{partition_prefix(kind, key)}/{CURRENT}", pointer)
    _update_latest(store, kind)
    stale = None if again else (previous or {}).get("replaced")
    if stale and stale != prefix and stale.startswith(f"{partition_prefix(kind, key)}/"):
        log.info("removing generation %s, superseded twice", store.uri(stale))
        store.remove(stale, recursive=True)
    return pointer


def newest_partition(store: ArtifactStore, kind: str) -> dict[str, Any] | None:
    """The pointer of the greatest partition key that has one (keys sort as their times do)."""
    for name in reversed(store.listdir(f"{kind}/partitions")):
        try:
            pointer = current(store, kind, name)
        except ValueError:  # not a partition's folder (BadInputError names it): nobody's pointer
            continue
        if pointer is not None:
            return pointer
    return None


def _update_latest(store: ArtifactStore, kind: str, attempts: int = 20) -> None:
    """Copy the newest partition's pointer to ``latest.json`` until it is what we read there.

    Another partition's publisher may write ``latest.json`` between our listing and our write (a
    backfill publishes several at once): whoever wrote last looks again and corrects it.
    """
    for _ in range(attempts):
        newest = newest_partition(store, kind)
        if newest is None or latest(store, kind) == newest:
            return
        store.write_json(f"{kind}/{LATEST}", newest)
    log.warning(
        "%s still moved after %d updates; the next publish corrects it",
        store.uri(f"{kind}/{LATEST}"),
        attempts,
    )
