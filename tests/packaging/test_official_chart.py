"""The official Apache Airflow chart rendered with fanout's values, as the README installs it.

The chart cannot be downloaded here. Give its directory (a `helm pull --untar` of a release, or
`chart/` of an apache/airflow checkout) in FANOUT_OFFICIAL_CHART to run these tests:

    FANOUT_OFFICIAL_CHART=~/airflow/chart .venv/bin/python -m pytest tests/packaging/test_official_chart.py

Without it they are skipped. They check what the values cannot show alone: every key is in the
chart's schema (helm validates), the objects are valid Kubernetes, each gap of issue #14 is closed
in the render, and the chart's names line up with helm/fanout's.
"""

from __future__ import annotations

import os
from pathlib import Path

import jmespath
import kubernetes_validate
import pytest
import yaml

from tests.packaging.helmkit import (
    AIRFLOW_NAMESPACE,
    KUBE_VERSIONS,
    NAMESPACE,
    NAMESPACES,
    POD_TEMPLATE,
    render_chart,
    render_official_chart,
)
from tests.packaging.podsecurity import pod_specs, violations

CHART_DIR = os.environ.get("FANOUT_OFFICIAL_CHART")
pytestmark = pytest.mark.skipif(
    not CHART_DIR, reason="FANOUT_OFFICIAL_CHART names no official chart directory"
)

# The Secrets the README creates in the Airflow namespace.
README_SECRETS = {
    "airflow-metadata",
    "airflow-fernet-key",
    "airflow-api-secret-key",
    "airflow-jwt-secret",
    "airflow-pgbouncer-config",
    "airflow-pgbouncer-stats",
    "fanout-object-store",
}


@pytest.fixture(scope="module")
def objects() -> list[dict]:
    return render_official_chart(Path(CHART_DIR).expanduser())


@pytest.fixture(scope="module")
def airflow_namespace(objects) -> list[dict]:
    """What lands in the Airflow namespace: the official chart's objects and helm/fanout's."""
    fanout = [obj for obj in render_chart() if obj["metadata"].get("namespace") == AIRFLOW_NAMESPACE]
    return objects + fanout


def named(objects: list[dict], kind: str) -> dict[str, dict]:
    return {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == kind}


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_every_rendered_object_is_valid_kubernetes(objects, kube_version):
    for obj in objects:
        kubernetes_validate.validate(obj, kube_version, strict=True)


def test_every_pod_meets_the_airflow_namespaces_pod_security_level(objects):
    (level,) = [
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]
        for ns in yaml.safe_load_all(NAMESPACES.read_text())
        if ns["metadata"]["name"] == AIRFLOW_NAMESPACE
    ]
    pods = list(pod_specs(objects))
    assert {name.split("/")[0] for name, _, _ in pods} >= {"Deployment", "Job", "CronJob"}
    for name, metadata, spec in pods:
        assert violations(spec, level, metadata) == [], name


def test_every_container_has_requests_and_limits(objects):
    for name, _, spec in pod_specs(objects):
        for container in spec.get("initContainers", []) + spec["containers"]:
            resources = container.get("resources") or {}
            assert {"requests", "limits"} <= set(resources), f"{name} {container['name']}"


def test_the_executor_is_fanouts_and_task_pods_go_to_the_worker_namespace(objects):
    config = named(objects, "ConfigMap")["airflow-config"]["data"]
    assert "executor = fanout.executors.FanoutKubernetesExecutor" in config["airflow.cfg"]
    assert f"namespace = {NAMESPACE}" in config["airflow.cfg"].split("[kubernetes_executor]")[1]
    assert yaml.safe_load(config["pod_template_file.yaml"]) == yaml.safe_load(POD_TEMPLATE.read_text())


def test_no_pod_launching_roles_in_the_airflow_namespace(objects):
    roles = [
        obj for obj in objects if obj["kind"] in ("Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")
    ]
    granted = jmespath.search("[?kind=='Role'].rules[].resources[]", roles) or []
    assert "pods" not in granted and "pods/log" not in granted
    assert not [obj for obj in roles if "pod-launcher" in obj["metadata"]["name"]]


def test_fanouts_role_bindings_name_the_charts_service_accounts(objects):
    accounts = set(named(objects, "ServiceAccount"))
    for template in ("scheduler-role", "api-server-role"):
        (binding,) = [
            o
            for o in render_chart(show_only=[f"templates/rbac/{template}.yaml"])
            if o["kind"] == "RoleBinding"
        ]
        assert binding["subjects"][0]["name"] in accounts
    scheduler = named(objects, "Deployment")["airflow-scheduler"]
    assert jmespath.search("spec.template.spec.serviceAccountName", scheduler) == "airflow-scheduler"


def test_unused_objects_are_not_created(objects):
    assert "airflow-broker-url" not in named(objects, "Secret")
    assert not {"airflow-create-user-job", "airflow-worker"} & set(named(objects, "ServiceAccount"))
    assert not [obj for obj in objects if obj["kind"] == "PersistentVolumeClaim"]


def test_every_secret_the_pods_read_is_one_the_readme_creates(objects):
    referenced = set()
    for _, _, spec in pod_specs(objects):
        referenced |= set(jmespath.search("volumes[].secret.secretName", spec) or [])
        for container in spec.get("initContainers", []) + spec["containers"]:
            referenced |= set(jmespath.search("env[].valueFrom.secretKeyRef.name", container) or [])
            referenced |= set(jmespath.search("envFrom[].secretRef.name", container) or [])
    assert referenced == README_SECRETS
    assert not named(objects, "Secret"), "the chart makes no Secret: no generated password"


