"""helm/airflow-values.yaml, helm/pod-template.yaml and helm/pgbouncer.ini: the official chart's inputs.

The official chart is not in this repository: these tests check the values themselves and what
helm/fanout must match. test_official_chart.py renders the real chart with them when
FANOUT_OFFICIAL_CHART names its directory.
"""

from __future__ import annotations

import configparser

import jmespath
import pytest
import yaml

from tests.packaging.helmkit import AIRFLOW_VALUES, NAMESPACE, PGBOUNCER_INI, POD_TEMPLATE, render_chart

# Components that run all the time; each keeps working through a node drain.
LONG_RUNNING = ("scheduler", "apiServer", "dagProcessor", "triggerer", "pgbouncer")
# Components whose pods call the Kubernetes API (task pods, their logs); no other gets a token.
API_CLIENTS = ("scheduler", "apiServer")


@pytest.fixture(scope="module")
def values() -> dict:
    return yaml.safe_load(AIRFLOW_VALUES.read_text())


@pytest.fixture(scope="module")
def pgbouncer() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(inline_comment_prefixes=(";",), comment_prefixes=(";",))
    parser.read_string(PGBOUNCER_INI.read_text())
    return parser


def test_every_task_is_a_pod_of_fanouts_executor_in_the_worker_namespace(values):
    assert values["executor"].split(",")[0] == "fanout.executors.FanoutKubernetesExecutor"
    assert values["config"]["kubernetes_executor"]["namespace"] == NAMESPACE


def test_pod_rights_come_from_helm_fanout_not_from_the_official_chart(values):
    """The chart binds its pod-launcher Role by exact executor name (never a class path) and only in
    its own namespace: fanout switches it off and binds the scheduler where task pods run."""
    assert values["allowPodLaunching"] is False
    assert values["allowJobLaunching"] is False
    assert values["apiServer"]["allowPodLogReading"] is False
    assert values["webserver"]["allowPodLogReading"] is False
    launcher, log_reader = (
        render_chart(show_only=[f"templates/rbac/{name}.yaml"])
        for name in ("scheduler-role", "api-server-role")
    )
    for objects, account in ((launcher, "airflow-scheduler"), (log_reader, "airflow-api-server")):
        (binding,) = [obj for obj in objects if obj["kind"] == "RoleBinding"]
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": "airflow"}]


def test_only_the_scheduler_and_api_server_mount_a_service_account_token(values):
    for component in API_CLIENTS:
        assert values[component].get("serviceAccount", {}).get("automountServiceAccountToken", True)
    for component in (
        "dagProcessor",
        "triggerer",
        "statsd",
        "pgbouncer",
        "migrateDatabaseJob",
        "databaseCleanup",
    ):
        assert values[component]["serviceAccount"]["automountServiceAccountToken"] is False, component


def test_secrets_come_from_existing_kubernetes_secrets_and_nothing_has_a_default_password(values):
    assert values["data"]["metadataSecretName"]
    for key in ("fernetKeySecretName", "apiSecretKeySecretName", "jwtSecretName"):
        assert values[key], key
    for plain in ("fernetKey", "apiSecretKey", "jwtSecret", "webserverSecretKey"):
        assert plain not in values
    assert "metadataConnection" not in values["data"]
    assert values["postgresql"]["enabled"] is False
    assert values["createUserJob"]["enabled"] is False
    # The chart's generated pgbouncer.ini would hold data.metadataConnection's default password.
    assert values["pgbouncer"]["configSecretName"] == "airflow-pgbouncer-config"
    assert values["pgbouncer"]["metricsExporterSidecar"]["statsSecretName"] == "airflow-pgbouncer-stats"


def test_objects_for_unused_features_are_switched_off(values):
    # Without a name here the chart creates Secret airflow-broker-url whatever the executor.
    assert values["data"]["brokerUrlSecretName"] not in ("", None, "airflow-broker-url")
    assert values["createUserJob"]["serviceAccount"]["create"] is False
    assert values["workers"]["serviceAccount"]["create"] is False


