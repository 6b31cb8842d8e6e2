"""fanout.retries: a retry gets more memory after an OOM kill and keeps off a node that failed it."""

from __future__ import annotations

import json

import pytest
from kubernetes.client import ApiClient
from kubernetes.client import models as k8s

from fanout.failures import EVICTED, EXITED, KILLED, NODE_LOST, OOM_KILLED, TASK_PROCESS, TryFailure
from fanout.pods import RETRY_ANNOTATION, pod_override
from fanout.retries import after_oom, memory_ceiling, plan_retry


@pytest.fixture
def env(monkeypatch):
    """Settings of the process, as the scheduler's environment has them."""

    def set_env(**variables: str) -> None:
        for name, value in variables.items():
            monkeypatch.setenv(name, value)

    return set_env


def node(name, memory="16Gi", pool="cpu", gpus=0, ready=True, cordoned=False, cpu="4"):
    allocatable = {"cpu": cpu, "memory": memory, "ephemeral-storage": "100Gi", "pods": "110"}
    if gpus:
        allocatable["nvidia.com/gpu"] = str(gpus)
    return k8s.V1Node(
        metadata=k8s.V1ObjectMeta(name=name, labels={"fanout.io/pool": pool}),
        spec=k8s.V1NodeSpec(unschedulable=cordoned or None),
        status=k8s.V1NodeStatus(
            allocatable=allocatable,
            conditions=[k8s.V1NodeCondition(type="Ready", status="True" if ready else "Unknown")],
        ),
    )


CPU_NODES = [node("cpu-node-1"), node("cpu-node-2"), node("gpu-node-1", "32Gi", "gpu", gpus=1, cpu="8")]


def oom(try_number, limit, node_name="cpu-node-1"):
    return TryFailure(
        OOM_KILLED,
        "fanout-workers/p",
        node_name,
        process=TASK_PROCESS,
        signal="SIGKILL",
        exit_code=137,
        memory_limit=limit,
        try_number=try_number,
    )


def fault(try_number, cause, node_name, exit_code=None):
    return TryFailure(cause, "fanout-workers/p", node_name, exit_code=exit_code, try_number=try_number)


def as_dict(pod: k8s.V1Pod) -> dict:
    return ApiClient().sanitize_for_serialization(pod)


# --- OOM kill -> more memory ----------------------------------------------------------------------------


def test_an_oom_killed_try_is_retried_with_its_limit_times_the_factor():
    plan = plan_retry("bookkeeping", 2, [oom(1, "768Mi")], CPU_NODES)
    assert plan.memory == "1152Mi" and plan.oom.try_number == 1
    assert (
        plan.note() == "retry with 1152Mi of memory after OOMKilled at 768Mi in try 1 (x1.5, at most 2304Mi)"
    )
    resources = pod_override("bookkeeping", plan).spec.containers[0].resources
    assert (resources.requests["memory"], resources.limits["memory"]) == ("1152Mi", "1152Mi")
    assert resources.requests["cpu"] == "250m", "only memory changes"


def test_each_further_oom_kill_raises_it_again_up_to_the_sizes_max_memory():
    kills = [oom(1, "768Mi"), oom(2, "1152Mi")]
    assert plan_retry("bookkeeping", 3, kills, CPU_NODES).memory == "1728Mi"
    plan = plan_retry("bookkeeping", 4, [*kills, oom(3, "1728Mi")], CPU_NODES)
    assert plan.memory == "2304Mi", "1728Mi x 1.5 = 2592Mi, capped at 3 x 768Mi"
    assert plan.note().endswith("(x1.5, at most 2304Mi, capped by the bookkeeping size's max_memory)")


def test_the_raise_is_capped_by_the_largest_node_of_the_pool_that_can_hold_the_pod():
    nodes = [node("small", "1Gi"), node("medium", "1500Mi"), node("no-cpu", "64Gi", cpu="100m")]
    ceiling, by = memory_ceiling("bookkeeping", nodes)
    assert (ceiling, by) == (1500 << 20, "the allocatable memory of medium, the largest cpu node")
    assert plan_retry("bookkeeping", 3, [oom(2, "1152Mi")], nodes).memory == "1500Mi"


