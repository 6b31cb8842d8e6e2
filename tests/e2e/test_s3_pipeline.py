"""The pipeline on object storage: artifacts and task logs on a real S3-compatible server.

A stack of its own (the module's) runs with ``FANOUT_ARTIFACT_ROOT=s3://...`` and Airflow's
remote logging to the same server (moto on loopback, ``tests/s3.py``), with the endpoint in the
log connection's extra, as on a cluster whose worker pods are deleted after their task; its Dask
workers get the same credentials and write the features to the bucket themselves. One trigger
runs the three DAGs at test scale; then the local log files are deleted and every task's log is
read back through the REST API.
"""

from __future__ import annotations

import json
import shutil

import pytest

from fanout.demo import PIPELINE, prepare, run_pipeline
from fanout.localstack import AirflowStack
from fanout.storage import ArtifactStore
from tests.e2e.conftest import SMALL_PARAMS

BUCKET = "fanout-e2e"
ARTIFACT_ROOT = f"s3://{BUCKET}/artifacts"
LOG_FOLDER = f"s3://{BUCKET}/logs"


@pytest.fixture(scope="module")
def s3_stack(s3_server, tmp_path_factory):
    """A stack on S3 that has run the pipeline once: (stack, client, {dag_id: run_id})."""
    s3_server.create_bucket(BUCKET)
    stack = AirflowStack(
        home=tmp_path_factory.mktemp("airflow-home-s3"),
        parallelism=2,
        dask=True,
        dask_workers=2,
        extra_env={
            **s3_server.env(),
            **s3_server.remote_logging_env(LOG_FOLDER),
            "FANOUT_ARTIFACT_ROOT": ARTIFACT_ROOT,
            "FANOUT_PARAMS": json.dumps(SMALL_PARAMS),
            "FANOUT_RETRY_DELAY_SECONDS": "1",
            "FANOUT_DEVICE": "cpu",
        },
    )
    client = stack.start()
    try:
        prepare(client, stack)
        reports = run_pipeline(client, timeout=600)
        assert [(r.dag_id, r.state) for r in reports] == [(d, "success") for d in PIPELINE]
        yield stack, client, {r.dag_id: r for r in reports}
    finally:
        stack.stop()


@pytest.fixture
def s3_store(s3_server, monkeypatch):
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return ArtifactStore(ARTIFACT_ROOT)


def test_every_output_is_committed_in_the_bucket(s3_stack, s3_store, s3_server):
    _, _, reports = s3_stack
    prefixes = {dag_id: report.prefix for dag_id, report in reports.items()}
    units = [
        f"{prefixes['fanout_preprocess']}/merged",
        f"{prefixes['fanout_train']}/best",
        f"{prefixes['fanout_render']}/video",
    ]
    for unit in units:
        assert s3_store.verified(unit) is not None, unit
    keys = s3_server.keys(BUCKET, "artifacts/")
    for shard in range(SMALL_PARAMS["fanout_preprocess"]["n_shards"]):
        unit = f"{prefixes['fanout_preprocess']}/shards/shard-{shard:05d}"
        assert f"artifacts/{unit}/features/part-00000.parquet" in keys
        assert s3_store.verified(unit)["executor"].startswith("tcp://"), "written by the Dask workers"
    assert f"artifacts/{prefixes['fanout_render']}/video/render.mp4" in keys


def test_every_task_log_is_read_from_the_bucket_after_local_logs_are_gone(s3_stack, s3_server):
    stack, client, reports = s3_stack
    runs = {dag_id: report.run_id for dag_id, report in reports.items()}
    local_logs = sorted((stack.home / "logs").glob("dag_id=*"))
    assert local_logs, "the tasks wrote local log files first"
    for folder in local_logs:
        shutil.rmtree(folder)

    uploaded = s3_server.keys(BUCKET, "logs/")
    read = 0
    for dag_id, run_id in runs.items():
        for ti in client.task_instances(dag_id, run_id):
            log = client.task_log(dag_id, run_id, ti["task_id"], ti["try_number"], map_index=ti["map_index"])
            where = f"{ti['task_id']}[{ti['map_index']}] of {dag_id}"
            source = f"{LOG_FOLDER}/dag_id={dag_id}/run_id={run_id}/task_id={ti['task_id']}/"
            assert source in log, f"{where}: not read from the bucket:\n{log[:1500]}"
            # What the task itself logged, not only the reader's header.
            assert "Task finished" in log or "Done. Returned value" in log, f"{where}:\n{log[-1500:]}"
            read += 1
    assert read == len(uploaded), (read, uploaded)
