"""fanout's Airflow on a cluster, set up as the Helm deployment sets it up.

The cluster is the kubesim harness (two CPU nodes, one GPU node with one ``nvidia.com/gpu``) or,
with ``FANOUT_TEST_KUBECONFIG``, any cluster (``target.py``). Either way:

- the scheduler runs ``fanout.executors.FanoutKubernetesExecutor`` with the ``[kubernetes_executor]``,
  ``[scheduler]`` and ``[core]`` settings of ``helm/airflow-values.yaml``, and the pod template
  ``helm/pod-template.yaml`` unmodified;
- the ConfigMap ``fanout-settings`` (what helm/fanout renders) holds the fanout settings and is the
  env of every component (the chart's ``extraEnvFrom``) and of every task pod (the template's
  ``envFrom``);
- the DAGs folder holds ``dags/`` and the probe DAGs of ``tests/cluster/dags`` (on the harness it is
  also what the "image" bakes in, the cluster's ``image_env``, with ``plugins/`` as the plugins
  folder; a real cluster's worker image must hold the same files);
- pods are observed through the Kubernetes API only (``observe.PodWatch``);
- task logs go to object storage (Airflow's remote logging, as the chart sets it up): on the harness
  a real S3-compatible server on loopback (``tests/s3.py``), so the api-server reads a finished
  task's log from the bucket once its pod is gone; pods and the api-server share no log folder.

Test-only differences from the chart, each for a reason given next to it in ``TEST_SETTINGS``.
Used by ``tests/cluster/conftest.py`` and ``make cluster-demo`` (``tests/cluster/demo.py``).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Generator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from fanout.demo import PIPELINE, Progress, RunReport, prepare, summarise_run, wait_partition_run
from fanout.localstack import PROJECT_ROOT, AirflowClient, AirflowStack
from fanout.partitions import last_partition_key
from fanout.pods import pool_nodes
from fanout.pools import GPU
from fanout.settings import settings as fanout_settings
from kubernetes import client, config
from tests.cluster.observe import PodWatch
from tests.cluster.target import Target
from tests.e2e.conftest import SMALL_PARAMS
from tests.kubesim import Cluster, PodRecord, default_nodes
from tests.s3 import S3Server

AIRFLOW_VALUES = PROJECT_ROOT / "helm" / "airflow-values.yaml"
POD_TEMPLATE = PROJECT_ROOT / "helm" / "pod-template.yaml"
PROBE_DAGS = Path(__file__).parent / "dags"
EXECUTOR = "fanout.executors.FanoutKubernetesExecutor"
# Where the harness's task logs go (a bucket of its own S3 server).
LOG_BUCKET = "fanout-cluster"
REMOTE_LOG_FOLDER = f"s3://{LOG_BUCKET}/logs"


TEST_SETTINGS = {
    # Short enough that a GPU task left waiting for the GPU in Kubernetes (instead of in the
    # Airflow pool) would be failed; long enough for a cold pod start on 2 busy cores.
    "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "60",
    "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT_CHECK_INTERVAL": "10",
    # The chart's 60 s sweep for pods a restarted scheduler left behind, made test-sized.
    "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "10",
    # Retries in seconds, not minutes.
    "FANOUT_RETRY_DELAY_SECONDS": "1",
    # No cgroup CPU limits on the harness: without it every task would size its Dask/torch pools
    # to the whole machine (the chart's pods see their CPU limit instead).
    "FANOUT_TASK_CPUS": "1",
    "AIRFLOW__CORE__UNIT_TEST_MODE": "False",  # the pytest session's setting must not leak in
    # The exit code the node-fault probe (tests/cluster/dags) ends its first try with; a deployment
    # lists its GPU health check's codes here.
    "FANOUT_NODE_FAULT_EXIT_CODES": "74",
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


def dags_folder(workdir: Path) -> Path:
    """fanout's DAG files and the probe DAGs side by side (links), as the test worker image has them."""
    folder = workdir / "dags"
    folder.mkdir(parents=True, exist_ok=True)
    for source in [*sorted((PROJECT_ROOT / "dags").glob("*.py")), *sorted(PROBE_DAGS.glob("*.py"))]:
        link = folder / source.name
        if not link.exists():
            link.symlink_to(source)
    return folder