def test_a_deployment_sets_the_factor_and_the_max_memory(env):
    env(FANOUT_OOM_MEMORY_FACTOR="2", FANOUT_TASK_SIZES=json.dumps({"shard": {"max_memory": "10Gi"}}))
    assert plan_retry("shard", 2, [oom(1, "4Gi")], CPU_NODES).memory == "8Gi"
    assert plan_retry("shard", 3, [oom(2, "8Gi")], CPU_NODES).memory == "10Gi"


def test_other_failures_keep_the_size_and_a_raise_outlives_them():
    assert plan_retry("bookkeeping", 2, [fault(1, KILLED, "cpu-node-1")], CPU_NODES).memory is None
    # The retry after the OOM kill was lost with its node: the next keeps the larger memory.
    plan = plan_retry("bookkeeping", 3, [oom(1, "768Mi"), fault(2, NODE_LOST, "cpu-node-2")], CPU_NODES)
    assert plan.memory == "1152Mi" and plan.avoid == ("cpu-node-2",)


def test_a_factor_of_one_turns_raises_off(env):
    env(FANOUT_OOM_MEMORY_FACTOR="1")
    assert not plan_retry("bookkeeping", 2, [oom(1, "768Mi")], CPU_NODES).changes
    words, final = after_oom("bookkeeping", oom(1, "768Mi"), CPU_NODES, retries_left=True)
    assert words.startswith("A retry gets the same limit (FANOUT_OOM_MEMORY_FACTOR=1)") and not final


def test_an_oom_kill_at_the_most_the_task_may_get_ends_the_task_without_retries():
    words, final = after_oom("bookkeeping", oom(3, "2304Mi"), CPU_NODES, retries_left=True)
    assert final
    assert words.startswith("No retry: 2304Mi is already the most memory a 'bookkeeping' task may get")
    words, final = after_oom("bookkeeping", oom(1, "768Mi"), CPU_NODES, retries_left=True)
    assert (words, final) == ("A retry gets x1.5 the memory (at most 2304Mi).", False)
    words, final = after_oom("bookkeeping", oom(3, "1728Mi"), CPU_NODES, retries_left=False)
    assert words.startswith("That was its last try: give the task's size more memory") and not final


def test_the_raised_pod_still_fits_the_size_check():
    from fanout.pods import size_fit_problem

    plan = plan_retry("bookkeeping", 2, [oom(1, "768Mi")], [node("one", "1Gi")])
    assert plan.memory == "1Gi"
    assert size_fit_problem("bookkeeping", [node("one", "1Gi")], memory=plan.memory) is None


