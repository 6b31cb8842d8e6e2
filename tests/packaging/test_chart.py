"""helm/fanout: rendered objects are valid Kubernetes and do what the values say."""

from __future__ import annotations

import json

import jmespath
import kubernetes_validate
import pytest
import yaml

from tests.packaging.helmkit import CHART, KUBE_VERSIONS, NAMESPACE, HelmError, render_chart, run_helm

GKE = {
    "nodePools": {
        "cpu": {
            "selector": "cloud.google.com/gke-nodepool=cpu-pool",
            "taints": [{"key": "dedicated", "value": "batch", "effect": "NoSchedule"}],
        },
        "gpu": {"selector": "cloud.google.com/gke-nodepool=gpu-pool", "gpus": 8},
        "renderPool": "cpu",
    },
    "airflow": {"lightTaskExecutor": "LocalExecutor"},
}
PVC = {"storage": {"mode": "pvc", "pvc": {"storageClassName": "filestore-rwx", "size": "1Ti"}}}
MINIMAL = {
    "dask": {"enabled": False},
    "networkPolicies": {"enabled": False},
    "resourceQuota": {"enabled": False},
    "limitRange": {"enabled": False},
    "rbac": {"create": False},
    "priorityClasses": {"create": False},
    "workerServiceAccount": {"create": False},
    "remoteLogging": {"enabled": False},
    "storage": {"objectStore": {"existingSecret": ""}},
}
VALUE_SETS = {"default": {}, "gke-pools": GKE, "pvc-storage": PVC, "minimal": MINIMAL}


def settings(values: dict | None = None) -> dict[str, str]:
    """The settings ConfigMap of the worker namespace (the Airflow namespace gets the same)."""
    worker_ns, airflow_ns = render_chart(values, show_only=["templates/settings/settings-configmap.yaml"])
    assert (worker_ns["metadata"]["namespace"], airflow_ns["metadata"]["namespace"]) == (NAMESPACE, "airflow")
    assert worker_ns["data"] == airflow_ns["data"]
    return worker_ns["data"]


def test_settings_go_to_one_namespace_when_airflow_shares_it():
    configmaps = render_chart(
        {"airflow": {"namespace": NAMESPACE}}, show_only=["templates/settings/settings-configmap.yaml"]
    )
    assert [cm["metadata"]["namespace"] for cm in configmaps] == [NAMESPACE]


def of_kind(objects: list[dict], kind: str) -> list[dict]:
    return [obj for obj in objects if obj["kind"] == kind]


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_every_object_is_valid_kubernetes(values, kube_version):
    objects = render_chart(values)
    assert objects
    for obj in objects:
        kubernetes_validate.validate(obj, kube_version, strict=True)


@pytest.mark.parametrize("values", [{}, PVC], ids=["default", "pvc-storage"])
def test_helm_lint_strict_passes(values):
    result = run_helm("lint", "--strict", str(CHART), "--namespace", NAMESPACE, values=values)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_every_container_has_requests_limits_and_runs_non_root(values):
    for obj in of_kind(render_chart(values), "Deployment"):
        pod = obj["spec"]["template"]["spec"]
        assert jmespath.search("securityContext.runAsNonRoot", pod) is True
        for container in pod["containers"]:
            assert set(container["resources"]) == {"requests", "limits"}, obj["metadata"]["name"]
            assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_settings_carry_the_pool_configuration_that_fanout_pools_reads():
    data = settings(GKE)
    assert data["FANOUT_CPU_POOL_SELECTOR"] == "cloud.google.com/gke-nodepool=cpu-pool"
    assert data["FANOUT_CPU_TAINT"] == "dedicated=batch:NoSchedule"
    assert data["FANOUT_GPU_POOL_SELECTOR"] == "cloud.google.com/gke-nodepool=gpu-pool"
    assert data["FANOUT_GPU_TAINT"] == "nvidia.com/gpu=present:NoSchedule"
    assert data["FANOUT_GPU_AIRFLOW_POOL_SLOTS"] == "8"
    assert data["FANOUT_RENDER_POOL"] == "cpu"
    assert data["FANOUT_LIGHT_TASK_EXECUTOR"] == "LocalExecutor"


