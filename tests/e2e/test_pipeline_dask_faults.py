"""Faults of the shared Dask cluster under a real preprocessing run (the session's stack).

A worker process SIGKILLed mid-shard is Dask's to recover: the lost partitions are recomputed
on another worker and the Airflow task succeeds on its first try, with the bytes of an
undisturbed run. A lost scheduler fails the task's try with a clear message; the local stack
restarts the scheduler (as Kubernetes restarts its Deployment) and the Airflow retry succeeds.
The scheduler test runs last: the cluster it leaves behind is a restarted one.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from fanout import daskrun
from fanout.storage import safe_key

# One shard big enough to be caught mid-flight: 5 partitions of 0.1-0.5 s on 2 busy cores.
HEAVY_SHARD = {"n_shards": 1, "rows_per_shard": 500_000}


@pytest.fixture
def dask_client(airflow):
    from distributed import Client

    stack, _ = airflow
    client = Client(stack.dask_cluster.address, timeout=60, set_as_default=False)
    yield client
    client.close()


def _featurising(dask_client, airflow, run_id: str, timeout: float = 240) -> tuple[str, list]:
    """Wait until a worker is busy with a ``featurise-part`` task: ``(its address, its keys)``."""
    _, client = airflow
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for worker, keys in dask_client.processing().items():
            parts = [key for key in keys if "featurise-part" in str(key)]
            if parts:
                return worker, parts
        if client.dag_run("fanout_preprocess", run_id)["state"] in ("success", "failed"):
            pytest.fail("the run ended before any partition was caught computing")
        time.sleep(0.02)
    pytest.fail("no partition started computing")


def _shard_task(client, run_id: str) -> dict:
    (ti,) = [
        ti
        for ti in client.task_instances("fanout_preprocess", run_id)
        if ti["task_id"] == "featurise_shard" and ti["map_index"] == 0
    ]
    return ti


def _undisturbed(store, unit: str, monkeypatch) -> dict:
    """The same raw shard featurised again, in this process and without any fault."""
    recorded = store.verified(unit)
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    daskrun.featurise_shard(store, recorded["raw"], f"reference/{unit}")
    return store.verified(f"reference/{unit}")


def test_sigkilled_dask_worker_is_recomputed_without_spending_a_retry(
    airflow, store, dask_client, monkeypatch
):
    _, client = airflow
    run_id = client.trigger("fanout_preprocess", {**HEAVY_SHARD, "seed": 101})
    worker, keys = _featurising(dask_client, airflow, run_id)
    pid = dask_client.run(os.getpid, workers=[worker])[worker]
    os.kill(pid, signal.SIGKILL)

    run = client.wait_run("fanout_preprocess", run_id, timeout=300)
    assert run["state"] == "success"
    ti = _shard_task(client, run_id)
    assert (ti["state"], ti["try_number"]) == ("success", 1), "Dask recovered; Airflow spent no retry"

    unit = f"preprocess/{safe_key(run_id)}/shards/shard-00000"
    recorded = store.verified(unit)
    writers = {int(part["path"][-13:-8]): part["worker"] for part in recorded["parts"]}
    for key in keys:
        assert writers[key[1]] != worker, f"partition {key[1]} was recomputed on another worker"
    assert recorded["files"] == _undisturbed(store, unit, monkeypatch)["files"], "byte-identical outputs"
    assert store.listdir(unit) == ["_SUCCESS.json", "features", "stats.json"], "no staged leftovers"
    dask_client.wait_for_workers(2, timeout=60)  # the nanny restarted the killed worker


def test_lost_dask_scheduler_fails_the_try_clearly_and_the_retry_succeeds(
    airflow, store, dask_client, monkeypatch
):
    stack, client = airflow
    restarts = stack.dask_cluster.restarts["scheduler"]
    run_id = client.trigger("fanout_preprocess", {**HEAVY_SHARD, "seed": 102})
    _featurising(dask_client, airflow, run_id)
    dask_client.close()
    os.kill(stack.dask_cluster.pids()["scheduler"], signal.SIGKILL)

    run = client.wait_run("fanout_preprocess", run_id, timeout=300)
    assert run["state"] == "success"
    ti = _shard_task(client, run_id)
    assert (ti["state"], ti["try_number"]) == ("success", 2), (
        "one try lost with the scheduler, its retry done"
    )
    first_try = client.task_log("fanout_preprocess", run_id, "featurise_shard", 1, map_index=0)
    assert f"lost the Dask scheduler {stack.dask_cluster.address}" in first_try
    assert stack.dask_cluster.restarts["scheduler"] == restarts + 1

    unit = f"preprocess/{safe_key(run_id)}/shards/shard-00000"
    assert store.verified(unit)["files"] == _undisturbed(store, unit, monkeypatch)["files"]
