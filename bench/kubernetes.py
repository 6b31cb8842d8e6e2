"""KubernetesExecutor on the local cluster harness (``tests/kubesim``): pod start cost per task.

The unmodified KubernetesExecutor creates one pod per task against the harness's API server;
the harness's kubelet runs each pod's container as a local process (the real
``execute_workload``), so a pod costs what a cold worker interpreter costs, without image pulls
or node scheduling delays of a real cluster. The same no-op fan-out as on the LocalExecutor
(same size, same parallelism) gives the wall-time ratio; pod records give
pod created -> container started -> task start (the task instance's ``start_date``).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import yaml

from bench.common import BENCH_DIR, distribution, ratio, rnd, skipped, ts

DAG_ID = "bench_noop"
NAMESPACE = "airflow"


def run(n: int, parallelism: int, local_fanout: dict | None, overrides: dict[str, str] | None = None) -> dict:
    try:
        from tests.kubesim import Cluster
        from tests.kubesim.testing import worker_pod_template
    except ImportError as exc:
        return skipped(f"harness not available: {exc}")
    from fanout.localstack import AirflowStack

    workdir = Path(tempfile.mkdtemp(prefix="fanout-bench-k8s-"))
    dags = workdir / "dags"
    dags.mkdir()
    shutil.copy2(BENCH_DIR / "dags" / "bench_noop.py", dags)
    try:
        with Cluster(workdir=workdir / "cluster", namespace=NAMESPACE) as cluster:
            stack = AirflowStack(
                home=workdir / "home",
                dags_folder=dags,
                executor="KubernetesExecutor",
                parallelism=parallelism,
            )
            template = workdir / "pod_template.yaml"
            template.write_text(
                # The supervisor runs in the pod: the stack's overrides travel with the pod.
                yaml.safe_dump(worker_pod_template(f"{stack.base_url}/execution/", str(dags), overrides))
            )
            stack.extra_env.update(
                {
                    **(overrides or {}),
                    "AIRFLOW__KUBERNETES_EXECUTOR__CONFIG_FILE": str(cluster.kubeconfig_path),
                    "AIRFLOW__KUBERNETES_EXECUTOR__IN_CLUSTER": "False",
                    "AIRFLOW__KUBERNETES_EXECUTOR__NAMESPACE": NAMESPACE,
                    "AIRFLOW__KUBERNETES_EXECUTOR__POD_TEMPLATE_FILE": str(template),
                    "AIRFLOW__KUBERNETES_EXECUTOR__DELETE_WORKER_PODS": "True",
                }
            )
            client = stack.start()
            try:
                client.wait_for_dags([DAG_ID], timeout=60)
                client.unpause(DAG_ID)
                triggered = time.time()
                run_id = client.trigger(DAG_ID, {"n": n})
                dag_run = client.wait_run(DAG_ID, run_id, timeout=300, interval=0.5)
                tis = client.task_instances(DAG_ID, run_id)
            finally:
                # The KubernetesExecutor's scheduler outlives SIGTERM by the full 15 s grace; every
                # result is in by now, so it gets 2 s.
                stack.stop_component("scheduler", grace=2)
                stack.stop()
            records = [
                r
                for r in cluster.records
                if r.labels.get("dag_id") == DAG_ID
                and r.labels.get("task_id") == "noop"
                and r.created_at >= triggered
            ]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if dag_run["state"] != "success":
        raise RuntimeError(f"{DAG_ID} on the KubernetesExecutor ended {dag_run['state']}")
    starts = {
        str(t["map_index"]): ts(t["start_date"]) for t in tis if t["task_id"] == "noop" and t["start_date"]
    }
    create_to_start = [
        starts[r.labels["map_index"]] - r.created_at for r in records if r.labels.get("map_index") in starts
    ]
    create_to_container = [r.started_at - r.created_at for r in records if r.started_at]
    container_to_task = [
        starts[r.labels["map_index"]] - r.started_at
        for r in records
        if r.started_at and r.labels.get("map_index") in starts
    ]
    wall = ts(dag_run["end_date"]) - ts(dag_run["start_date"])
    local_wall = local_fanout["wall_s"] if local_fanout else None
    return {
        "n": n,
        "parallelism": parallelism,
        "pods": len(records),
        "wall_s": rnd(wall),
        "local_executor_wall_s": local_wall,
        "wall_ratio_vs_local": rnd(ratio(wall, local_wall)),
        "pod_create_to_task_start_s": distribution(create_to_start),
        "pod_create_to_container_start_s": distribution(create_to_container),
        "container_start_to_task_start_s": distribution(container_to_task),
        "pods_deleted": sum(r.deleted_at is not None for r in records),
        "note": "local harness: pods are local processes (no image pull, no node start-up)",
    }


def figures(section: dict) -> list[tuple[str, str]]:
    if section.get("status") == "skipped":
        return [("KubernetesExecutor", f"skipped: {section['reason']}")]
    latency = section["pod_create_to_task_start_s"]
    return [
        (
            "pod create → task start",
            f"p50 {latency['p50']} s, p95 {latency['p95']} s (container start → task start p50 "
            f"{section['container_start_to_task_start_s']['p50']} s)",
        ),
        (
            f"no-op x{section['n']} wall, KubernetesExecutor vs LocalExecutor",
            f"{section['wall_s']} s vs {section['local_executor_wall_s']} s ({section['wall_ratio_vs_local']}x)",
        ),
    ]
