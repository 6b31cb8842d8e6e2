"""Task sizes per deployment: FANOUT_TASK_SIZES changes requests and limits, validated, and whether a
size fits any node of its pool."""

from __future__ import annotations

import json

import pytest
from kubernetes.client import models as k8s

from fanout.pods import pod_override, size_fit_problem
from fanout.pools import SIZES, size_of
from fanout.settings import SettingsError, parse_quantity, settings


@pytest.fixture
def sizes(monkeypatch):
    def set_sizes(value: dict) -> None:
        monkeypatch.setenv("FANOUT_TASK_SIZES", json.dumps(value))

    return set_sizes


def test_a_deployment_sizes_tasks_to_its_nodes(sizes):
    sizes(
        {"trial": {"cpu": "1500m", "cpu_limit": "2", "memory": "6Gi"}, "encode": {"ephemeral_storage": "2Gi"}}
    )
    trial = size_of("trial")
    assert (trial.cpu, trial.cpu_limit, trial.memory, trial.shm) == ("1500m", "2", "6Gi", SIZES["trial"].shm)
    resources = pod_override("trial").spec.containers[0].resources
    assert resources.requests == {"cpu": "1500m", "memory": "6Gi", "ephemeral-storage": "4Gi"}
    assert resources.limits == {
        "cpu": "2",
        "memory": "6Gi",
        "ephemeral-storage": "4Gi",
        "nvidia.com/gpu": "1",
    }
    assert size_of("encode").ephemeral_storage == "2Gi"
    assert size_of("shard") == SIZES["shard"]


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        ('{"trial": ', "not valid JSON"),
        ({"huge": {"cpu": "1"}}, "unknown task size 'huge'; sizes: bookkeeping, shard"),
        ({"trial": {"memory": "lots"}}, "trial.memory: 'lots' is not a quantity > 0 such as 768Mi or 4Gi"),
        ({"trial": {"cpu": "0"}}, "trial.cpu: '0' is not a quantity > 0 such as 500m or 2"),
        ({"trial": {"cpu": "2Gi"}}, "trial.cpu: '2Gi' is not a quantity"),
        ({"trial": {"gpus": 2}}, "trial.gpus: Extra inputs are not permitted"),
        ({"trial": {"cpu": "6"}}, "trial: the CPU request 6 is above the CPU limit 4"),
    ],
)
def test_a_bad_size_override_names_the_variable_and_what_is_wrong(value, detail):
    raw = value if isinstance(value, str) else json.dumps(value)
    with pytest.raises(SettingsError) as err:
        settings({"FANOUT_TASK_SIZES": raw})
    message = str(err.value)
    assert message.startswith(f"FANOUT_TASK_SIZES={raw!r} is invalid: expected a JSON object of task size")
    assert detail in message


def test_quantities_are_read_as_kubernetes_reads_them():
    assert parse_quantity("500m") == parse_quantity("0.5")
    assert parse_quantity("1Ki") == 1024 and parse_quantity("1k") == 1000
    assert parse_quantity("768Mi") == 768 * 1024**2


def node(name, labels, **allocatable):
    return k8s.V1Node(
        metadata=k8s.V1ObjectMeta(name=name, labels=labels),
        status=k8s.V1NodeStatus(allocatable={"ephemeral-storage": "100Gi", **allocatable}),
    )


CPU_SMALL = node("cpu-small", {"fanout.io/pool": "cpu"}, cpu="1", memory="1Gi")
CPU_BIG = node("cpu-big", {"fanout.io/pool": "cpu"}, cpu="3950m", memory="16283836Ki")
GPU = node("gpu-node-1", {"fanout.io/pool": "gpu"}, cpu="8", memory="32Gi", **{"nvidia.com/gpu": "1"})


def test_a_size_fits_when_one_node_of_its_pool_could_hold_its_pod():
    assert size_fit_problem("encode", [CPU_SMALL, CPU_BIG, GPU]) is None  # 1 CPU, 2Gi
    assert size_fit_problem("trial", [CPU_SMALL, GPU]) is None
    assert size_fit_problem("trial", [CPU_SMALL]) is None, "an empty pool is left to the autoscaler"


def test_a_size_that_fits_no_node_of_its_pool_says_what_it_asks_and_what_the_nodes_offer():
    problem = size_fit_problem("encode", [CPU_SMALL, GPU])
    assert problem.startswith(
        "task size 'encode' asks for cpu 1, memory 2Gi, ephemeral-storage 8Gi, more than any node of the "
        "cpu pool (fanout.io/pool=cpu) has: cpu-small offers cpu 1, memory 1Gi, ephemeral-storage 100Gi."
    )
    assert "gpu-node-1" not in problem and "FANOUT_TASK_SIZES" in problem
    gpu_less = node("gpu-node-2", {"fanout.io/pool": "gpu"}, cpu="8", memory="64Gi")
    assert "nvidia.com/gpu 0" in size_fit_problem("trial", [gpu_less])


def test_a_cpu_pool_without_labels_is_every_node_but_the_gpu_pool(monkeypatch):
    monkeypatch.setenv("FANOUT_CPU_POOL_SELECTOR", "")
    unlabelled = node("plain", {}, cpu="1", memory="1Gi")
    problem = size_fit_problem("encode", [unlabelled, GPU])  # the GPU node would fit it
    assert "plain offers cpu 1" in problem and "nodes without the GPU pool's labels" in problem
