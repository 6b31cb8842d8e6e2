"""The scheduler restarts (SIGTERM, as in a rolling update) in the middle of a render run.

On the harness, first while the run's pod is bound but its container not started yet (held), so
the new scheduler must adopt a pod of the old one; then (on any cluster) while a render chunk runs.
"""

from __future__ import annotations

from tests.cluster.test_pod_faults import wait_for_running_chunk

DAG_ID = "fanout_render"


def scheduler_jobs(client) -> dict[int, str]:
    jobs = client.get("/jobs", job_type="SchedulerJob", limit=100)["jobs"]
    return {job["id"]: job["state"] for job in jobs}


def wait_for_earlier_runs(client, timeout: float = 600) -> None:
    """Let every unfinished run of the DAG end: it takes one run at a time (``max_active_runs``), so
    an earlier test's run still going would keep this test's run queued, with no pod to adopt."""
    for run in client.dag_runs(DAG_ID):
        if run["state"] in ("queued", "running"):
            client.wait_run(DAG_ID, run["dag_run_id"], timeout=timeout)


def test_a_restarted_scheduler_adopts_or_cleans_up_its_pods_and_the_run_succeeds(cp):
    client = cp.client
    wait_for_earlier_runs(client)
    if cp.harness is None:
        run_id = client.trigger(DAG_ID)
    else:
        with cp.harness.containers_held():  # a pod bound, its container not started
            run_id = client.trigger(DAG_ID)
            planner = cp.pods.wait_for(
                lambda: [r for r in cp.pods_of(DAG_ID, run_id) if r.node], timeout=120
            )[0]
            old_scheduler = planner.labels["airflow-worker"]

            stop_seconds = cp.restart_scheduler()
            # A clean exit within the stop grace (fanout.executors stops the pod watcher at once)
            # marks the old job done, so the new scheduler adopts its pods right away. A scheduler
            # SIGKILLed after the grace leaves its job "running": its successor treats it as alive
            # and adopts none of its pods for minutes. How long the stop took is not the property.
            old_job = scheduler_jobs(client)[int(old_scheduler)]
            assert old_job == "success", (
                f"the old scheduler's job is {old_job!r} after a {stop_seconds:.0f}s stop: "
                "it did not exit cleanly within the grace"
            )
            cp.pods.wait_for(
                lambda: planner.labels["airflow-worker"] != old_scheduler,
                timeout=60,
                message=f"the new scheduler did not adopt {planner.name}",
            )

    wait_for_running_chunk(cp, run_id, skip=set())
    alive = [r for r in cp.pods_of(DAG_ID, run_id) if r.deleted_at is None]
    cp.restart_scheduler()

    run = client.wait_run(DAG_ID, run_id, timeout=300)
    assert run["state"] == "success"
    tis = client.task_instances(DAG_ID, run_id)
    assert {(ti["state"], ti["try_number"]) for ti in tis} == {("success", 1)}, "the restarts cost no retry"
    # Nothing of the run is left behind: every pod, adopted or not, was deleted once done.
    assert alive
    for record in cp.pods_of(DAG_ID, run_id):
        cp.pods.wait_for(
            lambda record=record: record.deleted_at, timeout=30, message=f"{record.name} was left behind"
        )
    if cp.harness is not None:
        assert not cp.harness.pod_processes()
