"""Scheduled runs, one data partition per run, and backfills through the real scheduler.

Two small stacks of their own (tiny params for all three DAGs, no Dask: test_local_pipeline runs
the pipeline at test scale on the shared Dask cluster): one with a one-minute cadence, to watch a
scheduled run start by itself; one with the daily default, where three past days are backfilled,
one of them re-run, and bad keys refused.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime

import pytest

from fanout.demo import prepare
from fanout.localstack import AirflowError, AirflowStack
from fanout.partitions import run_prefix
from fanout.storage import ArtifactStore

PREPROCESS, TRAIN, RENDER = "fanout_preprocess", "fanout_train", "fanout_render"
KINDS = {PREPROCESS: "preprocess", TRAIN: "train", RENDER: "render"}
FAST = "* * * * *"
BACKFILL_DAYS = ("2026-11-20", "2026-11-21", "2026-11-22")
# Tiny partitions, models and videos: the point is the runs, not the rows.
TINY = {"n_shards": 2, "rows_per_shard": 2_000}
TINY_PARAMS = {
    PREPROCESS: TINY,
    TRAIN: {"n_trials": 1, "epochs": 1, "max_rows": 1_000},
    RENDER: {"n_frames": 2, "chunk_size": 2, "width": 32, "height": 18, "samples": 1, "fps": 2},
}


def _stack(tmp_path_factory, name: str, **env: str) -> tuple[AirflowStack, ArtifactStore]:
    """A small stack of its own: tiny params, no Dask (a shard's graph runs inside its task)."""
    root = tmp_path_factory.mktemp(f"{name}-artifacts")
    stack = AirflowStack(
        home=tmp_path_factory.mktemp(f"{name}-airflow-home"),
        parallelism=2,
        extra_env={
            "FANOUT_ARTIFACT_ROOT": str(root),
            "FANOUT_PARAMS": json.dumps(TINY_PARAMS),
            "FANOUT_RETRY_DELAY_SECONDS": "1",
            "FANOUT_DEVICE": "cpu",
            **env,
        },
    )
    return stack, ArtifactStore(str(root))


def _runs(client, dag_id: str) -> list[dict]:
    return client.get(f"/dags/{dag_id}/dagRuns", order_by="-run_after", limit=100)["dag_runs"]


def _wait(predicate, timeout: float, what: str, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except OSError:  # a busy machine: the api-server answers a request late; ask again
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AirflowError(f"{what}: not within {timeout}s")
        time.sleep(interval)


def _ended(client, dag_id: str, run_id: str, timeout: float = 300) -> dict:
    """The run once it has ended."""
    return _wait(
        lambda: (run := client.dag_run(dag_id, run_id))["state"] in ("success", "failed") and run,
        timeout,
        f"{dag_id} {run_id} ended",
    )


def _run_of(client, dag_id: str, key: str, after: str = "") -> dict | None:
    """The newest run of ``dag_id`` for partition ``key`` queued after ``after`` (ISO time), if any."""
    runs = [r for r in _runs(client, dag_id) if r["partition_key"] == key and (r["queued_at"] or "") > after]
    return max(runs, key=lambda r: r["queued_at"]) if runs else None


def _finished(client, dag_id: str, key: str, after: str = "", timeout: float = 300) -> dict:
    run = _wait(lambda: _run_of(client, dag_id, key, after), timeout, f"a {dag_id} run of {key}")
    return _ended(client, dag_id, run["dag_run_id"], timeout)


def _pipeline_of(client, key: str, after: str = "") -> dict[str, dict]:
    """The three runs of partition ``key`` (queued after ``after``), each waited for."""
    return {dag_id: _finished(client, dag_id, key, after) for dag_id in KINDS}


def _features(store, key: str) -> dict:
    """The features manifest partition ``key`` currently publishes."""
    return store.read_json(store.read_json(f"preprocess/partitions/{key}/current.json")["manifest"])


def _checksums(store, prefixes: list[str]) -> dict[str, str]:
    return {f"{p}/{rel}": store.sha256(f"{p}/{rel}") for p in prefixes for rel in store.files(p)}


@pytest.fixture
def fast_stack(tmp_path_factory):
    """A stack whose schedule fires every minute (the compressed cadence), only preprocessing
    unpaused: it shows that the scheduler starts runs by itself; it stops after its test."""
    stack, store = _stack(tmp_path_factory, "fast", FANOUT_SCHEDULE=FAST)
    client = stack.start()
    try:
        prepare(client, stack)
        yield client, store
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def airflow(tmp_path_factory):
    """The daily default schedule; backfills, re-runs and bad keys (its own stack: tiny params)."""
    stack, store = _stack(tmp_path_factory, "partitioned")
    client = stack.start()
    try:
        prepare(client, stack)
        yield stack, client, store
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def store(airflow):
    return airflow[2]


def test_a_scheduled_run_starts_on_its_own_for_the_partition_its_tick_closes(fast_stack):
    client, store = fast_stack
    assert client.get(f"/dags/{PREPROCESS}")["timetable_summary"] == FAST
    client.unpause(PREPROCESS)
    scheduled = _wait(
        lambda: [r for r in _runs(client, PREPROCESS) if r["run_type"] == "scheduled"],
        150,
        "a scheduled run of fanout_preprocess",
    )[-1]
    key = scheduled["partition_key"]
    tick = datetime.fromisoformat(scheduled["run_after"]).astimezone(UTC)
    # run_offset=-1: the run at a tick covers the minute before it.
    assert key == datetime.fromtimestamp(tick.timestamp() - 60, UTC).strftime("%Y-%m-%dT%H%M")
    assert _ended(client, PREPROCESS, scheduled["dag_run_id"])["state"] == "success"
    pointer = store.read_json(f"preprocess/partitions/{key}/current.json")
    assert pointer["run_id"] == scheduled["dag_run_id"]
    manifest = store.read_json(pointer["manifest"])
    assert manifest["rows_in"] == TINY["n_shards"] * TINY["rows_per_shard"]
    assert store.read_json("preprocess/latest.json")["partition_key"] == key


@pytest.fixture(scope="module")
def backfill(airflow):
    """Three past days backfilled through the api-server (what the UI's Backfill dialog posts)."""
    _, client, _ = airflow
    for dag_id in KINDS:
        client.unpause(dag_id)
    started = datetime.now(UTC).isoformat()
    created = client.post(
        "/backfills",
        {
            "dag_id": PREPROCESS,
            "from_date": f"{BACKFILL_DAYS[0]}T00:00:00Z",
            "to_date": f"{BACKFILL_DAYS[-1]}T00:00:00Z",
            "max_active_runs": 2,
            "dag_run_conf": TINY,
        },
    )
    most_running = 0

    def done() -> bool:
        nonlocal most_running
        runs = [r for r in _runs(client, PREPROCESS) if r["run_type"] == "backfill"]
        most_running = max(most_running, sum(r["state"] == "running" for r in runs))
        return len(runs) == 3 and all(r["state"] in ("success", "failed") for r in runs)

    _wait(done, 600, "the backfill's three preprocessing runs", interval=0.5)
    runs = {key: _pipeline_of(client, key, started) for key in BACKFILL_DAYS}
    return {"id": created["id"], "runs": runs, "most_running": most_running}


def test_a_backfill_of_three_days_gives_three_partitions_of_features_models_and_videos(backfill, store):
    import imageio.v2 as imageio

    for key in BACKFILL_DAYS:
        for dag_id, kind in KINDS.items():
            run = backfill["runs"][key][dag_id]
            assert run["state"] == "success", (key, dag_id)
            assert run["run_type"] == ("backfill" if dag_id == PREPROCESS else "asset_triggered")
            pointer = store.read_json(f"{kind}/partitions/{key}/current.json")
            assert pointer["run_id"] == run["dag_run_id"]
            assert pointer["prefix"] == run_prefix(kind, run["dag_run_id"], key)
        manifest = _features(store, key)
        assert manifest["rows_in"] == TINY["n_shards"] * TINY["rows_per_shard"]
        assert store.verified(f"{run_prefix('train', backfill['runs'][key][TRAIN]['dag_run_id'], key)}/best")
        video = store.read_json(f"render/partitions/{key}/current.json")["video"]
        assert store.verified(video.removesuffix("/render.mp4")) is not None
        with store.local_copy(video) as path, imageio.get_reader(path) as reader:
            assert sum(1 for _ in reader) > 0
    # Each day drew its own rows.
    digests = {key: tuple(f["sha256"] for f in _features(store, key)["files"]) for key in BACKFILL_DAYS}
    assert len(set(digests.values())) == 3


def test_the_backfill_ran_at_most_its_bound_of_partitions_at_once(backfill):
    assert 1 <= backfill["most_running"] <= 2


def test_catchup_is_off_after_the_backfill_only_the_latest_closed_partition_is_scheduled(airflow, backfill):
    """The days between the backfill and today are not run in a burst: only the last tick's partition."""
    _, client, _ = airflow
    yesterday = datetime.fromtimestamp(time.time() - 86_400, UTC).strftime("%Y-%m-%d")
    scheduled = _wait(
        lambda: [r for r in _runs(client, PREPROCESS) if r["run_type"] == "scheduled"],
        120,
        "the scheduled run of the latest partition",
    )
    assert [r["partition_key"] for r in scheduled] == [yesterday]
    assert _ended(client, PREPROCESS, scheduled[0]["dag_run_id"])["state"] == "success"


def test_latest_names_the_newest_partition(backfill, store):
    for kind in KINDS.values():
        keys = [
            k
            for k in store.listdir(f"{kind}/partitions")
            if store.exists(f"{kind}/partitions/{k}/current.json")
        ]
        assert store.read_json(f"{kind}/latest.json")["partition_key"] == max(keys)


def test_rerunning_one_partition_replaces_it_and_leaves_the_others_untouched(airflow, backfill, store):
    stack, client, _ = airflow
    others = [
        store.read_json(f"{kind}/partitions/{key}/current.json")["prefix"]
        for key in (BACKFILL_DAYS[0], BACKFILL_DAYS[2])
        for kind in KINDS.values()
    ]
    before = _checksums(store, others)
    pointers_before = {
        (kind, key): store.read_bytes(f"{kind}/partitions/{key}/current.json")
        for key in (BACKFILL_DAYS[0], BACKFILL_DAYS[2])
        for kind in KINDS.values()
    }
    key = BACKFILL_DAYS[1]
    old = store.read_json(f"preprocess/partitions/{key}/current.json")
    # One backfill per DAG at a time: the scheduler closes the first once its runs are done.
    _wait(lambda: client.get(f"/backfills/{backfill['id']}")["completed_at"], 120, "the backfill completed")
    started = datetime.now(UTC).isoformat()
    # The CLI's way to redo one partition: a one-day backfill that reprocesses completed runs.
    command = ["backfill", "create", "--dag-id", PREPROCESS, "--from-date", key, "--to-date", key]
    redo = ["--reprocess-behavior", "completed", "--dag-run-conf", json.dumps(TINY)]
    done = subprocess.run(
        [sys.executable, "-m", "airflow", *command, *redo],
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    runs = _pipeline_of(client, key, started)
    assert {dag_id: r["state"] for dag_id, r in runs.items()} == dict.fromkeys(KINDS, "success")

    new = store.read_json(f"preprocess/partitions/{key}/current.json")
    assert new["run_id"] == runs[PREPROCESS]["dag_run_id"] != old["run_id"]
    # Same partition, same params: byte-identical features in the new generation.
    assert [f["sha256"] for f in store.read_json(new["manifest"])["files"]] == [
        f["sha256"] for f in store.read_json(old["manifest"])["files"]
    ]
    assert _checksums(store, others) == before
    assert {
        (kind, k): store.read_bytes(f"{kind}/partitions/{k}/current.json") for kind, k in pointers_before
    } == pointers_before


@pytest.mark.parametrize(
    ("key", "expected"),
    [("2026-13-45", "does not match"), ("../../etc", "does not match")],
    ids=["no-such-month", "traversal"],
)
def test_a_malformed_partition_key_is_refused_at_trigger(airflow, key, expected):
    _, client, _ = airflow
    before = len(_runs(client, PREPROCESS))
    with pytest.raises(AirflowError, match="HTTP 400") as err:
        client.trigger(PREPROCESS, TINY, partition_key=key)
    assert expected in str(err.value) and key in str(err.value)
    assert len(_runs(client, PREPROCESS)) == before, "no run was created"


@pytest.mark.parametrize(
    ("dag_id", "planner", "key", "expected"),
    [
        (PREPROCESS, "plan_dataset", "2026-1-5", "partition key '2026-1-5' is not a partition of the data"),
        (TRAIN, "plan_trials", "2025-01-01", "no published features of this run's partition"),
    ],
    ids=["non-canonical-key", "partition-never-preprocessed"],
)
def test_an_unknown_partition_key_fails_planning_once_writing_nothing(
    airflow, store, dag_id, planner, key, expected
):
    _, client, _ = airflow
    client.unpause(dag_id)
    run_id = client.trigger(dag_id, TINY if dag_id == PREPROCESS else {}, partition_key=key)
    assert _ended(client, dag_id, run_id, 180)["state"] == "failed"
    plan = {ti["task_id"]: ti for ti in client.task_instances(dag_id, run_id)}[planner]
    assert plan["state"] == "failed" and plan["try_number"] == 1, "bad input must not spend retries"
    assert expected in client.task_log(dag_id, run_id, planner, 1)
    assert not store.exists(f"{KINDS[dag_id]}/partitions/{key}")
