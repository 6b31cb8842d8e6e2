"""Task pods: helm/pod-template.yaml + each task's pod_override, as the KubernetesExecutor builds them."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

import jmespath
import kubernetes_validate
import pytest

from fanout import pods, pools
from fanout.settings import settings
from tests.packaging.helmkit import KUBE_VERSION, NAMESPACE, POD_TEMPLATE, ROOT, HelmError, render_chart

# Sizes agreed for the three DAGs (fanout.pools.SIZES): cheap fan-in tasks ask for little.
EXPECTED_SIZES = {
    "fanout_preprocess": {
        "plan_dataset": "bookkeeping",
        "generate_shard": "generate",
        "commit_dataset": "bookkeeping",
        "featurise_shard": "shard",
        "merge_stats": "bookkeeping",
    },
    "fanout_train": {"plan_trials": "bookkeeping", "train_trial": "trial", "select_best": "bookkeeping"},
    "fanout_render": {"plan_chunks": "bookkeeping", "render_chunk": "frames", "encode_video": "encode"},
}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"}
WORKER_IMAGE = "registry.example.com/fanout-airflow:0.1.0"  # [kubernetes_executor] worker_container_*


@pytest.fixture(autouse=True)
def _pool_env(monkeypatch):
    """Placement reads the environment: start every test from the defaults."""
    for name in list(os.environ):
        if name.startswith("FANOUT_"):
            monkeypatch.delenv(name)


def build_pod(override, *, dag_id="d", task_id="t", map_index=-1) -> dict:
    """The pod the executor would create, as the JSON the Kubernetes API receives."""
    from airflow.providers.cncf.kubernetes.pod_generator import PodGenerator
    from kubernetes.client import ApiClient

    pod = PodGenerator.construct_pod(
        dag_id=dag_id,
        task_id=task_id,
        pod_id=f"{dag_id}-{task_id}".replace("_", "-"),
        try_number=1,
        kube_image=WORKER_IMAGE,
        date=None,
        args=["python", "-m", "airflow.sdk.execution_time.execute_workload", "--json-string", "{}"],
        pod_override_object=override,
        base_worker_pod=PodGenerator.deserialize_model_file(str(POD_TEMPLATE)),
        namespace=NAMESPACE,
        scheduler_job_id="1",
        run_id="manual__2026-11-22T00:00:00+00:00",
        map_index=map_index,
    )
    return ApiClient().sanitize_for_serialization(pod) | {"apiVersion": "v1", "kind": "Pod"}


@pytest.fixture(scope="module")
def serialized_tasks(dagbag):
    """(dag_id, task) for every task of every DAG, after the round trip through DAG serialization."""
    from airflow.serialization.serialized_objects import DagSerialization

    assert not dagbag.import_errors, dagbag.import_errors
    assert set(EXPECTED_SIZES) <= set(dagbag.dags)
    tasks = []
    for dag_id in sorted(dagbag.dags):
        dag = DagSerialization.from_dict(DagSerialization.to_dict(dagbag.dags[dag_id]))
        tasks += [(dag_id, task) for task in dag.tasks]
    return tasks


def task_pods(serialized_tasks):
    for dag_id, task in serialized_tasks:
        assert pools.SIZE_KEY in (task.executor_config or {}), f"{dag_id}.{task.task_id} names no size"
        config = pods.resolve_executor_config(task.executor_config)
        yield dag_id, task, build_pod(config["pod_override"], dag_id=dag_id, task_id=task.task_id)


def is_gpu(pod: dict) -> bool:
    return pod["metadata"]["labels"]["fanout.io/pool"] == "gpu"


def test_every_task_pod_is_a_valid_v1_pod(serialized_tasks):
    for dag_id, task, pod in task_pods(serialized_tasks):
        kubernetes_validate.validate(pod, KUBE_VERSION, strict=True)
        for field, items in [
            ("volume", pod["spec"].get("volumes", [])),
            ("env", pod["spec"]["containers"][0].get("env", [])),
            ("mount path", [{"name": m["mountPath"]} for m in pod["spec"]["containers"][0]["volumeMounts"]]),
        ]:
            duplicates = [name for name, n in Counter(i["name"] for i in items).items() if n > 1]
            assert not duplicates, f"{dag_id}.{task.task_id}: duplicate {field} {duplicates}"


def test_every_task_declares_its_agreed_size(serialized_tasks):
    sizes = {
        (dag_id, task.task_id): pod["metadata"]["labels"]["fanout.io/size"]
        for dag_id, task, pod in task_pods(serialized_tasks)
    }
    for dag_id, expected in EXPECTED_SIZES.items():
        for task_id, size in expected.items():
            assert sizes.get((dag_id, task_id)) == size, f"{dag_id}.{task_id}"


def test_gpu_task_pods_select_tolerate_and_limit_the_gpu_pool(serialized_tasks):
    gpu_tasks = 0
    for dag_id, task, pod in task_pods(serialized_tasks):
        if not is_gpu(pod):
            continue
        gpu_tasks += 1
        spec, container = pod["spec"], pod["spec"]["containers"][0]
        assert spec["nodeSelector"] == {"fanout.io/pool": "gpu"}, task.task_id
        assert GPU_TOLERATION in spec["tolerations"], task.task_id
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1", task.task_id
        assert jmespath.search("volumes[?name=='dshm'].emptyDir.medium", spec) == ["Memory"], task.task_id
        assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"], task.task_id
        assert task.pool == "fanout_gpu", f"{dag_id}.{task.task_id} is not gated by the GPU Airflow pool"
    assert gpu_tasks >= 2  # train_trial and render_chunk


def test_cpu_task_pods_never_tolerate_the_gpu_taint(serialized_tasks):
    for _dag_id, task, pod in task_pods(serialized_tasks):
        if is_gpu(pod):
            continue
        spec = pod["spec"]
        assert spec["nodeSelector"] == {"fanout.io/pool": "cpu"}, task.task_id
        assert "nvidia.com/gpu" not in [t["key"] for t in spec.get("tolerations", [])], task.task_id
        assert "nvidia.com/gpu" not in spec["containers"][0]["resources"]["limits"], task.task_id
        assert task.pool != "fanout_gpu"


def test_every_container_has_requests_and_limits_and_runs_non_root(serialized_tasks):
    for _dag_id, task, pod in task_pods(serialized_tasks):
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        assert pod["spec"]["restartPolicy"] == "Never"
        for container in pod["spec"]["containers"]:
            resources = container["resources"]
            assert {"cpu", "memory"} <= resources["requests"].keys(), task.task_id
            assert {"cpu", "memory"} <= resources["limits"].keys(), task.task_id
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert pod["spec"]["containers"][0]["name"] == "base"
        assert pod["spec"]["containers"][0]["image"] == WORKER_IMAGE


def test_fan_in_tasks_ask_for_less_than_the_work_they_gather(serialized_tasks):
    requests = {}
    for dag_id, task, pod in task_pods(serialized_tasks):
        requests[dag_id, task.task_id] = pod["spec"]["containers"][0]["resources"]["requests"]["memory"]
    assert requests["fanout_train", "select_best"] == "768Mi"
    assert requests["fanout_preprocess", "merge_stats"] == "768Mi"


def test_every_task_container_runs_taskpod_in_front_of_the_executors_args(serialized_tasks):
    """fanout.taskpod fails the pod when its task process is killed; the kubelet keeps its last words."""
    for _dag_id, task, pod in task_pods(serialized_tasks):
        container = pod["spec"]["containers"][0]
        assert container["command"] == ["python", "-m", "fanout.taskpod"], task.task_id
        assert container["args"][:3] == ["python", "-m", "airflow.sdk.execution_time.execute_workload"]
        assert container["terminationMessagePolicy"] == "FallbackToLogsOnError", task.task_id


def test_worker_template_is_what_the_harness_and_chart_expect():
    pod = build_pod(None)
    container = pod["spec"]["containers"][0]
    assert container["envFrom"] == [{"configMapRef": {"name": "fanout-settings", "optional": True}}]
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert "{{" not in POD_TEMPLATE.read_text()  # the official chart runs it through `tpl`
    kubernetes_validate.validate(pod, KUBE_VERSION, strict=True)


# -- fanout.pools configuration ----------------------------------------------------------------


def spec_of(size: str) -> dict:
    config = pods.resolve_executor_config(pools.placement(size)["executor_config"])
    return build_pod(config["pod_override"])["spec"]


def test_placement_of_a_gpu_size_takes_the_gpu_airflow_pool():
    kwargs = pools.placement("trial")
    assert kwargs["pool"] == "fanout_gpu"
    assert "executor" not in kwargs


def test_bookkeeping_uses_the_light_task_executor_only_when_configured(monkeypatch):
    assert "executor" not in pools.placement("bookkeeping")
    monkeypatch.setenv("FANOUT_LIGHT_TASK_EXECUTOR", "LocalExecutor")
    assert pools.placement("bookkeeping")["executor"] == "LocalExecutor"
    assert "executor" not in pools.placement("shard")


def test_render_pool_can_move_frames_to_cpu(monkeypatch):
    monkeypatch.setenv("FANOUT_RENDER_POOL", "cpu")
    kwargs = pools.placement("frames")
    assert "pool" not in kwargs
    spec = spec_of("frames")
    assert spec["nodeSelector"] == {"fanout.io/pool": "cpu"}
    assert "nvidia.com/gpu" not in spec["containers"][0]["resources"]["limits"]
    assert "dshm" not in [v["name"] for v in spec["volumes"]]


def test_cloud_specific_pool_labels_and_taints(monkeypatch):
    monkeypatch.setenv(
        "FANOUT_GPU_POOL_SELECTOR", "karpenter.sh/nodepool=gpu,topology.kubernetes.io/zone=eu-west-1a"
    )
    monkeypatch.setenv("FANOUT_GPU_TAINT", "nvidia.com/gpu:NoSchedule,dedicated=ml:NoExecute")
    monkeypatch.setenv("FANOUT_GPU_AIRFLOW_POOL", "gpus")
    monkeypatch.setenv("FANOUT_GPU_IMAGE", "registry.example.com/fanout-gpu-worker:0.1.0")
    monkeypatch.setenv("FANOUT_PRIORITY_CLASS_PREFIX", "fanout-")
    spec = spec_of("trial")
    assert spec["nodeSelector"] == {
        "karpenter.sh/nodepool": "gpu",
        "topology.kubernetes.io/zone": "eu-west-1a",
    }
    assert spec["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoExecute"},
    ]
    assert spec["containers"][0]["image"] == "registry.example.com/fanout-gpu-worker:0.1.0"
    assert spec["priorityClassName"] == "fanout-training"
    assert pools.placement("trial")["pool"] == "gpus"


def test_unlabelled_cpu_pool_still_keeps_cpu_pods_off_gpu_nodes(monkeypatch):
    monkeypatch.setenv("FANOUT_CPU_POOL_SELECTOR", "")
    spec = spec_of("shard")
    assert "nodeSelector" not in spec
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"][0]["matchExpressions"] == [
        {"key": "fanout.io/pool", "operator": "NotIn", "values": ["gpu"]}
    ]


def test_artifact_pvc_and_object_store_secret_are_wired_into_task_pods(monkeypatch):
    monkeypatch.setenv("FANOUT_ARTIFACT_PVC", "fanout-artifacts")
    monkeypatch.setenv("FANOUT_ARTIFACT_ROOT", "/mnt/fanout-artifacts")
    monkeypatch.setenv("FANOUT_OBJECT_STORE_SECRET", "fanout-object-store")
    monkeypatch.setenv("FANOUT_WORKER_SERVICE_ACCOUNT", "fanout-worker")
    spec = spec_of("shard")
    container = spec["containers"][0]
    assert {"name": "artifacts", "persistentVolumeClaim": {"claimName": "fanout-artifacts"}} in spec[
        "volumes"
    ]
    assert {"name": "artifacts", "mountPath": "/mnt/fanout-artifacts"} in container["volumeMounts"]
    assert {"secretRef": {"name": "fanout-object-store"}} in container["envFrom"]
    assert spec["serviceAccountName"] == "fanout-worker"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FANOUT_GPU_POOL_SELECTOR", "fanout.io/pool"),
        ("FANOUT_CPU_POOL_SELECTOR", "a=b=c"),
        ("FANOUT_GPU_TAINT", "nvidia.com/gpu=present:Sometimes"),
        ("FANOUT_GPU_RESOURCE", "gpu"),
        ("FANOUT_RENDER_POOL", "tpu"),
        ("FANOUT_GPU_AIRFLOW_POOL", "gpu pool"),
        ("FANOUT_GPU_AIRFLOW_POOL_SLOTS", "0"),
        ("FANOUT_LIGHT_TASK_EXECUTOR", "Local Executor"),
        ("FANOUT_WORKER_SERVICE_ACCOUNT", "Fanout_Worker"),
    ],
)
def test_invalid_configuration_names_the_variable(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=name):
        settings()


def test_task_sizes_from_the_chart_values_become_the_pods_resources(monkeypatch):
    values = {"taskSizes": {"trial": {"cpu": "2", "cpu_limit": "2", "memory": "6Gi"}}}
    (config_map, _) = render_chart(values, show_only=["templates/settings/settings-configmap.yaml"])
    monkeypatch.setenv("FANOUT_TASK_SIZES", config_map["data"]["FANOUT_TASK_SIZES"])
    resources = spec_of("trial")["containers"][0]["resources"]
    assert resources["requests"] == {"cpu": "2", "memory": "6Gi", "ephemeral-storage": "4Gi"}
    assert resources["limits"] == {
        "cpu": "2",
        "memory": "6Gi",
        "ephemeral-storage": "4Gi",
        "nvidia.com/gpu": "1",
    }
    assert spec_of("shard")["containers"][0]["resources"]["requests"]["memory"] == "1Gi"  # unchanged


@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        ({"huge": {"cpu": "1"}}, "huge"),
        ({"trial": {"memory": "lots"}}, "memory"),
        ({"trial": {"gpus": 2}}, "gpus"),
    ],
    ids=["unknown-size", "bad-quantity", "unknown-field"],
)
def test_the_chart_refuses_task_sizes_fanout_cannot_use(sizes, message):
    with pytest.raises(HelmError, match="values don't meet the specifications") as error:
        render_chart({"taskSizes": sizes})
    assert message in str(error.value)


def test_unknown_size_lists_the_sizes():
    with pytest.raises(ValueError, match="bookkeeping, shard, trial, frames, encode"):
        pools.placement("huge")


def test_importing_pools_loads_nothing_heavy():
    heavy = ("airflow", "pandas", "torch", "dask", "kubernetes")
    code = f"import sys, fanout.pools; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT / "plugins")},
    )
    assert out.stdout.strip() == "[]"


def test_dags_parse_with_a_light_task_executor(monkeypatch):
    """KubernetesExecutor,LocalExecutor: bookkeeping tasks name the LocalExecutor, the rest the default."""
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("FANOUT_LIGHT_TASK_EXECUTOR", "LocalExecutor")
    dagbag = DagBag(dag_folder=str(ROOT / "dags"))
    assert not dagbag.import_errors, dagbag.import_errors
    for dag_id, expected in EXPECTED_SIZES.items():
        for task in dagbag.dags[dag_id].tasks:
            light = expected.get(task.task_id) == "bookkeeping"
            assert task.executor == ("LocalExecutor" if light else None), f"{dag_id}.{task.task_id}"
