"""fanout's Airflow on the kubesim harness, set up as the Helm deployment sets it up.

- nodes: two CPU nodes and one GPU node with one ``nvidia.com/gpu`` (kubesim's default pools);
- the scheduler runs ``fanout.executors.FanoutKubernetesExecutor`` with the ``[kubernetes_executor]``,
  ``[scheduler]`` and ``[core]`` settings of ``helm/airflow-values.yaml``, and the pod template
  ``helm/pod-template.yaml`` unmodified;
- the ConfigMap ``fanout-settings`` (what helm/fanout renders) holds the fanout settings and is the
  env of every component (the chart's ``extraEnvFrom``) and of every task pod (the template's
  ``envFrom``);
- what the worker image bakes in (the DAGs folder) is the cluster's ``image_env``.

Test-only differences from the chart, each for a reason given next to it in ``TEST_SETTINGS``.
Used by ``tests/cluster/conftest.py`` and ``make cluster-demo`` (``tests/cluster/demo.py``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Generator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import yaml

from fanout.demo import PIPELINE, Progress, RunReport, prepare, summarise_run
from fanout.localstack import PROJECT_ROOT, AirflowClient, AirflowStack
from tests.e2e.conftest import SMALL_PARAMS
from tests.kubesim import Cluster, PodRecord, default_nodes

AIRFLOW_VALUES = PROJECT_ROOT / "helm" / "airflow-values.yaml"
POD_TEMPLATE = PROJECT_ROOT / "helm" / "pod-template.yaml"
EXECUTOR = "fanout.executors.FanoutKubernetesExecutor"


TEST_SETTINGS = {
    # Short enough that a GPU task left waiting for the GPU in Kubernetes (instead of in the
    # Airflow pool) would be failed; long enough for a cold pod start on 2 busy cores.
    "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "60",
    "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT_CHECK_INTERVAL": "10",
    # The chart's 60 s sweep for pods a restarted scheduler left behind, made test-sized.
    "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "10",
    # Retries in seconds, not minutes.
    "FANOUT_RETRY_DELAY_SECONDS": "1",
    # No cgroup CPU limits here: without it every task would size its Dask/torch pools to the
    # whole machine (the chart's pods see their CPU limit instead).
    "FANOUT_TASK_CPUS": "1",
    "AIRFLOW__CORE__UNIT_TEST_MODE": "False",  # the pytest session's setting must not leak in
}


def template_config_map() -> str:
    """The ConfigMap the pod template's ``base`` container takes its env from (fanout-settings)."""
    template = yaml.safe_load(POD_TEMPLATE.read_text())
    (base,) = [c for c in template["spec"]["containers"] if c["name"] == "base"]
    return next(source["configMapRef"]["name"] for source in base["envFrom"] if "configMapRef" in source)


def chart_config() -> dict[str, str]:
    """``config`` of helm/airflow-values.yaml as ``AIRFLOW__SECTION__KEY`` env, as the chart renders it."""
    values = yaml.safe_load(AIRFLOW_VALUES.read_text())
    return {
        f"AIRFLOW__{section.upper()}__{key.upper()}": str(value)
        for section, options in values["config"].items()
        for key, value in options.items()
    }


@dataclass
class ClusterPipeline:
    """A running cluster and Airflow on it."""

    cluster: Cluster
    stack: AirflowStack
    client: AirflowClient
    artifact_root: Path
    settings: dict[str, str]

    @property
    def namespace(self) -> str:
        return self.cluster.namespace

    def pods_of(self, dag_id: str, run_id: str) -> list[PodRecord]:
        """Records of every pod created for a DAG run, in creation order (kept after deletion)."""
        return [
            record
            for record in self.cluster.records
            if record.annotations.get("dag_id") == dag_id and record.annotations.get("run_id") == run_id
        ]


