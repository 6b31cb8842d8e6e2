"""fanout_preprocess's schedule as the scheduler runs it: Airflow's own timetable, from the DAG's."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from airflow.serialization.decoders import decode_timetable
from airflow.serialization.encoders import encode_timetable
from airflow.timetables import trigger
from airflow.timetables.base import TimeRestriction

from fanout import dagkit


def _first_run(monkeypatch, now: datetime):
    """The first run a new deployment's scheduler creates at ``now`` (catchup off, no start date)."""
    monkeypatch.setattr(trigger, "utcnow", lambda: now)
    timetable = decode_timetable(encode_timetable(dagkit.preprocess_schedule()))  # the scheduler's copy
    return timetable.next_dagrun_info_v2(
        last_dagrun_info=None, restriction=TimeRestriction(earliest=None, latest=None, catchup=False)
    )


@pytest.mark.parametrize("now", ["2026-11-27T00:05:00", "2026-11-27T02:00:00", "2026-11-27T20:00:00"])
def test_a_new_deployment_waits_for_the_next_tick_not_the_one_just_past(monkeypatch, now):
    """Five minutes after midnight Airflow's default ran yesterday's partition at once, beside the
    one `make demo` (or a user) triggered for it; past partitions are a backfill's to run."""
    info = _first_run(monkeypatch, datetime.fromisoformat(now).replace(tzinfo=UTC))
    assert info.run_after == datetime(2026, 11, 28, tzinfo=UTC)
    assert info.partition_key == "2026-11-27", "the day the tick closes"
