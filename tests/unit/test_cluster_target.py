"""tests/cluster's target settings: the harness by default; any cluster with a kubeconfig, and errors
that name the missing or malformed variable."""

from __future__ import annotations

import pytest

from tests.cluster.target import Target, TargetError


def test_without_a_kubeconfig_the_harness_is_the_target():
    target = Target.from_env({"FANOUT_CLUSTER_TEST_ENV": '{"FANOUT_RETRIES": "0"}'})
    assert target.is_harness and target.extra_env == {"FANOUT_RETRIES": "0"}


def test_a_kubeconfig_needs_namespace_image_api_host_and_artifacts(tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    with pytest.raises(
        TargetError, match="FANOUT_TEST_NAMESPACE, FANOUT_TEST_WORKER_IMAGE, FANOUT_TEST_API_HOST"
    ):
        Target.from_env({"FANOUT_TEST_KUBECONFIG": str(kubeconfig)})
    env = {
        "FANOUT_TEST_KUBECONFIG": str(kubeconfig),
        "FANOUT_TEST_NAMESPACE": "fanout-test",
        "FANOUT_TEST_WORKER_IMAGE": "registry.example.com:5000/fanout-airflow:abc123",
        "FANOUT_TEST_API_HOST": "172.18.0.1",
        "FANOUT_TEST_ARTIFACT_ROOT": "s3://bucket/fanout",
    }
    with pytest.raises(
        TargetError, match="FANOUT_TEST_LOCAL_ARTIFACT_ROOT='s3://bucket/fanout' must be a directory"
    ):
        Target.from_env(env)
    target = Target.from_env({**env, "FANOUT_TEST_LOCAL_ARTIFACT_ROOT": str(tmp_path)})
    assert not target.is_harness and target.local_artifact_root == tmp_path
    assert target.worker_image_config() == {
        "AIRFLOW__KUBERNETES_EXECUTOR__WORKER_CONTAINER_REPOSITORY": "registry.example.com:5000/fanout-airflow",
        "AIRFLOW__KUBERNETES_EXECUTOR__WORKER_CONTAINER_TAG": "abc123",
    }


@pytest.mark.parametrize("value", ["{not json", '["a"]', '{"FANOUT_RETRIES": 0}'])
def test_the_settings_json_must_be_an_object_of_strings(value):
    with pytest.raises(TargetError, match="FANOUT_CLUSTER_TEST_ENV"):
        Target.from_env({"FANOUT_CLUSTER_TEST_ENV": value})


def test_an_untagged_image_from_a_registry_with_a_port_is_latest():
    target = Target(worker_image="registry.example.com:5000/fanout-airflow")
    assert target.worker_image_config()["AIRFLOW__KUBERNETES_EXECUTOR__WORKER_CONTAINER_REPOSITORY"] == (
        "registry.example.com:5000/fanout-airflow"
    )
