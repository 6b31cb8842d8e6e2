"""The real Airflow scheduler with the KubernetesExecutor runs a 2-task DAG through the harness.

Nothing in Airflow or the `kubernetes` client is patched: the executor reads the harness's kubeconfig,
creates a pod per task, watches and deletes them; each pod's process is the real ``execute_workload``,
reporting to the api-server's Execution API.
"""

from __future__ import annotations

import textwrap

import pytest

from fanout.localstack import AirflowStack
from tests.kubesim import Cluster
from tests.kubesim.testing import kubernetes_executor_env

DAG_ID = "kubesim_smoke"
DAG_FILE = textwrap.dedent(
    f"""
    import pendulum
    from airflow.sdk import dag, task


    @dag(dag_id="{DAG_ID}", schedule=None, start_date=pendulum.datetime(2026, 1, 1), catchup=False)
    def kubesim_smoke():
        @task
        def produce():
            return 21

        @task
        def consume(value):
            print("the answer is", value * 2)

        consume(produce())


    kubesim_smoke()
    """
)


@pytest.mark.e2e
@pytest.mark.cluster
@pytest.mark.timeout(180)
def test_kubernetes_executor_runs_each_task_in_a_pod_and_deletes_it(tmp_path):
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "kubesim_smoke.py").write_text(DAG_FILE)
    with Cluster(workdir=tmp_path / "cluster", namespace="airflow") as cluster:
        stack = AirflowStack(home=tmp_path / "airflow-home", dags_folder=dags, executor="KubernetesExecutor")
        stack.extra_env.update(
            kubernetes_executor_env(
                cluster, execution_api_url=f"{stack.base_url}/execution/", dags_folder=dags
            ),
            # The test session's unit-test mode must not leak into the components.
            AIRFLOW__CORE__UNIT_TEST_MODE="False",
        )
        client = stack.start()
        try:
            client.wait_for_dags([DAG_ID], timeout=60)
            client.unpause(DAG_ID)
            run_id = client.trigger(DAG_ID)
            run = client.wait_run(DAG_ID, run_id, timeout=90)
            states = {ti["task_id"]: ti["state"] for ti in client.task_instances(DAG_ID, run_id)}
            pods = {r.labels.get("task_id"): r for r in cluster.records if r.labels.get("dag_id") == DAG_ID}
            for record in pods.values():
                cluster.wait_for_deletion(record.name, "airflow", timeout=20)
        finally:
            stack.stop()
        assert (run["state"], states) == ("success", {"produce": "success", "consume": "success"})
        assert set(pods) == {"produce", "consume"}
        for record in pods.values():
            assert record.node in ("cpu-node-1", "cpu-node-2")
            assert (record.exit_code, record.reason) == (0, "Completed")
            assert record.labels["kubernetes_executor"] == "True" and record.labels["airflow-worker"]
            assert record.deleted_at is not None and record.deleted_at >= record.finished_at
        # Not after produce's pod finished: the task reports success through the Execution API before
        # its supervisor process exits (about 5 s later with Airflow 3.3.2), and the scheduler moves on.
        assert pods["consume"].created_at > pods["produce"].started_at
        assert "the answer is 42" in cluster.logs(pods["consume"].name, "airflow")