@dataclass
class ClusterPipeline:
    """A running cluster and Airflow on it."""

    pods: PodWatch  # what the Kubernetes API shows: pod records, nodes
    harness: Cluster | None  # the harness's own hooks (faults below the API), None on other clusters
    stack: AirflowStack
    client: AirflowClient
    artifact_root: Path  # as this machine sees it
    settings: dict[str, str]
    s3: S3Server | None = None  # the harness's object storage for task logs; None on other clusters

    @property
    def namespace(self) -> str:
        return self.pods.namespace

    @property
    def v1(self) -> Any:
        return self.pods.v1

    def pods_of(self, dag_id: str, run_id: str, task_id: str | None = None) -> list[PodRecord]:
        """Records of every pod created for a DAG run (of one task), in creation order, kept after deletion."""
        return [
            record
            for record in self.pods.records
            if record.annotations.get("dag_id") == dag_id
            and record.annotations.get("run_id") == run_id
            and task_id in (None, record.annotations.get("task_id"))
        ]

    def pool_of_node(self, node: str) -> str:
        """``cpu`` or ``gpu``: the node pool a node belongs to, by fanout's pool settings."""
        return node_pool(self.pods.node(node), self.stack.env())

    def gpus(self) -> int:
        return pool_gpus(self.pods, self.stack.env())

    def restart_scheduler(self, env: dict[str, str] | None = None) -> float:
        """Stop the scheduler (SIGTERM, as a rolling update does) and start it again, with ``env``
        changed for it alone (e.g. a deployment's task sizes); returns how long the stop took."""
        began = time.monotonic()
        self.stack.stop_component("scheduler")
        stopped_after = time.monotonic() - began
        self.stack.start_component("scheduler", {**self.stack.env(), **(env or {})})
        return stopped_after

    def require_harness(self, why: str) -> Cluster:
        """The harness, or skip: the test needs what only the harness can do (``why``)."""
        if self.harness is None:
            pytest.skip(f"needs the harness: {why} (not possible through the Kubernetes API)")
        return self.harness


def node_pool(node: dict[str, Any], env: dict[str, str]) -> str:
    """``cpu`` or ``gpu``: the pool of a node (as the API serves it), by fanout's pool settings."""
    labelled = client.V1Node(metadata=client.V1ObjectMeta(labels=node["metadata"].get("labels") or {}))
    return GPU if pool_nodes(GPU, [labelled], fanout_settings(env)) else "cpu"


def pool_gpus(pods: PodWatch, env: dict[str, str]) -> int:
    """GPUs of the GPU pool, as its nodes report them (allocatable)."""
    resource = fanout_settings(env).gpu_resource
    return sum(
        int(node["status"].get("allocatable", {}).get(resource, 0))
        for node in pods.nodes()
        if node_pool(node, env) == GPU
    )


def _api_client(kubeconfig: Path, context: str | None) -> Any:
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), context=context, client_configuration=configuration)
    return client.ApiClient(configuration)


@contextmanager
def _cluster(target: Target, workdir: Path, image_env: dict[str, str], namespace: str):
    """(kubeconfig, harness or None, S3 server or None): the harness started for the test with an
    S3 server for its task logs, or the given cluster (whose logs go where its settings say)."""
    if target.is_harness:
        with (
            S3Server() as s3,
            Cluster(
                default_nodes(), namespace=namespace, workdir=workdir / "cluster", image_env=image_env
            ) as cluster,
        ):
            s3.create_bucket(LOG_BUCKET)
            yield cluster.kubeconfig_path, cluster, s3
    else:
        yield target.kubeconfig, None, None


