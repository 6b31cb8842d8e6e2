"""KubernetesExecutor on the local cluster harness (``tests/kubesim``): pod start cost per task.

The unmodified KubernetesExecutor creates one pod per task against the harness's API server;
the harness's kubelet runs each pod's container as a local process (the real
``execute_workload``), so a pod costs what a cold worker interpreter costs, without image pulls
or node scheduling delays of a real cluster. The same no-op fan-out as on the LocalExecutor
(same size, same parallelism) gives the wall-time ratio; pod records give
pod created -> container started -> task start (the task instance's ``start_date``).

Task start in a pod: one more pod, with Python's import profiling on (``PYTHONPROFILEIMPORTTIME=1``
in the env every pod takes: the pod template here, the ``fanout-settings`` ConfigMap in fanout's
deployment), switched on for that probe run only. Its container's output (``kubectl logs``) holds
the imports of the container's main process (the supervisor: for fanout ``python -m fanout.taskpod``
in front of ``execute_workload``) and the task's log lines, among them the forked task process's
imports (its stderr, which the supervisor forwards as timestamped ``task.stderr`` lines) and the
task runner's ``::endgroup::``, logged right before the task's function is called: what a pod
imports from container start until the task's function runs, and when that is. Two probes, the
quickest of ``repeats`` pods each (a pod's start swings with the machine's load):

- the anchor: ``bench_noop``'s ``noop`` on this section's stack (plain Airflow: the unmodified
  KubernetesExecutor, Airflow's default pod, no plugins);
- fanout: ``fanout_render``'s ``render_chunk``, its heaviest task that needs no upstream data
  (``model`` empty: it renders an untextured floor), on fanout's deployment as
  ``tests/cluster/stack.py`` sets it up (``FanoutKubernetesExecutor``, ``helm/pod-template.yaml``,
  the ``fanout-settings`` ConfigMap, remote logging to S3) with the plugins folder the image bakes in.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench.common import BENCH_DIR, PROJECT_ROOT, distribution, ratio, rnd, skipped, ts
from bench.parse_time import import_tree
from bench.task_start import import_shares

DAG_ID = "bench_noop"
NAMESPACE = "airflow"
PROFILE_IMPORTS = {"PYTHONPROFILEIMPORTTIME": "1"}
CALLABLE_MARK = "::endgroup::"
"""The task runner logs this right before it calls the task's function (``_execute_task``)."""
RENDER_DAG = "fanout_render"
RENDER_TASK = "render_chunk"
# One chunk of one tiny frame: the pod's start, not the render, is what is measured.
RENDER_CONF = {"n_frames": 1, "chunk_size": 1, "width": 16, "height": 16, "samples": 1, "model": ""}
TARGET_FANOUT_MS = 50


def run(
    n: int,
    parallelism: int,
    local_fanout: dict | None,
    overrides: dict[str, str] | None = None,
    repeats: int = 1,
) -> dict:
    """The no-op fan-out, then the task-start probes (the quickest of ``repeats`` pods each)."""
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
                # The executor reads its pod template for every pod: the probe's pod gets the
                # profiling env, the fan-out's pods did not.
                _write_yaml(
                    template,
                    worker_pod_template(
                        f"{stack.base_url}/execution/", str(dags), {**(overrides or {}), **PROFILE_IMPORTS}
                    ),
                )
                anchor = _best_probe(client, cluster, DAG_ID, "noop", {"n": 1}, repeats)
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
                and r.annotations.get("run_id") == run_id
                and r.created_at >= triggered
            ]
        fanout = fanout_pod_start(workdir / "fanout", repeats)
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
        "task_start_in_pod": {"fanout": fanout, "anchor": anchor},
    }


def _write_yaml(path: Path, content: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(content))
    tmp.replace(path)  # the scheduler may read it at any moment