@contextmanager
def cluster_pipeline(
    workdir: Path, *, params: dict | None = None, extra_env: dict[str, str] | None = None
) -> Generator[ClusterPipeline, None, None]:
    """Start the cluster and Airflow on it; stop both (and every pod process) at the end.

    ``extra_env`` overrides settings of the components and the ConfigMap (for deliberately
    broken settings, e.g. ``{"FANOUT_RETRIES": "0"}``).
    """
    workdir = Path(workdir)
    artifact_root = workdir / "artifacts"
    artifact_root.mkdir(parents=True, exist_ok=True)
    config = chart_config()
    namespace = config["AIRFLOW__KUBERNETES_EXECUTOR__NAMESPACE"]
    nodes = default_nodes()
    image_env = {"AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags")}
    with Cluster(nodes, namespace=namespace, workdir=workdir / "cluster", image_env=image_env) as cluster:
        stack = AirflowStack(home=workdir / "airflow-home", executor=EXECUTOR)
        settings = {
            "FANOUT_ARTIFACT_ROOT": str(artifact_root),
            "FANOUT_PARAMS": json.dumps(params or SMALL_PARAMS),
            # The Airflow pool gating GPU tasks has one slot per GPU of the GPU pool.
            "FANOUT_GPU_AIRFLOW_POOL_SLOTS": str(sum(node.gpus for node in nodes)),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{stack.base_url}/execution/",
            # Stands in for the chart's remote logging: task logs outlive their pods.
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(stack.home / "logs"),
            **{k: v for k, v in TEST_SETTINGS.items() if not k.startswith("AIRFLOW__SCHEDULER__")},
            **(extra_env or {}),
        }
        stack.extra_env.update(
            {
                **config,
                "AIRFLOW__KUBERNETES_EXECUTOR__CONFIG_FILE": str(cluster.kubeconfig_path),
                "AIRFLOW__KUBERNETES_EXECUTOR__IN_CLUSTER": "False",
                "AIRFLOW__KUBERNETES_EXECUTOR__POD_TEMPLATE_FILE": str(POD_TEMPLATE),
                **TEST_SETTINGS,
                **settings,  # the chart's extraEnvFrom: fanout-settings
            }
        )
        cluster.core_v1().create_namespaced_config_map(
            namespace, {"metadata": {"name": template_config_map()}, "data": settings}
        )
        client = stack.start()
        try:
            prepare(client, stack)
            yield ClusterPipeline(cluster, stack, client, artifact_root, settings)
        finally:
            stack.stop()


class PodStuck(AssertionError):
    """A pod waited on the Kubernetes scheduler far longer than any pod should."""


def fail_if_a_pod_is_stuck(cluster: Cluster, patience: float = 30.0):
    """An ``on_poll`` for ``AirflowClient.wait_run``: fail fast, with the scheduler's reason, when
    a pod stays unschedulable (a size no node fits, a missing toleration) instead of waiting for
    ``task_queued_timeout`` to requeue it twice."""

    def check(run: dict, task_instances: list[dict]) -> None:
        now = time.time()
        for record in cluster.records:
            if record.node is None and record.deleted_at is None and record.unschedulable_message:
                waited = now - record.created_at
                if waited > patience:
                    task = record.annotations.get("task_id")
                    raise PodStuck(
                        f"pod {record.name} ({task}) unschedulable for {waited:.0f}s: "
                        f"{record.unschedulable_message}"
                    )

    return check


def run_pipeline_on(cp: ClusterPipeline, conf: dict | None = None, timeout: float = 420) -> list[RunReport]:
    """``fanout.demo.run_pipeline`` (preprocess, then the runs its assets trigger), failing fast
    when a pod cannot be scheduled."""
    client = cp.client
    for dag_id in PIPELINE:
        client.unpause(dag_id)
    started = datetime.now(UTC).isoformat()
    stuck = fail_if_a_pod_is_stuck(cp.cluster)
    reports = []
    run_id = client.trigger(PIPELINE[0], conf or {})
    for index, dag_id in enumerate(PIPELINE):
        if index:
            run_id = client.wait_triggered_run(dag_id, after=started, timeout=120)
        print(f"{time.strftime('%H:%M:%S')} {dag_id}: run {run_id}", flush=True)
        progress = Progress(dag_id)

        def on_poll(run: dict, tis: list[dict], progress: Progress = progress) -> None:
            progress(run, tis)
            stuck(run, tis)

        run = client.wait_run(dag_id, run_id, timeout=timeout, on_poll=on_poll, interval=1)
        reports.append(summarise_run(client, dag_id, run_id))
        if run["state"] != "success":
            break
    return reports