def test_the_triggerer_is_a_deployment_without_a_log_volume(objects):
    assert "airflow-triggerer" not in named(objects, "StatefulSet")
    triggerer = named(objects, "Deployment")["airflow-triggerer"]
    assert triggerer["spec"]["replicas"] == 2
    env = jmespath.search("spec.template.spec.containers[?name=='triggerer'].env[]", triggerer)
    assert {
        "name": "AIRFLOW__CORE__HOSTNAME_CALLABLE",
        "value": "airflow.utils.net.get_host_ip_address",
    } in env


def matches(selector: dict, labels: dict) -> bool:
    """A label selector (matchLabels; matchExpressions with In or Exists) against ``labels``."""
    if any(labels.get(key) != value for key, value in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        if expression["operator"] == "In" and labels.get(expression["key"]) not in expression["values"]:
            return False
        if expression["operator"] == "Exists" and expression["key"] not in labels:
            return False
    return True


def selects(policy: dict, pod: dict) -> bool:
    """Whether ingress ``policy`` applies to ``pod`` ({namespace, labels})."""
    return (
        policy["metadata"].get("namespace", AIRFLOW_NAMESPACE) == pod["namespace"]
        and "Ingress" in policy["spec"].get("policyTypes", ["Ingress"])
        and matches(policy["spec"]["podSelector"], pod["labels"])
    )


def admits(policy: dict, pod: dict, source: dict, port: int) -> bool:
    """Whether one of ``policy``'s ingress rules lets ``source`` reach ``pod`` on ``port``."""
    namespace_labels = {
        "kubernetes.io/metadata.name": source["namespace"],
        **source.get("namespace_labels", {}),
    }
    for rule in policy["spec"].get("ingress") or []:
        ports = [int(p["port"]) for p in rule.get("ports") or []]
        if ports and port not in ports:
            continue
        for peer in rule.get("from") or [{}]:
            if "namespaceSelector" in peer:
                if not matches(peer["namespaceSelector"], namespace_labels):
                    continue
            elif source["namespace"] != pod["namespace"]:
                continue
            if matches(peer.get("podSelector", {}), source["labels"]):
                return True
    return False


def reachable(policies: list[dict], pod: dict, source: dict, port: int) -> bool:
    """Kubernetes' rule: a pod no ingress policy selects takes anything; else one must admit it."""
    selecting = [policy for policy in policies if selects(policy, pod)]
    return not selecting or any(admits(policy, pod, source, port) for policy in selecting)


API_SERVER = {
    "namespace": AIRFLOW_NAMESPACE,
    "labels": {"tier": "airflow", "component": "api-server", "release": "airflow"},
}
TRIGGERER = {
    "namespace": AIRFLOW_NAMESPACE,
    "labels": {"tier": "airflow", "component": "triggerer", "release": "airflow"},
}


def test_the_api_server_reaches_the_triggerer_log_port(airflow_namespace):
    policies = list(named(airflow_namespace, "NetworkPolicy").values())
    chart_only = [p for p in policies if not p["metadata"]["name"].startswith("fanout-")]
    assert not reachable(chart_only, TRIGGERER, API_SERVER, 8794), (
        "the chart alone admits it: drop fanout's policy"
    )
    assert reachable(policies, TRIGGERER, API_SERVER, 8794)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ({"namespace": NAMESPACE, "labels": {"dag_id": "d"}}, True),
        (
            {
                "namespace": "ingress-nginx",
                "labels": {},
                "namespace_labels": {"fanout.io/airflow-ingress": "true"},
            },
            True,
        ),
        ({"namespace": "ingress-nginx", "labels": {}}, False),
        ({"namespace": "default", "labels": {}}, False),
    ],
    ids=["task-pods", "labelled-ingress-namespace", "unlabelled-ingress-namespace", "elsewhere"],
)
def test_who_reaches_the_api_server(airflow_namespace, source, expected):
    policies = list(named(airflow_namespace, "NetworkPolicy").values())
    assert reachable(policies, API_SERVER, source, 8080) is expected


def test_every_long_running_component_has_a_disruption_budget(objects):
    budgets = named(objects, "PodDisruptionBudget")
    components = {jmespath.search("spec.selector.matchLabels.component", pdb) for pdb in budgets.values()}
    assert components == {"api-server", "scheduler", "dag-processor", "triggerer", "pgbouncer"}


def test_pgbouncer_runs_from_the_readmes_config_secret(objects):
    pgbouncer = named(objects, "Deployment")["airflow-pgbouncer"]
    spec = pgbouncer["spec"]["template"]["spec"]
    assert jmespath.search("volumes[].secret.secretName", spec) == ["airflow-pgbouncer-config"]
    assert pgbouncer["spec"]["replicas"] == 2
    assert named(objects, "Service")["airflow-pgbouncer"]["spec"]["ports"][0]["port"] == 6543


def test_database_cleanup_runs_daily_without_archive_tables(objects):
    cron = named(objects, "CronJob")["airflow-database-cleanup"]
    script = " ".join(jmespath.search("spec.jobTemplate.spec.template.spec.containers[0].args", cron))
    assert '-d "-30 days"' in script and "--skip-archive" in script
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"


def test_service_account_tokens_only_where_the_kubernetes_api_is_called(objects):
    mounted = {
        name: account.get("automountServiceAccountToken", True)
        for name, account in named(objects, "ServiceAccount").items()
    }
    assert {name for name, on in mounted.items() if on} == {"airflow-scheduler", "airflow-api-server"}
