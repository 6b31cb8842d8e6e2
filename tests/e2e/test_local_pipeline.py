"""The pipeline through the real scheduler (LocalExecutor): one trigger runs all three DAGs.

Tests share one Airflow stack (see conftest.py) and run in file order: the whole pipeline
first, then faults and bad input against the artifacts it left.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

from fanout.localstack import AirflowError
from fanout.storage import safe_key
from tests.e2e.conftest import SMALL_PARAMS


def _states(client, dag_id, run_id):
    return {(ti["task_id"], ti["map_index"]): ti for ti in client.task_instances(dag_id, run_id)}


def test_one_partition_flows_through_all_three_dags_and_is_published(airflow, pipeline, outputs, published):
    _, client = airflow
    keys = {client.dag_run(dag_id, run_id)["partition_key"] for dag_id, run_id in pipeline.items()}
    assert len(keys) == 1 and None not in keys, keys
    (key,) = keys
    for kind, name in (("preprocess", "manifest"), ("train", "model"), ("render", "video")):
        pointer = published[f"fanout_{kind}"]
        assert pointer["partition_key"] == key
        assert pointer["run_id"] == pipeline[f"fanout_{kind}"]
        assert pointer[name].startswith(outputs[f"fanout_{kind}"] + "/")


def test_every_task_of_every_dag_succeeded_with_the_expected_fan_out(airflow, pipeline):
    _, client = airflow
    expected_mapped = {
        "fanout_preprocess": ("featurise_shard", SMALL_PARAMS["fanout_preprocess"]["n_shards"]),
        "fanout_train": ("train_trial", SMALL_PARAMS["fanout_train"]["n_trials"]),
        "fanout_render": ("render_chunk", 3),
    }
    for dag_id, run_id in pipeline.items():
        tis = client.task_instances(dag_id, run_id)
        assert {ti["state"] for ti in tis} == {"success"}, (dag_id, [(t["task_id"], t["state"]) for t in tis])
        task_id, count = expected_mapped[dag_id]
        assert sum(1 for ti in tis if ti["task_id"] == task_id and ti["map_index"] >= 0) == count


def test_runs_are_chained_by_assets(airflow, pipeline):
    _, client = airflow
    assert client.dag_run("fanout_preprocess", pipeline["fanout_preprocess"])["run_type"] == "manual"
    for dag_id in ("fanout_train", "fanout_render"):
        assert client.dag_run(dag_id, pipeline[dag_id])["run_type"] == "asset_triggered"


def test_features_manifest_accounts_for_every_row(store, outputs):
    params = SMALL_PARAMS["fanout_preprocess"]
    merged = f"{outputs['fanout_preprocess']}/merged"
    assert store.verified(merged) is not None
    manifest = store.read_json(f"{merged}/manifest.json")
    assert len(manifest["shards"]) == params["n_shards"]
    assert manifest["rows_in"] == params["n_shards"] * params["rows_per_shard"]
    assert 0 < manifest["rows_out"] < manifest["rows_in"], "dirty rows were dropped"
    assert manifest["rows_out"] == sum(s["rows_out"] for s in manifest["shards"])
    assert manifest["rows_out"] == sum(f["rows_out"] for f in manifest["files"])
    for shard in manifest["shards"]:
        assert shard["rows_in"] == shard["rows_out"] + sum(shard["dropped"].values())
    for feature_file in manifest["files"]:
        assert store.sha256(feature_file["path"]) == feature_file["sha256"]


def test_shards_were_generated_by_mapped_tasks_and_featurised_by_the_dask_workers(
    airflow, store, pipeline, outputs
):
    stack, client = airflow
    run_id = pipeline["fanout_preprocess"]
    n_shards = SMALL_PARAMS["fanout_preprocess"]["n_shards"]
    tis = client.task_instances("fanout_preprocess", run_id)
    assert sum(1 for ti in tis if ti["task_id"] == "generate_shard" and ti["map_index"] >= 0) == n_shards

    from distributed import Client

    with Client(stack.dask_cluster.address, set_as_default=False) as dask:
        workers = set(dask.nthreads())
    for index in range(n_shards):
        recorded = store.verified(f"{outputs['fanout_preprocess']}/shards/shard-{index:05d}")
        assert recorded["executor"] == stack.dask_cluster.address
        assert {part["worker"] for part in recorded["parts"]} <= workers, "written by the local workers"


def test_best_model_is_the_lowest_validation_error(store, outputs):
    best = f"{outputs['fanout_train']}/best"
    assert store.verified(best) is not None
    trials_dir = f"{outputs['fanout_train']}/trials"
    trial_rmse = [store.verified(f"{trials_dir}/{name}")["val_rmse"] for name in store.listdir(trials_dir)]
    assert len(trial_rmse) == SMALL_PARAMS["fanout_train"]["n_trials"]
    assert store.verified(best)["val_rmse"] == min(trial_rmse)
    for name in ("model.pt", "metrics.json"):
        assert store.exists(f"{best}/{name}")


def test_video_has_every_frame(store, outputs):
    import imageio.v2 as imageio

    video = f"{outputs['fanout_render']}/video"
    assert store.verified(video) is not None
    with store.local_copy(f"{video}/render.mp4") as path, imageio.get_reader(path) as reader:
        frames = [frame.shape for frame in reader]
    params = SMALL_PARAMS["fanout_render"]
    assert len(frames) == params["n_frames"]
    assert frames[0][:2] == (params["height"], params["width"])


def _process_of(ti_id: str) -> int | None:
    """The pid of the task runner process of a task instance (its title names the TI id)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if f"airflow worker -- {ti_id}" in cmdline:
            return int(proc.name)
    return None