def test_every_component_reads_the_fanout_settings(values):
    configmap, _ = render_chart(show_only=["templates/settings/settings-configmap.yaml"])
    env_from = yaml.safe_load(values["extraEnvFrom"])
    assert {"configMapRef": {"name": configmap["metadata"]["name"]}} in env_from
    assert configmap["data"]["AIRFLOW__LOGGING__REMOTE_LOGGING"] == "True"  # logs outlive pods


def test_control_plane_runs_on_the_system_pool_with_resources_for_every_container(values):
    assert values["nodeSelector"] == {"fanout.io/pool": "system"}
    resources = {
        component: values[component]["resources"]
        for component in (*LONG_RUNNING, "statsd", "migrateDatabaseJob", "databaseCleanup")
    }
    for sidecar in ("scheduler", "dagProcessor", "triggerer"):
        resources[f"{sidecar} log groomer"] = values[sidecar]["logGroomerSidecar"]["resources"]
    resources["pgbouncer exporter"] = values["pgbouncer"]["metricsExporterSidecar"]["resources"]
    for name, resource in resources.items():
        assert set(resource) == {"requests", "limits"}, name
        assert set(resource["limits"]) == {"cpu", "memory"}, name


def test_every_long_running_component_has_a_disruption_budget_that_lets_one_pod_go(values):
    for component in LONG_RUNNING:
        budget = values[component]["podDisruptionBudget"]
        assert budget == {"enabled": True, "config": {"maxUnavailable": 1}}, component
    # With two replicas, a drain never takes a component away entirely.
    assert {c: values[c].get("replicas", 1) for c in LONG_RUNNING} == {
        "scheduler": 2,
        "apiServer": 2,
        "dagProcessor": 1,
        "triggerer": 2,
        "pgbouncer": 2,
    }


def test_triggerer_keeps_no_log_volume_and_advertises_an_address_the_api_server_can_reach(values):
    assert values["triggerer"]["persistence"]["enabled"] is False
    assert values["logs"]["persistence"]["enabled"] is False
    assert {"name": "AIRFLOW__CORE__HOSTNAME_CALLABLE", "value": "airflow.utils.net.get_host_ip_address"} in (
        values["triggerer"]["env"]
    )


def test_the_triggerers_hostname_callable_is_importable_and_returns_an_address(values):
    import importlib
    import ipaddress

    (path,) = [
        e["value"] for e in values["triggerer"]["env"] if e["name"] == "AIRFLOW__CORE__HOSTNAME_CALLABLE"
    ]
    module, _, name = path.rpartition(".")
    assert ipaddress.ip_address(getattr(importlib.import_module(module), name)())


def test_api_server_admits_task_pods_airflow_and_labelled_ingress_namespaces(values):
    peers = values["apiServer"]["networkPolicy"]["ingress"]["from"]
    assert jmespath.search("[].namespaceSelector.matchLabels", peers) == [
        {"kubernetes.io/metadata.name": NAMESPACE},
        {"kubernetes.io/metadata.name": "airflow"},
        {"fanout.io/airflow-ingress": "true"},
    ]
    assert values["networkPolicies"]["enabled"] is True


def test_every_pod_of_the_chart_is_set_up_for_the_restricted_pod_security_level(values):
    pod = values["securityContexts"]["pod"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    for own_user in ("statsd", "pgbouncer"):  # pods with their own security context
        context = values[own_user]["securityContexts"]["pod"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] == 65534, own_user
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}, own_user


def test_database_cleanup_removes_a_month_and_older_daily_without_archive_tables(values):
    cleanup = values["databaseCleanup"]
    assert cleanup["enabled"] is True
    assert cleanup["retentionDays"] == 30 and cleanup["skipArchive"] is True
    _minute, hour, *every_day = cleanup["schedule"].split()
    assert every_day == ["*", "*", "*"] and 0 <= int(hour) < 24


def airflow_option(values: dict, section: str, key: str) -> int:
    """A [section] key as the values set it, else Airflow's default."""
    from airflow.configuration import conf

    return int(values["config"].get(section, {}).get(key, conf.get_default_value(section, key)))


def airflow_processes(values: dict) -> int:
    """Airflow processes holding database pools at once (jobs: migration and cleanup)."""
    api_workers = airflow_option(values, "api", "workers")
    components = {
        "scheduler": values["scheduler"]["replicas"],
        "apiServer": values["apiServer"]["replicas"] * api_workers,
        "dagProcessor": values["dagProcessor"].get("replicas", 1),
        "triggerer": values["triggerer"]["replicas"],
    }
    return sum(components.values()) + 2