def fanout_pod_start(workdir: Path, repeats: int = 1) -> dict:
    """``render_chunk``'s start in a pod of fanout's deployment on the harness, imports profiled."""
    from tests.cluster.stack import cluster_pipeline, template_config_map

    with cluster_pipeline(workdir) as cp:
        # What the pod template's envFrom gives every pod from now on. The plugins folder is what
        # the image bakes in (images/airflow/Dockerfile: plugins/ in AIRFLOW_HOME); harness pods
        # otherwise have none.
        cp.v1.patch_namespaced_config_map(
            template_config_map(),
            cp.namespace,
            {
                "data": {
                    **PROFILE_IMPORTS,
                    "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
                }
            },
        )
        return _best_probe(cp.client, cp.harness, RENDER_DAG, RENDER_TASK, RENDER_CONF, repeats)


def _best_probe(client: Any, cluster: Any, dag_id: str, task_id: str, conf: dict, repeats: int) -> dict:
    """The quickest of ``repeats`` probe runs (container start to function), with every sample."""
    samples = [_probe_pod(client, cluster, dag_id, task_id, conf) for _ in range(max(1, repeats))]
    best = min(samples, key=lambda s: s["container_start_to_function_s"])
    return {
        **best,
        "container_start_to_function_samples_s": [s["container_start_to_function_s"] for s in samples],
    }


def _probe_pod(client: Any, cluster: Any, dag_id: str, task_id: str, conf: dict) -> dict:
    """Trigger ``dag_id``, wait for ``task_id`` to end, and read its pod's imports and timings."""
    client.unpause(dag_id)
    run_id = client.trigger(dag_id, conf)
    deadline = time.monotonic() + 300
    while True:
        tis = [t for t in client.task_instances(dag_id, run_id) if t["task_id"] == task_id]
        if tis and tis[0]["state"] in ("success", "failed", "upstream_failed", "skipped", "removed"):
            break
        if client.dag_run(dag_id, run_id)["state"] in ("success", "failed") or time.monotonic() > deadline:
            raise RuntimeError(f"{dag_id}.{task_id} did not end: {[t['state'] for t in tis]}")
        time.sleep(0.5)
    ti = tis[0]
    if ti["state"] != "success":
        raise RuntimeError(f"{dag_id}.{task_id} in a pod ended {ti['state']}")
    record = next(
        r
        for r in cluster.records
        if r.annotations.get("dag_id") == dag_id
        and r.annotations.get("run_id") == run_id
        and r.annotations.get("task_id") == task_id
    )
    return {
        "dag_id": dag_id,
        "task_id": task_id,
        "pod": record.name,
        **pod_start_imports(cluster.logs(record.name), record.started_at, ts(ti["start_date"])),
    }


def pod_start_imports(container_log: str, container_started: float, task_started: float | None) -> dict:
    """What a pod imported from container start until the task's function ran, and when it ran.

    ``container_log`` is the container's output (``kubectl logs``): the supervisor's own
    ``-X importtime`` lines, and its JSON log lines, which carry the task process's (``task.stderr``,
    stamped when the supervisor forwarded them) and the task runner's ``::endgroup::``, logged
    right before the task's function is called. The supervisor's lines count until that mark's
    line; the task process's until its timestamp; the task process's later ones are the function's.
    """
    supervisor: list[str] = []
    task_lines: list[tuple[float, str]] = []
    called_at = None
    for line in container_log.splitlines():
        if line.startswith("import time:"):
            if called_at is None:
                supervisor.append(line)
            continue
        event = _json_line(line)
        if event is None:
            continue
        message = event.get("event")
        if called_at is None and message == CALLABLE_MARK and event.get("logger") == "task":
            called_at = ts(event["timestamp"])
        elif event.get("logger") == "task.stderr" and str(message).startswith("import time:"):
            task_lines.append((ts(event["timestamp"]), message))
    if called_at is None:
        raise ValueError(f"no {CALLABLE_MARK!r} line in the pod's output: the task's function never ran")
    if not supervisor or not task_lines:
        raise ValueError("no import profile in the pod's output: was PYTHONPROFILEIMPORTTIME set?")
    supervisor_roots = import_tree("\n".join(supervisor))
    task_roots = import_tree("\n".join(line for at, line in task_lines if at <= called_at))
    function_roots = import_tree("\n".join(line for at, line in task_lines if at > called_at))
    shares = {
        "supervisor": import_shares(supervisor_roots),
        "task_process": import_shares(task_roots),
        "task_function": import_shares(function_roots),
    }
    start = import_shares(supervisor_roots + task_roots, top=5)
    return {
        "container_start_to_task_start_s": rnd(task_started - container_started) if task_started else None,
        "container_start_to_function_s": rnd(called_at - container_started),
        "imports_ms": start["imports_ms"],
        # Until the function runs, and the fanout modules the function imports (its first lines).
        "fanout_ms": rnd(start["fanout_ms"] + shares["task_function"]["fanout_ms"], 1),
        "heaviest": start["heaviest"],
        "by_process": shares,
    }


