"""The scheduler binds a pod only where kube-scheduler would, and leaves it Pending as kube-scheduler does."""

import pytest

from tests.kubesim import GPU_TAINT, Cluster, NodeSpec
from tests.kubesim.objects import ApiError, default_nodes, node_object, validate_and_default_pod
from tests.kubesim.scheduler import choose_node, pod_requests, unfit_reasons
from tests.kubesim.testing import GPU_TOLERATION, SLEEP_FOREVER, python_pod

NODES = [node_object(spec) for spec in default_nodes()]


def pod(name="p", *, resources=None, node=None, phase="Pending", **spec):
    manifest = python_pod(name, **spec)
    if resources:
        manifest["spec"]["containers"][0]["resources"] = resources
    obj = validate_and_default_pod(manifest, "default")
    if node:
        obj["spec"]["nodeName"] = node
        obj["status"]["phase"] = phase
    return obj


def node_named(name):
    return next(n for n in NODES if n["metadata"]["name"] == name)


def test_requests_parse_quantities_and_limits_stand_in_for_requests():
    requests = pod_requests(
        pod(resources={"requests": {"cpu": "500m", "memory": "4Gi"}, "limits": {"nvidia.com/gpu": "1"}})
    )
    assert requests == {"cpu": pytest.approx(0.5), "memory": 4 * 1024**3, "nvidia.com/gpu": 1}


def test_plain_pod_goes_to_a_cpu_node_because_the_gpu_node_is_tainted():
    assert unfit_reasons(pod(), node_named("gpu-node-1"), []) == [
        "node(s) had untolerated taint {nvidia.com/gpu: present}"
    ]
    assert choose_node(pod(), NODES, [])[0] in ("cpu-node-1", "cpu-node-2")


def test_node_selector_and_toleration_put_a_gpu_pod_on_the_gpu_node():
    gpu_pod = pod(
        nodeSelector={"fanout.io/pool": "gpu"},
        tolerations=[GPU_TOLERATION],
        resources={"limits": {"nvidia.com/gpu": "1"}},
    )
    assert choose_node(gpu_pod, NODES, []) == ("gpu-node-1", "")


@pytest.mark.parametrize(
    ("toleration", "tolerated"),
    [
        ({"key": "nvidia.com/gpu", "operator": "Exists"}, True),  # any effect
        ({"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"}, True),
        ({"key": "nvidia.com/gpu", "value": "present"}, True),  # Equal is the default operator
        ({"key": "nvidia.com/gpu", "operator": "Equal", "value": "absent"}, False),
        ({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoExecute"}, False),
        ({"operator": "Exists"}, True),  # an empty key with Exists tolerates everything
    ],
)
def test_tolerations(toleration, tolerated):
    assert (unfit_reasons(pod(tolerations=[toleration]), node_named("gpu-node-1"), []) == []) is tolerated


@pytest.mark.parametrize(
    ("expressions", "nodes"),
    [
        ([{"key": "fanout.io/pool", "operator": "In", "values": ["cpu"]}], {"cpu-node-1", "cpu-node-2"}),
        ([{"key": "fanout.io/pool", "operator": "NotIn", "values": ["cpu"]}], {"gpu-node-1"}),
        ([{"key": "fanout.io/pool", "operator": "Exists"}], {"cpu-node-1", "cpu-node-2", "gpu-node-1"}),
        ([{"key": "accelerator", "operator": "DoesNotExist"}], {"cpu-node-1", "cpu-node-2", "gpu-node-1"}),
        ([{"key": "kubernetes.io/hostname", "operator": "In", "values": ["cpu-node-2"]}], {"cpu-node-2"}),
        ([{"key": "fanout.io/pool", "operator": "In", "values": ["tpu"]}], set()),
    ],
)
def test_required_node_affinity(expressions, nodes):
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": expressions}]
            }
        }
    }
    candidate = pod(affinity=affinity, tolerations=[GPU_TOLERATION])
    assert {n["metadata"]["name"] for n in NODES if not unfit_reasons(candidate, n, [])} == nodes


def not_on(*names: str, preferred: bool = False) -> dict:
    """Node affinity keeping a pod off nodes by name, as fanout's retries write it."""
    fields = [{"key": "metadata.name", "operator": "NotIn", "values": [name]} for name in names]
    if preferred:
        return {
            "nodeAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 100, "preference": {"matchFields": fields}}
                ]
            }
        }
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchFields": fields}]}
        }
    }


def test_required_node_affinity_on_node_names():
    assert choose_node(pod(affinity=not_on("cpu-node-1")), NODES, [])[0] == "cpu-node-2"
    node, message = choose_node(pod(affinity=not_on("cpu-node-1", "cpu-node-2")), NODES, [])
    assert node is None and "2 node(s) didn't match Pod's node affinity/selector" in message


def test_preferred_node_affinity_outweighs_allocation_but_never_filters():
    # cpu-node-2 is the busier node, yet the preference wins; with no other node the pod still binds.
    running = pod("running", resources={"requests": {"cpu": "3"}}, node="cpu-node-2", phase="Running")
    assert choose_node(pod(), NODES, [running])[0] == "cpu-node-1"
    assert (
        choose_node(pod(affinity=not_on("cpu-node-1", preferred=True)), NODES, [running])[0] == "cpu-node-2"
    )
    only = [node_named("cpu-node-1")]
    assert choose_node(pod(affinity=not_on("cpu-node-1", preferred=True)), only, [])[0] == "cpu-node-1"


