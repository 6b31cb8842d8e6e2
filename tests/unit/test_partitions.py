"""Partition keys, where a partitioned run writes, and the pointers that switch a partition atomically."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from fanout import partitions
from fanout.errors import BadInputError
from fanout.keys import PARTITION_DAY, PARTITION_MINUTE, check_partition_key, partition_key_format
from fanout.storage import ArtifactStore


@pytest.mark.parametrize("key", ["2026-11-25", "2026-02-28", "2026-11-25T1430", "2026-11-25T0000"])
def test_well_formed_partition_keys_are_accepted(key):
    assert check_partition_key(key) == key


@pytest.mark.parametrize(
    "key",
    [
        "2026-1-5",  # strptime (and so Airflow) accepts it; it is not the canonical name of the day
        "2026-02-30",
        "2026-13-01",
        "2026-11-25T14:30",
        "2026-11-25T2460",
        "../../etc",
        "2026-11-25/../../x",
        "latest",
        "",
        None,
        20261125,
    ],
)
def test_malformed_or_unknown_partition_keys_fail_naming_the_key_and_the_forms(key):
    with pytest.raises(BadInputError, match=r"partition key .* expected YYYY-MM-DD or YYYY-MM-DDTHHMM"):
        check_partition_key(key)


@pytest.mark.parametrize(
    ("cron", "expected"),
    [
        ("0 0 * * *", PARTITION_DAY),
        ("30 2 * * 1", PARTITION_DAY),
        ("*/2 * * * *", PARTITION_MINUTE),
        ("0 */6 * * *", PARTITION_MINUTE),
        ("* * * * *", PARTITION_MINUTE),
    ],
)
def test_a_schedule_firing_more_than_daily_gets_minute_keys(cron, expected):
    assert partition_key_format(cron) == expected


def test_the_last_partition_is_the_one_the_latest_tick_closed():
    now = datetime(2026, 11, 26, 16, 51, 10, tzinfo=UTC)
    assert partitions.last_partition_key("0 0 * * *", now) == "2026-11-25"
    assert partitions.last_partition_key("*/2 * * * *", now) == "2026-11-26T1648"


def test_partitioned_runs_write_under_their_partition_and_ad_hoc_runs_under_their_run():
    run = "backfill__2026-11-20T00:00:00+00:00__2026-11-20__x"
    assert partitions.run_prefix("train", run, "2026-11-20") == (
        "train/partitions/2026-11-20/backfill__2026-11-20T00_00_00_00_00__2026-11-20__x"
    )
    assert partitions.run_prefix("train", "manual__1", None) == "train/manual__1"
    with pytest.raises(BadInputError):
        partitions.run_prefix("train", run, "../../outside")


@pytest.fixture
def store(tmp_path):
    return ArtifactStore(str(tmp_path))


def _generation(store, key, run, payload: bytes) -> str:
    prefix = partitions.run_prefix("train", run, key)
    store.write_bytes(f"{prefix}/best/model.pt", payload)
    return prefix


def test_publishing_switches_the_partition_and_keeps_the_generation_readers_may_hold(store):
    first = _generation(store, "2026-11-20", "r1", b"one")
    partitions.publish(store, "train", "2026-11-20", "r1", model=f"{first}/best/model.pt")
    second = _generation(store, "2026-11-20", "r2", b"two")
    partitions.publish(store, "train", "2026-11-20", "r2", model=f"{second}/best/model.pt")

    pointer = partitions.current(store, "train", "2026-11-20")
    assert pointer["run_id"] == "r2"
    assert store.read_bytes(pointer["model"]) == b"two"
    assert store.exists(first), "the generation replaced a moment ago is kept for readers that hold it"

    third = _generation(store, "2026-11-20", "r3", b"three")
    partitions.publish(store, "train", "2026-11-20", "r3", model=f"{third}/best/model.pt")
    assert not store.exists(first), "superseded twice: removed"
    assert store.exists(second) and store.exists(third)
    assert store.listdir("train/partitions/2026-11-20") == ["current.json", "r2", "r3"]


def test_publishing_again_from_the_same_run_removes_nothing(store):
    first = _generation(store, "2026-11-20", "r1", b"one")
    partitions.publish(store, "train", "2026-11-20", "r1", model=f"{first}/best/model.pt")
    second = _generation(store, "2026-11-20", "r2", b"two")
    for _ in range(2):  # a cleared select_best publishes twice
        partitions.publish(store, "train", "2026-11-20", "r2", model=f"{second}/best/model.pt")
    assert store.exists(first) and store.exists(second)


def test_latest_names_the_newest_partition_not_the_last_run_to_finish(store):
    for key in ("2026-11-25", "2026-11-20"):  # a backfill of an older partition finishes last
        prefix = _generation(store, key, f"run-{key}", key.encode())
        partitions.publish(store, "train", key, f"run-{key}", model=f"{prefix}/best/model.pt")
    assert partitions.latest(store, "train")["partition_key"] == "2026-11-25"
    assert store.read_bytes(partitions.latest(store, "train")["model"]) == b"2026-11-25"


class _InterleavingStore:
    """The store, but the first write of ``latest.json`` waits while ``meanwhile`` runs in full."""

    def __init__(self, store, meanwhile):
        self._store, self._meanwhile = store, meanwhile

    def __getattr__(self, name):
        return getattr(self._store, name)

    def write_json(self, rel, obj):
        if rel.endswith(partitions.LATEST) and self._meanwhile:
            meanwhile, self._meanwhile = self._meanwhile, None
            meanwhile()
        self._store.write_json(rel, obj)


def test_latest_is_the_newest_partition_when_two_partitions_publish_at_once(store):
    """A backfill's runs publish together: the older partition's writer read the listing before the
    newer one published, and writes last. It must notice and leave the newer pointer in place."""
    older = _generation(store, "2026-11-20", "r-20", b"20")
    newer = _generation(store, "2026-11-21", "r-21", b"21")
    interleaved = _InterleavingStore(
        store,
        lambda: partitions.publish(store, "train", "2026-11-21", "r-21", model=f"{newer}/best/model.pt"),
    )
    partitions.publish(interleaved, "train", "2026-11-20", "r-20", model=f"{older}/best/model.pt")
    assert partitions.latest(store, "train") == partitions.current(store, "train", "2026-11-21")
    assert partitions.newest_partition(store, "train")["partition_key"] == "2026-11-21"


def test_a_stray_folder_among_the_partitions_is_not_the_newest(store):
    prefix = _generation(store, "2026-11-20", "r1", b"one")
    store.write_bytes("train/partitions/zz-notes/readme.txt", b"not a partition")
    partitions.publish(store, "train", "2026-11-20", "r1", model=f"{prefix}/best/model.pt")
    assert partitions.latest(store, "train")["partition_key"] == "2026-11-20"


def test_a_published_path_outside_the_run_is_refused(store):
    with pytest.raises(ValueError, match="not inside this run's outputs"):
        partitions.publish(
            store, "train", "2026-11-20", "r1", model="train/partitions/2026-11-21/r9/model.pt"
        )
    assert partitions.current(store, "train", "2026-11-20") is None