# --- node fault -> another node --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failure", "words"),
    [
        (fault(1, NODE_LOST, "cpu-node-1"), "node lost in try 1"),
        (fault(1, EVICTED, "cpu-node-1"), "evicted in try 1"),
        (
            fault(1, EXITED, "cpu-node-1", exit_code=74),
            "exit code 74, a node fault by FANOUT_NODE_FAULT_EXIT_CODES in try 1",
        ),
    ],
)
def test_a_try_failed_by_its_node_is_retried_off_that_node(env, failure, words):
    env(FANOUT_NODE_FAULT_EXIT_CODES="74")
    plan = plan_retry("bookkeeping", 2, [failure], CPU_NODES)
    assert plan.avoid == ("cpu-node-1",) and plan.avoid_required
    assert plan.note() == f"kept off node cpu-node-1 ({words})"
    pod = as_dict(pod_override("bookkeeping", plan))
    required = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert required == {
        "nodeSelectorTerms": [
            {"matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["cpu-node-1"]}]}
        ]
    }
    assert json.loads(pod["metadata"]["annotations"][RETRY_ANNOTATION]) == {
        "avoid_nodes": ["cpu-node-1"],
        "required": True,
        "try_number": 2,
    }


def test_exit_codes_not_listed_and_other_failures_keep_the_node():
    for failure in (
        fault(1, EXITED, "cpu-node-1", exit_code=74),
        fault(1, KILLED, "cpu-node-1", exit_code=137),
    ):
        plan = plan_retry("bookkeeping", 2, [failure], CPU_NODES)
        assert not plan.changes and pod_override("bookkeeping", plan).spec.affinity is None


def test_every_node_that_failed_a_try_is_avoided_one_requirement_per_node():
    failures = [fault(1, NODE_LOST, "cpu-node-1"), fault(2, EVICTED, "cpu-node-2")]
    nodes = [*CPU_NODES, node("cpu-node-3")]
    plan = plan_retry("bookkeeping", 3, failures, nodes)
    assert plan.avoid == ("cpu-node-1", "cpu-node-2") and plan.avoid_required
    fields = pod_override(
        "bookkeeping", plan
    ).spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution
    # The API accepts exactly one value per NotIn requirement on a node field.
    assert [(f.key, f.operator, f.values) for f in fields.node_selector_terms[0].match_fields] == [
        ("metadata.name", "NotIn", ["cpu-node-1"]),
        ("metadata.name", "NotIn", ["cpu-node-2"]),
    ]


@pytest.mark.parametrize(
    ("size", "nodes", "why"),
    [
        ("trial", CPU_NODES, "the GPU pool has one node"),
        ("bookkeeping", [node("cpu-node-1"), node("cpu-node-2", ready=False)], "the other node is NotReady"),
        (
            "bookkeeping",
            [node("cpu-node-1"), node("cpu-node-2", cordoned=True)],
            "the other node is cordoned",
        ),
        ("bookkeeping", [node("cpu-node-1"), node("cpu-node-2", "512Mi")], "the other node is too small"),
        ("bookkeeping", None, "the nodes cannot be read"),
    ],
)
def test_the_anti_affinity_is_only_preferred_where_no_other_node_can_take_the_pod(size, nodes, why):
    failed_on = "gpu-node-1" if size == "trial" else "cpu-node-1"
    plan = plan_retry(size, 2, [fault(1, EVICTED, failed_on)], nodes)
    assert plan.avoid == (failed_on,) and not plan.avoid_required, why
    assert plan.note().endswith(
        "where possible: no other Ready node of the pool can hold the pod, so it may still run there"
    )
    affinity = as_dict(pod_override(size, plan))["spec"]["affinity"]["nodeAffinity"]
    assert affinity["preferredDuringSchedulingIgnoredDuringExecution"] == [
        {
            "weight": 100,
            "preference": {
                "matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": [failed_on]}]
            },
        }
    ]
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in affinity


def test_the_avoided_node_joins_the_cpu_pools_exclusion_of_gpu_nodes(env):
    """With an empty CPU selector, CPU pods are kept off GPU nodes by a required term: both hold."""
    env(FANOUT_CPU_POOL_SELECTOR="")
    plan = plan_retry("bookkeeping", 2, [fault(1, NODE_LOST, "cpu-node-1")], CPU_NODES)
    assert plan.avoid_required
    pod = as_dict(pod_override("bookkeeping", plan))
    (term,) = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert term == {
        "matchExpressions": [{"key": "fanout.io/pool", "operator": "NotIn", "values": ["gpu"]}],
        "matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["cpu-node-1"]}],
    }


def test_the_first_try_and_tries_after_unknown_failures_get_the_size_as_it_is():
    assert not plan_retry("bookkeeping", 1, [], CPU_NODES).changes
    plan = plan_retry("bookkeeping", 2, [], CPU_NODES)
    assert not plan.changes and RETRY_ANNOTATION not in (
        pod_override("bookkeeping", plan).metadata.annotations or {}
    )
    # A record of a later try (a cleared and re-run task) does not count.
    assert not plan_retry("bookkeeping", 2, [oom(2, "768Mi")], CPU_NODES).changes