@pytest.mark.parametrize(
    ("field", "cause"),
    [
        (
            {"key": "metadata.name", "operator": "NotIn", "values": ["a", "b"]},
            "matchFields[0].values: Required value: must be only one value when `operator` is 'In' or "
            "'NotIn' for node field selector",
        ),
        (
            {"key": "metadata.labels", "operator": "In", "values": ["a"]},
            'matchFields[0].key: Invalid value: "metadata.labels": not a valid field selector key',
        ),
        (
            {"key": "metadata.name", "operator": "Exists"},
            'matchFields[0].operator: Invalid value: "Exists": not a valid selector operator',
        ),
    ],
)
def test_node_field_requirements_are_validated_as_the_api_server_does(field, cause):
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchFields": [field]}]
            }
        }
    }
    with pytest.raises(ApiError) as error:
        pod(affinity=affinity)
    assert error.value.code == 422 and cause in error.value.message


def test_resources_count_only_pods_still_holding_them():
    big = {"requests": {"cpu": "3", "memory": "4Gi"}}
    running = pod("running", resources=big, node="cpu-node-1", phase="Running")
    finished = pod("finished", resources=big, node="cpu-node-2", phase="Succeeded")
    assert unfit_reasons(pod(resources=big), node_named("cpu-node-1"), [running]) == ["Insufficient cpu"]
    assert unfit_reasons(pod(resources=big), node_named("cpu-node-2"), [running, finished]) == []


def test_least_allocated_node_wins():
    running = pod("running", resources={"requests": {"cpu": "1"}}, node="cpu-node-1", phase="Running")
    assert choose_node(pod(), NODES, [running])[0] == "cpu-node-2"


def test_failed_scheduling_message_counts_reasons_per_node():
    greedy = pod(
        resources={"requests": {"cpu": "6", "memory": "1Gi"}}, nodeSelector={"fanout.io/pool": "cpu"}
    )
    node, message = choose_node(greedy, NODES, [])
    assert node is None
    assert message.startswith(
        "0/3 nodes are available: 2 Insufficient cpu, 1 node(s) didn't match Pod's node affinity/selector."
    )


def test_unschedulable_pod_stays_pending_with_condition_and_event(cluster, v1):
    manifest = python_pod(
        "needs-two-gpus",
        tolerations=[GPU_TOLERATION],
        container={"resources": {"limits": {"nvidia.com/gpu": "2"}}},
    )
    v1.create_namespaced_pod("default", manifest)
    event = cluster.wait_for(lambda: cluster.events(reason="FailedScheduling", involved="needs-two-gpus"))[0]
    assert event["type"] == "Warning"
    assert event["source"]["component"] == "default-scheduler"
    assert event["message"].startswith("0/3 nodes are available: 3 Insufficient nvidia.com/gpu.")
    status = v1.read_namespaced_pod("needs-two-gpus", "default").status
    assert status.phase == "Pending"
    condition = next(c for c in status.conditions if c.type == "PodScheduled")
    assert (condition.status, condition.reason) == ("False", "Unschedulable")
    assert condition.message == event["message"]


def test_capacity_is_freed_when_a_pod_finishes(tmp_path):

    nodes = [NodeSpec("gpu-node-1", pool="gpu", gpus=1)]
    with Cluster(nodes, workdir=tmp_path) as cluster:
        v1 = cluster.core_v1()
        gpu = {
            "tolerations": [GPU_TOLERATION],
            "container": {"resources": {"limits": {"nvidia.com/gpu": "1"}}},
        }
        v1.create_namespaced_pod("default", python_pod("first", "import time; time.sleep(0.5)", **gpu))
        cluster.wait_for_pod("first", phase="Running")
        v1.create_namespaced_pod("default", python_pod("second", **gpu))
        cluster.wait_for(lambda: cluster.events(reason="FailedScheduling", involved="second"))
        cluster.wait_for_pod("second", phase="Succeeded", timeout=10)

        first, second = cluster.record("first"), cluster.record("second")
        assert first.node == second.node == "gpu-node-1"
        assert second.scheduled_at >= first.finished_at  # bound only once the GPU was free
        gpus_in_use = [s.requested.get("nvidia.com/gpu", 0) for s in cluster.capacity_history("gpu-node-1")]
        assert gpus_in_use == [1, 0, 1, 0]


def test_cordoned_node_takes_no_new_pods(cluster, v1):
    cluster.faults.cordon("cpu-node-1")
    cluster.faults.cordon("cpu-node-2")
    v1.create_namespaced_pod("default", python_pod("waits", SLEEP_FOREVER))
    event = cluster.wait_for(lambda: cluster.events(reason="FailedScheduling", involved="waits"))[0]
    assert "2 node(s) were unschedulable" in event["message"]
    cluster.faults.uncordon("cpu-node-2")
    cluster.wait_for_pod("waits", phase="Running")
    assert cluster.record("waits").node == "cpu-node-2"
    assert GPU_TAINT in cluster.node("gpu-node-1")["spec"]["taints"]