@contextmanager
def cluster_pipeline(
    workdir: Path, *, params: dict | None = None, target: Target | None = None
) -> Generator[ClusterPipeline, None, None]:
    """Start (or connect to) the cluster and start Airflow on it; stop everything at the end."""
    target = target or Target()
    workdir = Path(workdir)
    config_env = chart_config()
    namespace = target.namespace or config_env["AIRFLOW__KUBERNETES_EXECUTOR__NAMESPACE"]
    dags = dags_folder(workdir)
    if target.is_harness:
        artifact_root = workdir / "artifacts"
        artifact_root.mkdir(parents=True, exist_ok=True)
        pod_artifact_root = str(artifact_root)
    else:
        artifact_root, pod_artifact_root = target.local_artifact_root, target.artifact_root
    # What the worker image bakes in: the DAGs, and plugins/ in AIRFLOW_HOME, so pods load fanout's
    # plugin as real ones do (images/airflow/Dockerfile).
    image_env = {
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
    }
    with _cluster(target, workdir, image_env, namespace) as (kubeconfig, harness, s3):
        api_client = _api_client(kubeconfig, target.context)
        watch = PodWatch(api_client, namespace).start()
        stack = AirflowStack(home=workdir / "airflow-home", dags_folder=dags, executor=EXECUTOR)
        if target.is_harness:
            execution_api = f"{stack.base_url}/execution/"
        else:  # pods reach this machine at the given address; the api-server listens on every interface
            execution_api = f"http://{target.api_host}:{stack.port}/execution/"
            stack.extra_env["AIRFLOW__API__HOST"] = "0.0.0.0"
        # The chart's remote logging: every pod uploads its task's log to the bucket when the task
        # ends and the api-server reads it from there (each pod's local log folder is under its own
        # HOME, gone with the pod as on a real node).
        remote_logging = {**s3.env(), **s3.remote_logging_env(REMOTE_LOG_FOLDER)} if s3 is not None else {}
        settings = {
            "FANOUT_ARTIFACT_ROOT": pod_artifact_root,
            "FANOUT_PARAMS": json.dumps(params or SMALL_PARAMS),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": execution_api,
            **{k: v for k, v in TEST_SETTINGS.items() if not k.startswith("AIRFLOW__SCHEDULER__")},
            **remote_logging,
            **target.extra_env,
        }
        if not target.is_harness:
            settings["FANOUT_GPU_IMAGE"] = target.worker_image or ""
            if target.artifact_pvc:
                settings["FANOUT_ARTIFACT_PVC"] = target.artifact_pvc
        stack.extra_env.update(
            {
                **config_env,
                "AIRFLOW__KUBERNETES_EXECUTOR__CONFIG_FILE": str(kubeconfig),
                "AIRFLOW__KUBERNETES_EXECUTOR__IN_CLUSTER": "False",
                "AIRFLOW__KUBERNETES_EXECUTOR__NAMESPACE": namespace,
                "AIRFLOW__KUBERNETES_EXECUTOR__POD_TEMPLATE_FILE": str(POD_TEMPLATE),
                **(
                    {"AIRFLOW__KUBERNETES_EXECUTOR__CLUSTER_CONTEXT": target.context}
                    if target.context
                    else {}
                ),
                **target.worker_image_config(),
                **TEST_SETTINGS,
                **settings,  # the chart's extraEnvFrom: fanout-settings
            }
        )
        # The Airflow pool gating GPU tasks has one slot per GPU of the GPU pool.
        gpus = str(max(1, pool_gpus(watch, stack.env())))
        settings["FANOUT_GPU_AIRFLOW_POOL_SLOTS"] = stack.extra_env["FANOUT_GPU_AIRFLOW_POOL_SLOTS"] = gpus
        config_map = {"metadata": {"name": template_config_map()}, "data": settings}
        with contextlib.suppress(client.ApiException):  # a previous run's, on a real cluster
            watch.v1.delete_namespaced_config_map(template_config_map(), namespace)
        watch.v1.create_namespaced_config_map(namespace, config_map)
        try:
            airflow = stack.start()
            prepare(airflow, stack)
            yield ClusterPipeline(watch, harness, stack, airflow, Path(artifact_root), settings, s3)
        finally:
            stack.stop()
            watch.stop()
            if not target.is_harness:
                with contextlib.suppress(client.ApiException):
                    watch.v1.delete_namespaced_config_map(template_config_map(), namespace)


class PodStuck(AssertionError):
    """A pod waited on the Kubernetes scheduler far longer than any pod should."""


def fail_if_a_pod_is_stuck(pods: PodWatch, patience: float = 30.0):
    """An ``on_poll`` for ``AirflowClient.wait_run``: fail fast, with the scheduler's reason, when
    a pod stays unschedulable (a size no node fits, a missing toleration) instead of waiting for
    ``task_queued_timeout`` to requeue it twice."""

    def check(run: dict, task_instances: list[dict]) -> None:
        now = time.time()
        for record in pods.records:
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
    client_ = cp.client
    for dag_id in PIPELINE:
        client_.unpause(dag_id)
    started = datetime.now(UTC).isoformat()
    stuck = fail_if_a_pod_is_stuck(cp.pods)
    reports = []
    key = last_partition_key(fanout_settings().schedule)  # training and rendering follow a partition
    run_id = client_.trigger(PIPELINE[0], conf or {}, partition_key=key)
    for index, dag_id in enumerate(PIPELINE):
        if index:
            run_id = wait_partition_run(client_, dag_id, key, after=started, timeout=120)
        print(f"{time.strftime('%H:%M:%S')} {dag_id}: run {run_id}", flush=True)
        progress = Progress(dag_id)

        def on_poll(run: dict, tis: list[dict], progress: Progress = progress) -> None:
            progress(run, tis)
            stuck(run, tis)

        run = client_.wait_run(dag_id, run_id, timeout=timeout, on_poll=on_poll, interval=1)
        reports.append(summarise_run(client_, dag_id, run_id))
        if run["state"] != "success":
            break
    return reports