def test_settings_carry_what_task_pods_need_by_default():
    data = settings()
    assert data["FANOUT_ARTIFACT_ROOT"] == "s3://fanout-artifacts/fanout"
    assert data["FANOUT_OBJECT_STORE_SECRET"] == "fanout-object-store"
    assert data["DASK_SCHEDULER_ADDRESS"] == f"tcp://fanout-dask-scheduler.{NAMESPACE}.svc.cluster.local:8786"
    assert data["FANOUT_DEVICE"] == "auto"
    assert data["FANOUT_SCHEDULE"] == "0 0 * * *"
    assert settings({"schedule": "*/10 * * * *"})["FANOUT_SCHEDULE"] == "*/10 * * * *"
    assert (
        data["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"]
        == "http://airflow-api-server.airflow.svc.cluster.local:8080/execution/"
    )
    assert data["AIRFLOW__LOGGING__REMOTE_LOGGING"] == "True"
    assert data["AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER"] == "s3://fanout-logs/airflow"
    assert "FANOUT_LIGHT_TASK_EXECUTOR" not in data


def test_explicit_execution_api_url_wins_over_the_derived_one():
    url = "https://airflow.example.com/execution/"
    assert (
        settings({"airflow": {"executionApiServerUrl": url}})["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"]
        == url
    )


def test_settings_of_a_minimal_install_leave_optional_features_off():
    data = settings(MINIMAL)
    assert data["DASK_SCHEDULER_ADDRESS"] == ""
    assert data["AIRFLOW__LOGGING__REMOTE_LOGGING"] == "False"
    for key in (
        "FANOUT_PRIORITY_CLASS_PREFIX",
        "FANOUT_WORKER_SERVICE_ACCOUNT",
        "FANOUT_OBJECT_STORE_SECRET",
    ):
        assert key not in data


def test_priority_classes_separate_training_preprocessing_and_rendering():
    classes = render_chart(show_only=["templates/scheduling/priorityclasses.yaml"])
    values = {obj["metadata"]["name"]: obj["value"] for obj in classes}
    assert values.keys() == {
        "fanout-bookkeeping",
        "fanout-preprocessing",
        "fanout-rendering",
        "fanout-training",
    }
    assert values["fanout-preprocessing"] > values["fanout-rendering"] > values["fanout-training"]
    assert jmespath.search("[?metadata.name=='fanout-training'].preemptionPolicy", classes) == ["Never"]
    assert settings()["FANOUT_PRIORITY_CLASS_PREFIX"] == "fanout-"


def test_scheduler_role_is_limited_to_task_pods():
    objects = render_chart(show_only=["templates/rbac/scheduler-role.yaml"])
    (role,) = of_kind(objects, "Role")
    (binding,) = of_kind(objects, "RoleBinding")
    assert jmespath.search("rules[].resources[]", role) == ["pods", "pods/log", "events"]
    assert "*" not in jmespath.search("rules[].verbs[]", role)
    assert jmespath.search("rules[?contains(resources, 'pods')].verbs[]", role) == [
        "create",
        "get",
        "list",
        "watch",
        "patch",
        "delete",
    ]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "airflow-scheduler", "namespace": "airflow"}
    ]


def test_scheduler_may_only_read_nodes_cluster_wide():
    """fanout.executors compares task sizes with the nodes of their pool."""
    objects = render_chart(show_only=["templates/rbac/scheduler-node-reader.yaml"])
    (role,) = of_kind(objects, "ClusterRole")
    (binding,) = of_kind(objects, "ClusterRoleBinding")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list"]}]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "airflow-scheduler", "namespace": "airflow"}
    ]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]


def test_api_server_may_only_read_pods_and_logs():
    (role,) = of_kind(render_chart(show_only=["templates/rbac/api-server-role.yaml"]), "Role")
    assert set(jmespath.search("rules[].verbs[]", role)) == {"get", "list"}


def test_worker_namespace_is_capped_and_defaulted():
    (quota,) = render_chart(show_only=["templates/namespace/resourcequota.yaml"])
    (limits,) = render_chart(show_only=["templates/namespace/limitrange.yaml"])
    assert quota["spec"]["hard"]["requests.nvidia.com/gpu"] == "8"
    assert jmespath.search("spec.limits[0].defaultRequest", limits) == {"cpu": "250m", "memory": "512Mi"}


def test_network_policies_deny_by_default_and_task_pods_accept_nothing():
    objects = render_chart(
        show_only=[
            "templates/networkpolicies/default-deny-networkpolicy.yaml",
            "templates/networkpolicies/task-pods-networkpolicy.yaml",
        ]
    )
    deny, tasks = objects
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    assert tasks["spec"]["ingress"] == []
    api_server_rule = tasks["spec"]["egress"][0]
    assert jmespath.search("to[0].namespaceSelector.matchLabels", api_server_rule) == {
        "kubernetes.io/metadata.name": "airflow"
    }
    assert jmespath.search("ports[0].port", api_server_rule) == 8080


