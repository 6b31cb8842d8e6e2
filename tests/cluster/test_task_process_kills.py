"""A task process ended inside its pod -- by the kernel's OOM killer, or by SIGKILL -- ends its try
within seconds, is retried, and the note and audit log say what happened; its pod is kept.

On a real node the OOM killer takes the *task process* (the supervisor's child, the container's
largest process), not the container, and the supervisor lives on; so does ``kill -9`` of the task
process. Both are caused here from inside the probe DAG's tasks (tests/cluster/dags), so this runs on
any cluster: ``hog_memory`` allocates twice its pod's memory limit, ``kill_itself`` SIGKILLs its own
process. Both succeed on their second try.

Without fanout.taskpod as the pod's command, the supervisor exits 0, the pod Succeeds and is
deleted, and each try stays ``running`` until the scheduler's heartbeat timeout (300 s): the run
below would not end within ``RUN_TIMEOUT_S``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

import pytest

from fanout.failures import FAILURE_ANNOTATION, FAILURE_LABEL, KILLED, OOM_KILLED, TryFailure
from tests.cluster.dags.fanout_probe import KILLS_DAG_ID
from tests.cluster.stack import ClusterPipeline

# Well under [scheduler] task_instance_heartbeat_timeout (300 s), which ends unreported tries.
RUN_TIMEOUT_S = 150


@dataclass
class Killed:
    task_id: str
    run: dict
    task_instance: dict
    first_try: dict  # the task instance's history entry of try 1
    pod: dict  # try 1's pod, as the API serves it now (kept)


def ts(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


@pytest.fixture(scope="module")
def kills(cp: ClusterPipeline) -> dict[str, Killed]:
    client = cp.client
    client.unpause(KILLS_DAG_ID)
    run_id = client.trigger(KILLS_DAG_ID)
    run = client.wait_run(KILLS_DAG_ID, run_id, timeout=RUN_TIMEOUT_S)
    killed = {}
    for ti in client.task_instances(KILLS_DAG_ID, run_id):
        task_id = ti["task_id"]
        tries = client.get(f"/dags/{KILLS_DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/tries")
        (first,) = [t for t in tries["task_instances"] if t["try_number"] == 1]
        (record,) = [
            r for r in cp.pods_of(KILLS_DAG_ID, run_id, task_id) if r.annotations["try_number"] == "1"
        ]
        killed[task_id] = Killed(task_id, run, ti, first, cp.pods.pod(record.name))
    return killed


def test_a_task_process_killed_by_the_oom_killer_or_sigkill_is_retried(kills):
    assert set(kills) == {"hog_memory", "kill_itself"}
    for killed in kills.values():
        assert killed.run["state"] == "success"
        assert (killed.task_instance["state"], killed.task_instance["try_number"]) == ("success", 2)
        # Try history keeps a retried try as "failed" (TaskInstanceHistory.record_ti).
        assert killed.first_try["state"] == "failed" and killed.first_try["end_date"], killed.task_id


def test_the_try_ends_within_seconds_of_the_kill(cp, kills):
    """Measured from the moment the task process died to its try's end (up_for_retry)."""
    kill = kills["kill_itself"]
    said = re.search(
        r"SIGKILL to the task process \d+ at ([\d.]+)", cp.pods.logs(kill.pod["metadata"]["name"])
    )
    sigkill_to_retry = ts(kill.first_try["end_date"]) - float(said.group(1))
    hog = kills["hog_memory"]
    container_end = hog.pod["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"]
    oom_exit_to_retry = ts(hog.first_try["end_date"]) - ts(container_end.replace("Z", "+00:00"))
    print(
        f"\nSIGKILL -> up_for_retry {sigkill_to_retry:.1f}s; OOM-killed pod's exit -> up_for_retry {oom_exit_to_retry:.1f}s"
    )
    assert 0 < sigkill_to_retry < 30
    assert -1 < oom_exit_to_retry < 30  # finishedAt has whole seconds


def test_the_note_and_the_audit_log_say_what_happened(cp, kills):
    limit = kills["hog_memory"].pod["spec"]["containers"][0]["resources"]["limits"]["memory"]
    expected = {
        "hog_memory": f"OOMKilled: the task process exceeded the pod's memory limit {limit}, so the kernel killed it",
        "kill_itself": "The task process was killed by SIGKILL, not for memory",
    }
    run_id = next(iter(kills.values())).run["dag_run_id"]
    audit = cp.client.get("/eventLogs", dag_id=KILLS_DAG_ID, run_id=run_id, limit=100)["event_logs"]
    for task_id, words in expected.items():
        note = kills[task_id].task_instance["note"] or ""
        assert note.startswith(f"Try 1: {words}"), note
        ours = [e for e in audit if e["task_id"] == task_id and e["event"] == "worker pod failed"]
        assert [(e["try_number"], e["extra"].startswith(words)) for e in ours] == [(1, True)]
        # The scheduler's own record of failing the try carries the same words.
        mismatch = [e for e in audit if e["task_id"] == task_id and e["event"] == "state mismatch"]
        assert mismatch and words in mismatch[0]["extra"]


def test_the_pods_of_the_killed_tries_are_kept_and_say_why(cp, kills):
    for task_id, cause, reason in (("hog_memory", OOM_KILLED, "OOMKilled"), ("kill_itself", KILLED, "Error")):
        pod = kills[task_id].pod
        assert pod is not None and pod["status"]["phase"] == "Failed", task_id
        terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
        assert (terminated["exitCode"], terminated["reason"]) == (137, reason)
        assert pod["metadata"]["labels"][FAILURE_LABEL] == cause
        record = TryFailure.from_json(pod["metadata"]["annotations"][FAILURE_ANNOTATION])
        assert (record.cause, record.process, record.node) == (cause, "task process", pod["spec"]["nodeName"])
        assert record.memory_limit == pod["spec"]["containers"][0]["resources"]["limits"]["memory"]
