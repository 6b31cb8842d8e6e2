"""tests/cluster's "any cluster" mode, exercised here against a cluster that is not the test's own.

A kubesim harness is started as if it were someone else's cluster (its own namespace, its own
"worker image" holding the DAG files), and the cluster tests' stack connects to it only as it would
to kind or a cloud's cluster: through ``FANOUT_TEST_KUBECONFIG`` and the other settings of
``tests/cluster/target.py``, the Kubernetes API (nothing of the harness's own hooks), an
api-server listening on every interface for the pods, the given worker image and artifact root.
The task-process kill tests of tests/cluster run here unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.stack import ClusterPipeline, cluster_pipeline, dags_folder
from tests.cluster.target import Target
from tests.kubesim import Cluster, default_nodes

NAMESPACE = "fanout-test"
WORKER_IMAGE = "registry.example.com/fanout-airflow:any-cluster-test"


@pytest.fixture(scope="package")
def cp(tmp_path_factory) -> Iterator[ClusterPipeline]:
    workdir = tmp_path_factory.mktemp("any-cluster")
    image_dags = dags_folder(workdir / "image")  # what the worker image bakes in
    artifacts = workdir / "shared-artifacts"  # a volume both the pods and this machine see
    artifacts.mkdir()
    image_env = {"AIRFLOW__CORE__DAGS_FOLDER": str(image_dags)}
    with Cluster(
        default_nodes(), namespace=NAMESPACE, workdir=workdir / "cluster", image_env=image_env
    ) as other:
        target = Target.from_env(
            {
                "FANOUT_TEST_KUBECONFIG": str(other.kubeconfig_path),
                "FANOUT_TEST_NAMESPACE": NAMESPACE,
                "FANOUT_TEST_WORKER_IMAGE": WORKER_IMAGE,
                "FANOUT_TEST_API_HOST": "127.0.0.1",
                "FANOUT_TEST_ARTIFACT_ROOT": str(artifacts),
            }
        )
        with cluster_pipeline(workdir / "test", target=target) as running:
            assert running.harness is None
            yield running
        assert not other.pod_processes(), "pod processes outlived the run"


def pytest_collection_modifyitems(items):
    for item in items:
        if Path(item.fspath).parent == Path(__file__).parent:
            item.add_marker(pytest.mark.cluster)
            item.add_marker(pytest.mark.e2e)