def test_pgbouncer_takes_every_airflow_connection_and_keeps_the_database_small(values, pgbouncer):
    per_engine = airflow_option(values, "database", "sql_alchemy_pool_size") + airflow_option(
        values, "database", "sql_alchemy_max_overflow"
    )
    bouncer = pgbouncer["pgbouncer"]
    # Each process has a sync and an async engine; one PgBouncer may get every client (the
    # Service does not balance connections evenly).
    assert airflow_processes(values) * 2 * per_engine <= int(bouncer["max_client_conn"])
    (metadata,) = pgbouncer["databases"].values()
    settings = dict(item.split("=", 1) for item in metadata.split())
    assert int(settings["pool_size"]) + int(settings["reserve_pool"]) <= int(bouncer["max_db_connections"])
    assert values["pgbouncer"]["replicas"] * int(bouncer["max_db_connections"]) <= 30
    assert bouncer["pool_mode"] == "transaction" and bouncer["listen_port"] == "6543"
    assert bouncer["auth_file"] == "/etc/pgbouncer/users.txt"  # where the chart mounts the Secret
    assert list(pgbouncer["databases"]) == ["airflow-metadata"]  # the README's connection names it


def test_pgbouncer_keeps_airflows_asyncpg_prepared_statements_working_in_transaction_mode(pgbouncer):
    """Airflow 3.3 derives its async engine as postgresql+asyncpg, which names prepared statements."""
    from airflow.settings import _get_async_conn_uri_from_sync

    async_uri = _get_async_conn_uri_from_sync(
        "postgresql+psycopg2://u:p@airflow-pgbouncer:6543/airflow-metadata"
    )
    if async_uri.startswith("postgresql+asyncpg"):
        assert int(pgbouncer["pgbouncer"]["max_prepared_statements"]) > 0


def test_queued_timeout_and_worker_pod_settings_are_chosen(values):
    assert values["config"]["scheduler"]["task_queued_timeout"] == 1200
    executor = values["config"]["kubernetes_executor"]
    assert executor["delete_worker_pods"] == "True"
    assert executor["delete_worker_pods_on_failure"] == "False"
    assert executor["worker_pods_creation_batch_size"] > 1


def test_migration_job_creates_the_gpu_airflow_pool_from_the_settings(values):
    script = values["migrateDatabaseJob"]["args"][-1]
    assert 'airflow pools set "$FANOUT_GPU_AIRFLOW_POOL" "$FANOUT_GPU_AIRFLOW_POOL_SLOTS"' in script


def test_task_pods_ask_node_autoscalers_not_to_evict_them():
    """The annotations survive the executor's merge of template, task labels and override."""
    from airflow.providers.cncf.kubernetes.pod_generator import PodGenerator

    pod = PodGenerator.construct_pod(
        dag_id="d",
        task_id="t",
        pod_id="d-t",
        try_number=1,
        kube_image="fanout-airflow:0.1.0",
        date=None,
        args=["true"],
        pod_override_object=None,
        base_worker_pod=PodGenerator.deserialize_model_file(str(POD_TEMPLATE)),
        namespace=NAMESPACE,
        scheduler_job_id="1",
        run_id="manual__2026-11-22T00:00:00+00:00",
        map_index=3,
    )
    annotations = pod.metadata.annotations
    assert annotations["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"
    assert annotations["karpenter.sh/do-not-disrupt"] == "true"
    assert annotations["task_id"] == "t"  # the executor's own annotations are still there


def test_values_and_pod_template_are_yamllint_clean():
    from yamllint import linter
    from yamllint.config import YamlLintConfig

    config = YamlLintConfig(
        "{extends: default, rules: {line-length: {max: 110}, comments: {min-spaces-from-content: 1}}}"
    )
    for path in (AIRFLOW_VALUES, POD_TEMPLATE, POD_TEMPLATE.parent / "namespaces.yaml"):
        problems = list(linter.run(path.read_text(), config, str(path)))
        assert not problems, [str(p) for p in problems]
