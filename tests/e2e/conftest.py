"""A real Airflow (api-server, scheduler, dag-processor; fanout's LocalExecutor; PostgreSQL) and a
real Dask scheduler with two worker processes beside it (``dask scheduler``, ``dask worker``) for
the session, and the pipeline run once through it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fanout.localstack import AirflowStack

# The pipeline at test scale: big enough to fan out, small enough for 2 cores in CI.
SMALL_PARAMS = {
    "fanout_preprocess": {"n_shards": 3, "rows_per_shard": 20_000},
    "fanout_train": {"n_trials": 2, "epochs": 3, "max_rows": 20_000},
    "fanout_render": {"n_frames": 12, "chunk_size": 4, "width": 64, "height": 36, "samples": 1, "fps": 12},
}


DASK_WORKERS = "FANOUT_E2E_DASK_WORKERS"


@pytest.fixture(scope="session")
def artifact_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="session")
def airflow(tmp_path_factory, artifact_root):
    """A running stack and its REST client; every component is stopped at the end."""
    stack = AirflowStack(
        home=tmp_path_factory.mktemp("airflow-home"),
        parallelism=2,
        dask=True,
        # test_teardown's three concurrent inner sessions take one each: 2 cores, 3 stacks.
        dask_workers=int(os.environ.get(DASK_WORKERS, "2")),
        ephemeral=True,  # its database goes with it, even if pytest is killed
        extra_env={
            "FANOUT_ARTIFACT_ROOT": str(artifact_root),
            "FANOUT_PARAMS": json.dumps(SMALL_PARAMS),
            "FANOUT_RETRY_DELAY_SECONDS": "1",
            "FANOUT_DEVICE": "cpu",
        },
    )
    client = stack.start()
    try:
        from fanout.demo import prepare

        prepare(client, stack)
        yield stack, client
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def pipeline(airflow):
    """The three runs of one undisturbed pipeline trigger: {dag_id: run_id}."""
    from fanout.demo import PIPELINE, run_pipeline

    _, client = airflow
    reports = run_pipeline(client, timeout=600)
    assert [(r.dag_id, r.state) for r in reports] == [(d, "success") for d in PIPELINE]
    return {r.dag_id: r.run_id for r in reports}


@pytest.fixture(scope="session")
def outputs(airflow, pipeline):
    """Where each run of ``pipeline`` wrote: its generation of the partition it covers."""
    from fanout.partitions import run_prefix

    _, client = airflow
    return {
        dag_id: run_prefix(
            dag_id.removeprefix("fanout_"), run_id, client.dag_run(dag_id, run_id)["partition_key"]
        )
        for dag_id, run_id in pipeline.items()
    }


@pytest.fixture(scope="session")
def published(airflow, pipeline, artifact_root):
    """Each DAG's ``current.json`` of ``pipeline``'s partition as the pipeline left it: {dag_id: pointer}.

    Read once, right after the pipeline: test_chaos re-runs the same partition and moves them.
    """
    from fanout.partitions import current
    from fanout.storage import ArtifactStore

    _, client = airflow
    key = client.dag_run("fanout_preprocess", pipeline["fanout_preprocess"])["partition_key"]
    return {
        dag_id: current(ArtifactStore(str(artifact_root)), dag_id.removeprefix("fanout_"), key)
        for dag_id in pipeline
    }


@pytest.fixture
def store(artifact_root):
    from fanout.storage import ArtifactStore

    return ArtifactStore(str(artifact_root))


def pytest_collection_modifyitems(items):
    for item in items:
        if Path(item.fspath).parent == Path(__file__).parent:
            item.add_marker(pytest.mark.e2e)
