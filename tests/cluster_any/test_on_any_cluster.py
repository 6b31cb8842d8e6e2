"""The task-process kill tests and the any-cluster retry tests of tests/cluster, on a cluster
reached only through its kubeconfig."""

from __future__ import annotations

from tests.cluster.dags.fanout_probe import KILLS_DAG_ID
from tests.cluster.test_failure_aware_retries import (  # collected here again, with this package's cp
    memory_probe,
    test_a_try_failed_with_a_node_fault_exit_code_is_retried_on_another_node,
    test_an_oom_killed_task_succeeds_on_its_retry_with_more_memory,
    test_the_note_and_the_audit_log_say_what_the_retry_got,
)
from tests.cluster.test_task_process_kills import (  # collected here again, with this package's cp
    kills,
    test_a_task_process_killed_by_the_oom_killer_or_sigkill_is_retried,
    test_the_note_and_the_audit_log_say_what_happened,
    test_the_pods_of_the_killed_tries_are_kept_and_say_why,
    test_the_try_ends_within_seconds_of_the_kill,
)
from tests.cluster_any.conftest import NAMESPACE, WORKER_IMAGE

__all__ = [
    "kills",
    "memory_probe",
    "test_a_task_process_killed_by_the_oom_killer_or_sigkill_is_retried",
    "test_a_try_failed_with_a_node_fault_exit_code_is_retried_on_another_node",
    "test_an_oom_killed_task_succeeds_on_its_retry_with_more_memory",
    "test_the_note_and_the_audit_log_say_what_happened",
    "test_the_note_and_the_audit_log_say_what_the_retry_got",
    "test_the_pods_of_the_killed_tries_are_kept_and_say_why",
    "test_the_try_ends_within_seconds_of_the_kill",
]


def test_pods_run_the_given_worker_image_in_the_given_namespace(cp, kills):
    records = [r for r in cp.pods.records if r.annotations.get("dag_id") == KILLS_DAG_ID]
    assert records and {(r.namespace, r.image) for r in records} == {(NAMESPACE, WORKER_IMAGE)}
    settings = cp.v1.read_namespaced_config_map("fanout-settings", NAMESPACE).data
    assert (
        settings["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == f"http://127.0.0.1:{cp.stack.port}/execution/"
    )