def _json_line(line: str) -> dict | None:
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) and event.get("timestamp") else None


def targets(section: dict) -> list[dict]:
    """fanout's share of a task pod's start <= 50 ms, as on the local probe (``task_start``)."""
    if section.get("status") == "skipped":
        return []
    probe = section["task_start_in_pod"]
    fanout, anchor = probe["fanout"], probe["anchor"]
    return [
        {
            "id": "task_start_in_pod",
            "benchmark": "task start",
            "figure": f"in a harness pod: {fanout['dag_id']}.{fanout['task_id']}, fanout's imports from "
            "container start to the task's function and its own fanout imports",
            "value": fanout["fanout_ms"],
            "unit": "ms",
            "target": f"<= {TARGET_FANOUT_MS} ms",
            "met": fanout["fanout_ms"] <= TARGET_FANOUT_MS,
            "note": f"{fanout['fanout_ms'] / fanout['imports_ms']:.1%} of all imports until the function runs, "
            f"{fanout['imports_ms']:.0f} ms; container start → "
            f"function {fanout['container_start_to_function_s']} s; plain Airflow's "
            f"{anchor['dag_id']}.{anchor['task_id']}: {anchor['imports_ms']:.0f} ms, "
            f"{anchor['container_start_to_function_s']} s",
            "blocker": "fanout's heaviest in the pod: "
            + ", ".join(
                f"{where} {h['module']} {h['ms']:.0f} ms"
                for where, shares in fanout["by_process"].items()
                if (h := shares.get("fanout_heaviest"))
            ),
        }
    ]


def _pod_start(probe: dict) -> str:
    by = probe["by_process"]
    then = ", ".join(f"{h['module']} {h['ms']:.0f} ms" for h in by["task_function"]["heaviest"])
    return (
        f"container start → task start {probe['container_start_to_task_start_s']} s → its function "
        f"{probe['container_start_to_function_s']} s; imports until then {probe['imports_ms']:.0f} ms "
        f"(supervisor {by['supervisor']['imports_ms']:.0f}, task process "
        f"{by['task_process']['imports_ms']:.0f}), fanout's {probe['fanout_ms']:.0f} ms; heaviest "
        + ", ".join(f"{h['module']} {h['ms']:.0f}" for h in probe["heaviest"][:3])
        + f"; then the function imports {then or 'nothing'}"
    )


def figures(section: dict) -> list[tuple[str, str]]:
    if section.get("status") == "skipped":
        return [("KubernetesExecutor", f"skipped: {section['reason']}")]
    latency = section["pod_create_to_task_start_s"]
    fanout, anchor = section["task_start_in_pod"]["fanout"], section["task_start_in_pod"]["anchor"]
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
        (f"task start in a pod, {fanout['dag_id']}.{fanout['task_id']}", _pod_start(fanout)),
        (f"task start in a pod, {anchor['dag_id']}.{anchor['task_id']} (plain Airflow)", _pod_start(anchor)),
    ]
