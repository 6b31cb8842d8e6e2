"""helm/fanout's Dask cluster: single-threaded worker processes sized from the pod's limits,
fixed ports that the network policies name, and a worker count that scales."""

from __future__ import annotations

import jmespath
import pytest

from tests.packaging.helmkit import HelmError, render_chart

WORKER = "templates/dask/dask-worker-deployment.yaml"


def worker_args(values: dict | None = None) -> dict[str, str]:
    """The dask worker's flags as {flag: value}, and its scheduler address as "address"."""
    (worker,) = render_chart(values, [WORKER])
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["dask", "worker"]
    address, *flags = container["args"]
    parsed = {"address": address}
    for flag in flags:
        name, _, value = flag.partition("=")
        parsed[name] = value
    return parsed


def workers(resources: dict, **more) -> dict:
    return {"dask": {"workers": {"resources": {"requests": resources, "limits": resources}, **more}}}


@pytest.mark.parametrize(
    ("cpu", "processes"),
    [("2", "2"), ("4", "4"), ("1500m", "1"), ("500m", "1")],
)
def test_one_single_threaded_worker_process_per_whole_cpu_of_the_limit(cpu, processes):
    args = worker_args(workers({"cpu": cpu, "memory": "8Gi"}))
    assert (args["--nworkers"], args["--nthreads"]) == (processes, "1")


@pytest.mark.parametrize(
    ("memory", "reserve", "processes", "per_process"),
    [
        ("8Gi", "512Mi", 2, "3840MiB"),  # the default: (8192 - 512) / 2
        ("16Gi", "1Gi", 4, "3840MiB"),
        ("4G", "512Mi", 1, "3302MiB"),  # decimal units: 4e9 bytes = 3814.7 MiB
    ],
)
def test_each_process_gets_its_share_of_the_pod_memory_limit_less_the_reserve(
    memory, reserve, processes, per_process
):
    values = workers({"cpu": str(processes), "memory": memory}, memoryReserve=reserve)
    assert worker_args(values)["--memory-limit"] == per_process


def test_fewer_processes_than_cpus_may_be_asked_for():
    args = worker_args(workers({"cpu": "4", "memory": "8Gi"}, processes=2))
    assert (args["--nworkers"], args["--memory-limit"]) == ("2", "3840MiB")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (workers({"cpu": "2", "memory": "8Gi"}, processes=3), "processes=3 exceeds the 2 whole CPUs"),
        (workers({"cpu": "4", "memory": "1Gi"}), "leaves 128MiB per worker process"),
        (workers({"cpu": "2", "memory": "8Gi"}, memoryReserve="9Gi"), "per worker process"),
        ({"dask": {"workers": {"resources": {"limits": {"memory": None}}}}}, "limits.memory is required"),
    ],
    ids=["processes-beyond-cpus", "too-little-memory", "reserve-above-limit", "no-memory-limit"],
)
def test_worker_sizes_that_cannot_work_are_rejected_with_the_reason(values, message):
    with pytest.raises(HelmError, match=message):
        render_chart(values, [WORKER])


def test_worker_and_nanny_ports_are_one_fixed_range_per_process():
    args = worker_args(workers({"cpu": "3", "memory": "6Gi"}, workerPort=7000, nannyPort=7100))
    assert (args["--worker-port"], args["--nanny-port"]) == ("7000:7002", "7100:7102")
    (worker,) = render_chart(workers({"cpu": "3", "memory": "6Gi"}), [WORKER])
    ports = jmespath.search("spec.template.spec.containers[0].ports[].containerPort", worker)
    assert sorted(ports) == [9000, 9001, 9002, 9100, 9101, 9102]


def test_the_scheduler_listens_where_the_service_and_the_workers_point():
    values = {"dask": {"scheduler": {"port": 8800, "dashboardPort": 8801}}}
    scheduler, service = render_chart(
        values,
        ["templates/dask/dask-scheduler-deployment.yaml", "templates/dask/dask-scheduler-service.yaml"],
    )
    (container,) = scheduler["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["dask", "scheduler"]
    assert container["args"] == ["--port=8800", "--dashboard-address=:8801"]
    assert jmespath.search("spec.ports[?name=='dask'].port", service) == [8800]
    assert worker_args(values)["address"].endswith(
        f"{service['metadata']['name']}.fanout-workers.svc.cluster.local:8800"
    )


def dask_ports() -> list[dict]:
    """The default cluster's ports: scheduler, two worker processes, their two nannies."""
    return [
        {"protocol": "TCP", "port": 8786},
        {"protocol": "TCP", "port": 9000, "endPort": 9001},
        {"protocol": "TCP", "port": 9100, "endPort": 9101},
    ]


def test_dask_pods_talk_among_themselves_and_with_tasks_only_on_dask_ports():
    (policy,) = render_chart(show_only=["templates/networkpolicies/dask-networkpolicy.yaml"])
    assert jmespath.search("spec.ingress[].ports[]", policy) == dask_ports()
    assert jmespath.search("spec.egress[0].ports", policy) == dask_ports()
    components = jmespath.search("spec.ingress[0].from[0].podSelector.matchExpressions[1].values", policy)
    assert components == ["worker", "dask-scheduler", "dask-worker"]
    assert 8787 not in jmespath.search("spec.ingress[].ports[].port", policy)  # dashboard: port-forward


def test_task_pods_reach_dask_on_its_ports_only_and_nothing_when_dask_is_off():
    template = "templates/networkpolicies/task-pods-networkpolicy.yaml"
    (policy,) = render_chart(show_only=[template])

    def same_namespace_rules(policy: dict) -> list[dict]:
        return [rule for rule in policy["spec"]["egress"] if list(rule["to"][0]) == ["podSelector"]]

    (dask_rule,) = same_namespace_rules(policy)
    assert dask_rule["ports"] == dask_ports()
    (no_dask,) = render_chart({"dask": {"enabled": False}}, [template])
    assert same_namespace_rules(no_dask) == []


def test_a_drain_takes_worker_pods_one_at_a_time():
    (pdb,) = render_chart(show_only=["templates/dask/dask-worker-poddisruptionbudget.yaml"])
    (worker,) = render_chart(show_only=[WORKER])
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"] == worker["spec"]["selector"]


def test_worker_replicas_and_resources_come_from_values():
    values = workers({"cpu": "4", "memory": "16Gi"}, replicas=5)
    (worker,) = render_chart(values, [WORKER])
    assert worker["spec"]["replicas"] == 5
    assert jmespath.search("spec.template.spec.containers[0].resources.limits", worker) == {
        "cpu": "4",
        "memory": "16Gi",
    }
