"""Failure-aware retries through the real scheduler: a retry learns from the try that failed.

- An OOM-killed try is retried with more memory: the probe ``needs_more_memory`` needs 1.25x its
  size's memory on every try, so only a retry with 1.5x succeeds (the stock executor retries with
  the same limit: OOM-killed on every try, the run fails).
- A try failed by its node is retried on another node: the probe ``fail_on_its_node`` ends its
  first try with an exit code marked as a node fault (any cluster), or its node is lost under it
  (NotReady, then Ready again: a flapping node; the harness only). Its retry gets a required node
  anti-affinity (the stock executor's retry goes wherever the scheduler puts it: on the idle harness,
  the same node, first by name).
- A sweep with a trial that always fails still ends ``success``, naming that trial
  (``fanout_train`` with ``min_success_ratio`` 0.5 of two trials; a directory squats on its second
  trial's checkpoint path, so every try of that trial fails writing its first checkpoint).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pytest
from kubernetes.utils import parse_quantity

from fanout.failures import FAILURE_ANNOTATION, NODE_LOST, OOM_KILLED, TryFailure
from fanout.pods import RETRY_ANNOTATION
from fanout.settings import format_bytes
from fanout.storage import safe_key
from tests.cluster.dags.fanout_probe import MEMORY_DAG_ID, NODE_DAG_ID
from tests.cluster.stack import TEST_SETTINGS, ClusterPipeline
from tests.kubesim import PodRecord

RUN_TIMEOUT_S = 180
MI = 1 << 20


@dataclass
class ProbeRun:
    run: dict
    task_instance: dict
    pods: dict[int, PodRecord]  # by try number

    def limits(self, try_number: int) -> dict[str, str]:
        return self.pods[try_number].spec["containers"][0]["resources"]["limits"]


def run_probe(cp: ClusterPipeline, dag_id: str, conf: dict | None = None, during=None) -> ProbeRun:
    """Trigger the probe and wait for its run; ``during(run_id)`` acts while it runs."""
    client = cp.client
    client.unpause(dag_id)
    run_id = client.trigger(dag_id, conf)
    if during is not None:
        during(run_id)
    run = client.wait_run(dag_id, run_id, timeout=RUN_TIMEOUT_S)
    (ti,) = client.task_instances(dag_id, run_id)
    pods = {int(r.annotations["try_number"]): r for r in cp.pods_of(dag_id, run_id)}
    return ProbeRun(run, ti, pods)


def anti_affinity(record: PodRecord) -> dict:
    return (record.spec.get("affinity") or {}).get("nodeAffinity") or {}


def required_off(record: PodRecord) -> list[str]:
    """Nodes the pod may not go on, by name."""
    terms = (anti_affinity(record).get("requiredDuringSchedulingIgnoredDuringExecution") or {}).get(
        "nodeSelectorTerms"
    ) or []
    return [
        value
        for term in terms
        for field in term.get("matchFields") or []
        if field["key"] == "metadata.name" and field["operator"] == "NotIn"
        for value in field["values"]
    ]


def cpu_nodes(cp: ClusterPipeline) -> list[str]:
    return sorted(
        n["metadata"]["name"] for n in cp.pods.nodes() if cp.pool_of_node(n["metadata"]["name"]) == "cpu"
    )


# --- OOM kill -> more memory ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def memory_probe(cp: ClusterPipeline) -> ProbeRun:
    return run_probe(cp, MEMORY_DAG_ID)


def test_an_oom_killed_task_succeeds_on_its_retry_with_more_memory(cp, memory_probe):
    probe = memory_probe
    assert probe.run["state"] == "success"
    assert (probe.task_instance["state"], probe.task_instance["try_number"]) == ("success", 2)
    first, second = probe.pods[1], probe.pods[2]
    assert (first.phase, first.reason) == ("Failed", "OOMKilled")
    record = TryFailure.from_json(cp.pods.pod(first.name)["metadata"]["annotations"][FAILURE_ANNOTATION])
    assert (record.cause, record.try_number) == (OOM_KILLED, 1)

    # The pod spec shows it: request and limit raised by the factor, nothing else changed.
    limit = probe.limits(1)["memory"]
    raised = format_bytes(math.ceil(int(parse_quantity(limit)) * 1.5 / MI) * MI)
    assert (probe.limits(2)["memory"], second.spec["containers"][0]["resources"]["requests"]["memory"]) == (
        raised,
        raised,
    )
    assert {k: v for k, v in probe.limits(2).items() if k != "memory"} == {
        k: v for k, v in probe.limits(1).items() if k != "memory"
    }
    assert json.loads(second.annotations[RETRY_ANNOTATION]) == {
        "memory": raised,
        "oom_at": limit,
        "try_number": 2,
    }
    cp.pods.wait_for(lambda: second.finished_at, timeout=30, message=f"{second.name} never exited")
    assert (second.phase, second.reason) == ("Succeeded", "Completed")
    print(
        f"\ntry 1: OOMKilled at {limit}; try 2: {raised}, succeeded; kill -> retry pod created "
        f"{second.created_at - first.finished_at:.1f}s, -> retry running {second.started_at - first.finished_at:.1f}s"
    )


def test_the_note_and_the_audit_log_say_what_the_retry_got(cp, memory_probe):
    limit = memory_probe.limits(1)["memory"]
    raised = memory_probe.limits(2)["memory"]
    line = f"retry with {raised} of memory after OOMKilled at {limit} in try 1"
    note = memory_probe.task_instance["note"] or ""
    (try1,) = [text for text in note.splitlines() if text.startswith("Try 1: ")]
    assert try1.startswith(f"Try 1: OOMKilled: the task process exceeded the pod's memory limit {limit}")
    assert "A retry gets x1.5 the memory (at most " in try1
    (try2,) = [text for text in note.splitlines() if text.startswith("Try 2: ")]
    assert try2.startswith(f"Try 2: {line}")
    audit = cp.client.get(
        "/eventLogs", dag_id=MEMORY_DAG_ID, run_id=memory_probe.run["dag_run_id"], event="retry pod changed"
    )["event_logs"]
    assert [(e["try_number"], e["extra"].startswith(line)) for e in audit] == [(2, True)]


# --- node fault -> another node ------------------------------------------------------------------------


def test_a_try_failed_with_a_node_fault_exit_code_is_retried_on_another_node(cp):
    if len(cpu_nodes(cp)) < 2:
        pytest.skip("the CPU pool has one node: the retry's anti-affinity is only preferred")
    code = min(int(c) for c in TEST_SETTINGS["FANOUT_NODE_FAULT_EXIT_CODES"].split(","))
    probe = run_probe(cp, NODE_DAG_ID, {"fault": "exit"})

    assert probe.run["state"] == "success" and probe.task_instance["try_number"] == 2
    first, second = probe.pods[1], probe.pods[2]
    assert (first.phase, first.exit_code) == ("Failed", code)
    assert second.node != first.node, f"try 2 ran on {second.node} again"
    assert required_off(second) == [first.node], "a required anti-affinity against try 1's node"
    note = probe.task_instance["note"] or ""
    assert (
        f"Try 2: kept off node {first.node} (exit code {code}, a node fault by FANOUT_NODE_FAULT_EXIT_CODES "
        "in try 1)" in note
    )
    print(
        f"\ntry 1 on {first.node} exited {code}; try 2 on {second.node}, pod created "
        f"{second.created_at - first.finished_at:.1f}s after try 1's exit"
    )


def test_a_try_lost_with_its_node_is_retried_on_another_node(cp):
    """The node goes NotReady under the running try (its pods are marked Failed, NodeLost), then comes
    back Ready before the retry is scheduled: without the anti-affinity the retry could land there."""
    harness = cp.require_harness("a node going NotReady (its kubelet stopping)")
    lost, other = "cpu-node-1", "cpu-node-2"

    def lose_the_node(run_id: str) -> None:
        harness.faults.cordon(other)  # try 1 goes on `lost`
        try:

            def running_try():
                (ti,) = cp.client.task_instances(NODE_DAG_ID, run_id)
                pods = [r for r in cp.pods_of(NODE_DAG_ID, run_id) if r.started_at]
                return ti["state"] == "running" and pods

            (pod,) = cp.pods.wait_for(running_try, timeout=90, message="try 1 never ran")
            assert pod.node == lost
        finally:
            harness.faults.uncordon(other)
        harness.faults.node_not_ready(lost)
        harness.faults.node_ready(lost)  # a flapping node: Ready again before the retry

    probe = run_probe(cp, NODE_DAG_ID, {"fault": "node-lost"}, during=lose_the_node)

    assert probe.run["state"] == "success" and probe.task_instance["try_number"] == 2
    first, second = probe.pods[1], probe.pods[2]
    assert (first.node, first.phase, first.pod_reason) == (lost, "Failed", "NodeLost")
    record = TryFailure.from_json(cp.pods.pod(first.name)["metadata"]["annotations"][FAILURE_ANNOTATION])
    assert (record.cause, record.node) == (NODE_LOST, lost)
    assert second.node == other, f"try 2 ran on {second.node}"
    assert required_off(second) == [lost]
    assert f"Try 2: kept off node {lost} (node lost in try 1)" in (probe.task_instance["note"] or "")


# --- sweeps that tolerate failed trials ------------------------------------------------------------------


def test_a_sweep_with_a_trial_that_always_fails_succeeds_and_names_it(cp, pipeline):
    client = cp.client
    run_id = "manual__sweep-with-a-failing-trial"
    # Every try of trial 1 fails at its first checkpoint: a directory squats on the checkpoint's path.
    squatter = cp.artifact_root / "train" / safe_key(run_id) / "trials" / "trial-001" / "checkpoint.pt"
    squatter.mkdir(parents=True)
    (squatter / "not-a-checkpoint").write_text("a checkpoint cannot be written here\n")
    manifest = f"{pipeline.prefixes['fanout_preprocess']}/merged/manifest.json"
    conf = {"features_manifest": manifest, "n_trials": 2, "min_success_ratio": 0.5}
    client.patch("/dags/fanout_render", {"is_paused": True})  # no render run for this model
    try:
        client.trigger("fanout_train", conf, run_id=run_id)
        run = client.wait_run("fanout_train", run_id, timeout=300)
    finally:
        client.unpause("fanout_render")

    tis = {(ti["task_id"], ti["map_index"]): ti for ti in client.task_instances("fanout_train", run_id)}
    assert run["state"] == "success", {
        key: (ti["state"], ti["try_number"], ti["note"]) for key, ti in tis.items()
    }
    failed = tis["train_trial", 1]
    assert (failed["state"], failed["try_number"]) == ("failed", failed["max_tries"] + 1), "every retry spent"
    assert tis["train_trial", 0]["state"] == tis["select_best", -1]["state"] == "success"
    metrics = json.loads(
        (cp.artifact_root / "train" / safe_key(run_id) / "best" / "metrics.json").read_text()
    )
    (failed_trial,) = metrics["failed_trials"]
    assert failed_trial["trial"] == 1 and failed_trial["name"].startswith("trial 1 (lr ")
    assert metrics["n_planned"] == 2 and [t["trial"] for t in metrics["ranking"]] == [0]
    summary = client.get(
        f"/dags/fanout_train/dagRuns/{run_id}/taskInstances/select_best/xcomEntries/return_value"
    )["value"]
    summary = json.loads(summary) if isinstance(summary, str) else summary
    assert summary["failed_trials"] == [failed_trial["name"]]
    # With remote logging the pod uploads the log when its supervisor exits, after the run ended:
    # until then the api-server would ask the pod's log server. Read it once the pod has exited.
    (select_pod,) = cp.pods_of("fanout_train", run_id, "select_best")
    cp.pods.wait_for(lambda: select_pod.finished_at, timeout=30, message=f"{select_pod.name} never exited")
    log = client.task_log("fanout_train", run_id, "select_best", 1)
    assert f"1 of 2 trials failed and are left out of the ranking: {failed_trial['name']}" in log