def test_sigkilled_mapped_task_is_retried_and_outputs_are_intact(airflow, store):
    """Kill the process of a running render chunk; the retry must finish the run correctly."""
    from fanout import render

    _, client = airflow
    conf = {"n_frames": 8, "chunk_size": 4, "width": 96, "height": 54, "samples": 6}
    run_id = client.trigger("fanout_render", conf)
    victim = ("render_chunk", 1)
    deadline = time.monotonic() + 180
    pid = None
    while pid is None:
        assert time.monotonic() < deadline, "the chunk never ran"
        ti = _states(client, "fanout_render", run_id).get(victim)
        if ti and ti["state"] == "running":
            pid = _process_of(ti["id"])
        elif ti and ti["state"] == "success":
            pytest.fail("the chunk finished before it could be killed; make it heavier")
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)

    run = client.wait_run("fanout_render", run_id, timeout=300)
    assert run["state"] == "success"
    ti = _states(client, "fanout_render", run_id)[victim]
    assert ti["try_number"] == 2, "the killed try was retried once"

    # The retried chunk is exactly what an undisturbed render of the same frames gives.
    chunk_unit = f"render/{safe_key(run_id)}/chunks/chunk-0001"
    retried = store.verified(chunk_unit)
    assert retried is not None
    reference_store = type(store)(str(Path(store.root_uri) / "reference"))
    render.render_chunk(
        reference_store,
        "chunk",
        start=4,
        stop=8,
        n_frames=8,
        width=96,
        height=54,
        samples=6,
        seed=3,
        texture=None,
        device="cpu",
    )
    assert reference_store.verified("chunk")["files"] == retried["files"]
    assert not [n for n in store.listdir(chunk_unit) if n.endswith(".tmp") or ".tmp" in n]


def test_the_execution_api_was_built_before_the_first_task_started(airflow, pipeline):
    """The api-server builds its Execution API on the first request to it (seconds): the stack's
    start makes that request, so no task's start waits for it."""
    stack, _ = airflow
    log = (stack.home / "logs" / "api-server.log").read_text()
    paths = re.findall(r"path=(/execution/\S*)", log)
    assert paths[0] == "/execution/health", paths[:3]
    assert any(p.startswith("/execution/task-instances/") for p in paths), "tasks came after"


def test_preparing_a_running_stack_again_keeps_its_pools(airflow):
    """``make up`` after ``make demo`` reuses the database: the GPU pool exists and is resized."""
    from fanout.demo import prepare

    stack, client = airflow
    prepare(client, stack)
    pools = {p["name"]: p["slots"] for p in client.get("/pools")["pools"]}
    assert pools["fanout_gpu"] == stack.parallelism


def test_bad_param_is_rejected_at_trigger_naming_it(airflow):
    _, client = airflow
    with pytest.raises(AirflowError, match="n_shards"):
        client.trigger("fanout_preprocess", {"n_shards": 0})


def test_corrupt_shard_fails_fast_and_keeps_earlier_outputs(airflow, store, outputs):
    _, client = airflow
    merged = f"{outputs['fanout_preprocess']}/merged"
    before = store.verified(merged)
    # A user dataset of one good shard (a copy of a generated one) and one truncated copy.
    raw_root = _generated_dataset(store, outputs)
    first = next(name for name in store.listdir(raw_root) if name.endswith(".parquet"))
    raw = store.read_bytes(f"{raw_root}/{first}")
    store.write_bytes("datasets/user-upload/part-0.parquet", raw)
    store.write_bytes("datasets/user-upload/part-1.parquet", raw[: len(raw) // 2])

    run_id = client.trigger("fanout_preprocess", {"dataset_prefix": "datasets/user-upload"})
    run = client.wait_run("fanout_preprocess", run_id, timeout=300)
    assert run["state"] == "failed"
    tis = _states(client, "fanout_preprocess", run_id)
    broken = tis["featurise_shard", 1]
    assert broken["state"] == "failed"
    assert broken["try_number"] == 1, "bad input must not spend retries"
    log = client.task_log("fanout_preprocess", run_id, "featurise_shard", 1, map_index=1)
    assert "part-1.parquet" in log
    assert tis["featurise_shard", 0]["state"] == "success"
    assert tis["merge_stats", -1]["state"] == "upstream_failed"
    # What the earlier run wrote is untouched and still verifies.
    assert store.verified(merged) == before


def _generated_dataset(store, outputs) -> str:
    """Where the pipeline's synthetic partition is (SMALL_PARAMS with the DAG's other defaults)."""
    from fanout.datasets import SyntheticSpec

    params = SMALL_PARAMS["fanout_preprocess"]
    key = outputs["fanout_preprocess"].split("/")[2]  # preprocess/partitions/<key>/<run>
    return SyntheticSpec(
        n_shards=params["n_shards"], rows_per_shard=params["rows_per_shard"], seed=7, partition=key
    ).default_prefix()