@pytest.mark.parametrize("values", [{}, GKE], ids=["default", "gke-pools"])
def test_dask_runs_on_the_cpu_pool_and_never_tolerates_the_gpu_taint(values):
    deployments = render_chart(
        values,
        show_only=[
            "templates/dask/dask-scheduler-deployment.yaml",
            "templates/dask/dask-worker-deployment.yaml",
        ],
    )
    cpu_label = (values.get("nodePools") or {}).get("cpu", {}).get("selector", "fanout.io/pool=cpu")
    cpu_selector = dict([cpu_label.split("=")])
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        assert pod["nodeSelector"] == cpu_selector
        assert "nvidia.com/gpu" not in (jmespath.search("tolerations[].key", pod) or [])


def test_cpu_pool_taints_become_tolerations_of_dask_pods():
    (worker,) = render_chart(GKE, show_only=["templates/dask/dask-worker-deployment.yaml"])
    assert jmespath.search("spec.template.spec.tolerations", worker) == [
        {"key": "dedicated", "operator": "Equal", "value": "batch", "effect": "NoSchedule"}
    ]


def test_component_scheduling_values_override_the_chart_wide_ones():
    values = {"nodeSelector": {"pool": "general"}, "dask": {"scheduler": {"nodeSelector": {"pool": "dask"}}}}
    scheduler, worker = render_chart(
        values,
        show_only=[
            "templates/dask/dask-scheduler-deployment.yaml",
            "templates/dask/dask-worker-deployment.yaml",
        ],
    )
    assert scheduler["spec"]["template"]["spec"]["nodeSelector"] == {"pool": "dask"}
    assert worker["spec"]["template"]["spec"]["nodeSelector"] == {"pool": "general"}


def test_tasks_reach_dask_through_the_scheduler_service():
    (service,) = render_chart(show_only=["templates/dask/dask-scheduler-service.yaml"])
    address = f"tcp://{service['metadata']['name']}.{NAMESPACE}.svc.cluster.local:"
    assert settings()["DASK_SCHEDULER_ADDRESS"] == address + str(service["spec"]["ports"][0]["port"])
    (worker,) = render_chart(show_only=["templates/dask/dask-worker-deployment.yaml"])
    assert (
        jmespath.search("spec.template.spec.containers[0].args[0]", worker)
        == settings()["DASK_SCHEDULER_ADDRESS"]
    )


def test_dask_workers_scale_with_values():
    (worker,) = render_chart(
        {"dask": {"workers": {"replicas": 7}}}, ["templates/dask/dask-worker-deployment.yaml"]
    )
    assert worker["spec"]["replicas"] == 7


def test_pvc_storage_is_a_read_write_many_claim_mounted_by_dask_and_named_for_task_pods():
    objects = render_chart(PVC)
    (claim,) = of_kind(objects, "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"]["storageClassName"] == "filestore-rwx"
    data = settings(PVC)
    assert data["FANOUT_ARTIFACT_PVC"] == claim["metadata"]["name"]
    assert data["FANOUT_ARTIFACT_ROOT"] == "/mnt/fanout-artifacts"
    (worker,) = [
        obj for obj in of_kind(objects, "Deployment") if obj["metadata"]["name"] == "fanout-dask-worker"
    ]
    assert jmespath.search(
        "spec.template.spec.volumes[?name=='artifacts'].persistentVolumeClaim.claimName", worker
    ) == [claim["metadata"]["name"]]


def test_object_store_credentials_come_from_the_named_secret():
    (worker,) = render_chart(show_only=["templates/dask/dask-worker-deployment.yaml"])
    assert jmespath.search("spec.template.spec.containers[0].envFrom[].secretRef.name", worker) == [
        "fanout-object-store"
    ]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"dask": {"replicas": 3}}, "at '/dask': additional properties 'replicas' not allowed"),
        ({"nodePool": {}}, "additional properties 'nodePool' not allowed"),
        ({"nodePools": {"renderPool": "tpu"}}, "at '/nodePools/renderPool'"),
        ({"nodePools": {"gpu": {"gpus": 0}}}, "at '/nodePools/gpu/gpus': minimum"),
        (
            {"nodePools": {"gpu": {"taints": [{"key": "x", "effect": "Sometimes"}]}}},
            "/nodePools/gpu/taints/0/effect",
        ),
        ({"storage": {"mode": "nfs"}}, "at '/storage/mode'"),
        (
            {"dask": {"workers": {"resources": {"limits": {"cpu": "lots"}}}}},
            "/dask/workers/resources/limits/cpu",
        ),
        ({"nodePools": {"cpu": {"selector": "pool:cpu"}}}, "at '/nodePools/cpu/selector'"),
        ({"schedule": "@daily"}, "at '/schedule'"),
    ],
    ids=[
        "unknown-dask-key",
        "typo-top-level",
        "bad-render-pool",
        "no-gpus",
        "bad-effect",
        "bad-mode",
        "bad-quantity",
        "bad-selector",
        "schedule-not-five-cron-fields",
    ],
)
def test_schema_rejects_invalid_values_with_a_clear_message(values, message):
    with pytest.raises(HelmError, match="values don't meet the specifications") as error:
        render_chart(values)
    assert message in str(error.value)


