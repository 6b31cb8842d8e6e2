"""One cluster with fanout's Airflow on it, for this package: the harness (two CPU nodes, one GPU
node), or any cluster given ``FANOUT_TEST_KUBECONFIG`` and the settings of ``target.py``.

Every test here is marked ``cluster`` and ``e2e``. ``FANOUT_CLUSTER_TEST_ENV`` (a JSON object)
overrides settings of the components and the fanout-settings ConfigMap: node-pool labels of a real
cluster, or deliberately broken settings (tests/cluster/FIDELITY.md), e.g.
``FANOUT_CLUSTER_TEST_ENV='{"FANOUT_RETRIES": "0"}' pytest tests/cluster``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fanout.demo import PIPELINE
from tests.cluster.stack import ClusterPipeline, cluster_pipeline, run_pipeline_on
from tests.cluster.target import Target


# Package scope: the cluster and Airflow stop once the last test here ran, not at the session's end.
@pytest.fixture(scope="package")
def cp(tmp_path_factory) -> Iterator[ClusterPipeline]:
    target = Target.from_env()
    with cluster_pipeline(tmp_path_factory.mktemp("cluster-pipeline"), target=target) as running:
        yield running
    if running.harness is not None:
        assert not running.harness.pod_processes(), "pod processes outlived the cluster"


@dataclass
class PipelineRun:
    """The three runs of one undisturbed pipeline trigger."""

    run_ids: dict[str, str]  # dag_id -> run_id
    task_instances: dict[str, list[dict]]  # dag_id -> its task instances
    prefixes: dict[str, str]  # dag_id -> where its run wrote (fanout.partitions.run_prefix)

    def tis(self, dag_id: str, task_id: str) -> list[dict]:
        return [ti for ti in self.task_instances[dag_id] if ti["task_id"] == task_id]


@pytest.fixture(scope="package")
def pipeline(cp: ClusterPipeline) -> PipelineRun:
    """Trigger preprocessing once; the assets trigger training, then rendering."""
    reports = run_pipeline_on(cp)
    assert [(r.dag_id, r.state) for r in reports] == [(dag_id, "success") for dag_id in PIPELINE]
    run_ids = {r.dag_id: r.run_id for r in reports}
    # The last pods exit a moment after their tasks reported success (the supervisor's exit delay).
    for dag_id, run_id in run_ids.items():
        for record in cp.pods_of(dag_id, run_id):
            cp.pods.wait_for(
                lambda r=record: r.finished_at, timeout=30, message=f"{record.name} never exited"
            )
    return PipelineRun(
        run_ids,
        {dag_id: cp.client.task_instances(dag_id, run_id) for dag_id, run_id in run_ids.items()},
        {r.dag_id: r.prefix for r in reports},
    )


def pytest_collection_modifyitems(items):
    for item in items:
        if Path(item.fspath).parent == Path(__file__).parent:
            item.add_marker(pytest.mark.cluster)
            item.add_marker(pytest.mark.e2e)
