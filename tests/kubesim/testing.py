"""Helpers for tests on the harness: pod manifests, reading a watch as the executor does, and the Airflow
configuration that points the KubernetesExecutor at a running cluster."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from kubernetes import watch

if TYPE_CHECKING:
    from tests.kubesim.cluster import Cluster

SLEEP_FOREVER = "import time\nprint('started', flush=True)\ntime.sleep(300)"
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def python_pod(name: str, code: str = "pass", **spec: Any) -> dict[str, Any]:
    """A pod whose base container runs ``python -c code``, as Airflow's worker pods run python.

    ``container=`` updates the container; ``labels=`` replaces the labels; other keywords go to the spec.
    """
    container = {"name": "base", "image": "apache/airflow:3.3.2", "args": ["python", "-c", code]}
    container.update(spec.pop("container", {}))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": spec.pop("labels", {"app": "kubesim-test"})},
        "spec": {"restartPolicy": "Never", "containers": [container], **spec},
    }


def watch_events(
    v1: Any,
    since: str,
    *,
    namespace: str = "default",
    label_selector: str | None = None,
    until: Any = lambda event: False,
    timeout_seconds: int = 1,
) -> list[dict[str, Any]]:
    """The events of a pod watch from ``since`` through the client's Watch, as the executor reads them.

    Stops at the first event for which ``until`` holds, or when the server ends the watch.
    """
    events = []
    stream = watch.Watch()
    kwargs: dict[str, Any] = {"resource_version": since, "timeout_seconds": timeout_seconds}
    if label_selector:
        kwargs["label_selector"] = label_selector
    for event in stream.stream(v1.list_namespaced_pod, namespace, **kwargs):
        events.append(event)
        if until(event):
            stream.stop()
    return events


def worker_pod_template(
    execution_api_url: str, dags_folder: str, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """The worker pod template: what a chart gives every task pod (image, config env, requests).

    Task pods get no airflow.cfg here: their configuration travels as env, as in the official chart.
    """
    config = {
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": execution_api_url,
        "AIRFLOW__CORE__DAGS_FOLDER": dags_folder,
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        **(env or {}),
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "placeholder"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "base",
                    "image": "apache/airflow:3.3.2",
                    "env": [{"name": name, "value": value} for name, value in config.items()],
                    "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}},
                }
            ],
        },
    }


def kubernetes_executor_env(
    cluster: Cluster,
    *,
    execution_api_url: str,
    dags_folder: Path | str,
    pod_env: dict[str, str] | None = None,
    delete_worker_pods: bool = True,
) -> dict[str, str]:
    """Env for Airflow components so the unmodified KubernetesExecutor uses ``cluster``.

    Writes the worker pod template next to the cluster's kubeconfig. Pass the result as
    ``AirflowStack(extra_env=...)`` together with ``executor="KubernetesExecutor"``.
    """
    template = cluster.workdir / "pod_template.yaml"
    template.write_text(yaml.safe_dump(worker_pod_template(execution_api_url, str(dags_folder), pod_env)))
    return {
        "AIRFLOW__KUBERNETES_EXECUTOR__CONFIG_FILE": str(cluster.kubeconfig_path),
        "AIRFLOW__KUBERNETES_EXECUTOR__IN_CLUSTER": "False",
        "AIRFLOW__KUBERNETES_EXECUTOR__NAMESPACE": cluster.namespace,
        "AIRFLOW__KUBERNETES_EXECUTOR__POD_TEMPLATE_FILE": str(template),
        "AIRFLOW__KUBERNETES_EXECUTOR__DELETE_WORKER_PODS": str(delete_worker_pods),
    }