def _check_against_schema(node: dict, value, path: str) -> None:
    assert node.get("description"), f"{path} has no description"
    if "default" in node:
        assert node["default"] == value, (
            f"{path}: schema default {node['default']!r} != values.yaml {value!r}"
        )
    if node.get("properties"):
        for key, child in value.items():
            assert key in node["properties"], f"{path}.{key} is in values.yaml, not in the schema"
            _check_against_schema(node["properties"][key], child, f"{path}.{key}")
    else:
        assert "default" in node, f"{path} has no default"


def test_values_and_schema_change_together(chart_values):
    schema = json.loads((CHART / "values.schema.json").read_text())
    _check_against_schema(schema, chart_values, "$")


def test_every_schema_property_is_described_and_closed():
    def walk(node, path="$"):
        if node.get("type") == "object" and "properties" in node:
            assert node.get("additionalProperties") is False, f"{path} accepts unknown keys"
            for key, child in node["properties"].items():
                assert child.get("description"), f"{path}.{key} has no description"
                walk(child, f"{path}.{key}")

    walk(json.loads((CHART / "values.schema.json").read_text()))


def test_values_yaml_is_yamllint_clean():
    from yamllint import linter
    from yamllint.config import YamlLintConfig

    config = YamlLintConfig("{extends: default, rules: {line-length: {max: 110}}}")
    for path in (CHART / "values.yaml", CHART / "Chart.yaml"):
        problems = list(linter.run(path.read_text(), config, str(path)))
        assert not problems, [str(p) for p in problems]
    assert yaml.safe_load((CHART / "Chart.yaml").read_text())["name"] == "fanout"


def test_api_server_may_read_triggerer_logs_in_the_airflow_namespace():
    (policy,) = render_chart(
        show_only=["templates/networkpolicies/airflow-triggerer-logs-networkpolicy.yaml"]
    )
    assert policy["metadata"]["namespace"] == "airflow"
    assert policy["spec"]["podSelector"]["matchLabels"] == {
        "tier": "airflow",
        "component": "triggerer",
        "release": "airflow",
    }
    assert (
        jmespath.search("spec.ingress[0].from[0].podSelector.matchLabels.component", policy) == "api-server"
    )
    assert jmespath.search("spec.ingress[0].ports[0].port", policy) == 8794


def test_triggerer_logs_policy_follows_the_airflow_release_and_can_be_dropped():
    values = {"airflow": {"releaseName": "af", "namespace": "orchestration"}}
    (policy,) = render_chart(values, ["templates/networkpolicies/airflow-triggerer-logs-networkpolicy.yaml"])
    assert policy["metadata"]["namespace"] == "orchestration"
    assert jmespath.search("spec.ingress[0].from[0].podSelector.matchLabels.release", policy) == "af"
    off = {"networkPolicies": {"triggererLogs": {"enabled": False}}}
    assert not [obj for obj in render_chart(off) if obj["metadata"]["name"].endswith("triggerer-logs")]


def test_extra_settings_are_added_to_the_settings():
    assert settings({"extraSettings": {"FANOUT_SHARD_ROWS": "500000"}})["FANOUT_SHARD_ROWS"] == "500000"


def test_extra_settings_may_not_replace_a_setting_made_from_values():
    with pytest.raises(HelmError, match=r"extraSettings\.FANOUT_DEVICE is a setting the chart makes"):
        render_chart({"extraSettings": {"FANOUT_DEVICE": "cuda"}})


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_every_fanout_setting_the_chart_makes_is_one_fanout_reads_and_accepts(values):
    from fanout.settings import Settings, env_name
    from fanout.settings import settings as load_settings

    data = settings(values)
    known = {env_name(field) for field in Settings.model_fields}
    assert {key for key in data if key.startswith("FANOUT_")} <= known
    loaded = load_settings(data)  # raises SettingsError naming a value fanout cannot use
    assert loaded.artifact_root == data["FANOUT_ARTIFACT_ROOT"]
