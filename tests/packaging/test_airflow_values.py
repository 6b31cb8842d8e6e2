"""helm/airflow-values.yaml: the official chart's values for fanout (the chart itself is not here)."""

from __future__ import annotations

import pytest
import yaml

from tests.packaging.helmkit import AIRFLOW_VALUES, NAMESPACE, render_chart


@pytest.fixture(scope="module")
def values() -> dict:
    return yaml.safe_load(AIRFLOW_VALUES.read_text())


def test_every_task_is_a_pod_in_the_worker_namespace(values):
    default_executor = values["executor"].split(",")[0]
    assert default_executor == "fanout.executors.FanoutKubernetesExecutor"
    # The official chart wires pod templates and RBAC when "KubernetesExecutor" is a substring.
    assert "KubernetesExecutor" in default_executor
    assert values["config"]["kubernetes_executor"]["namespace"] == NAMESPACE


def test_secrets_come_from_existing_kubernetes_secrets_and_nothing_has_a_default_password(values):
    assert values["data"]["metadataSecretName"]
    for key in ("fernetKeySecretName", "apiSecretKeySecretName", "jwtSecretName"):
        assert values[key], key
    for plain in ("fernetKey", "apiSecretKey", "jwtSecret", "webserverSecretKey"):
        assert plain not in values
    assert "metadataConnection" not in values["data"]
    assert values["postgresql"]["enabled"] is False
    assert values["createUserJob"]["enabled"] is False


def test_every_component_reads_the_fanout_settings(values):
    configmap, _ = render_chart(show_only=["templates/settings/settings-configmap.yaml"])
    env_from = yaml.safe_load(values["extraEnvFrom"])
    assert {"configMapRef": {"name": configmap["metadata"]["name"]}} in env_from
    assert configmap["data"]["AIRFLOW__LOGGING__REMOTE_LOGGING"] == "True"  # logs outlive pods


def test_control_plane_runs_on_the_system_pool_with_resources(values):
    assert values["nodeSelector"] == {"fanout.io/pool": "system"}
    for component in ("scheduler", "apiServer", "dagProcessor", "triggerer", "migrateDatabaseJob"):
        assert set(values[component]["resources"]) == {"requests", "limits"}, component


def test_queued_timeout_and_worker_pod_settings_are_chosen(values):
    assert values["config"]["scheduler"]["task_queued_timeout"] == 1200
    executor = values["config"]["kubernetes_executor"]
    assert executor["delete_worker_pods"] == "True"
    assert executor["delete_worker_pods_on_failure"] == "False"
    assert executor["worker_pods_creation_batch_size"] > 1


def test_migration_job_creates_the_gpu_airflow_pool_from_the_settings(values):
    script = values["migrateDatabaseJob"]["args"][-1]
    assert 'airflow pools set "$FANOUT_GPU_AIRFLOW_POOL" "$FANOUT_GPU_AIRFLOW_POOL_SLOTS"' in script
