"""No-op fan-out for the orchestration benchmark: make_items -> noop x n -> collect.

Tasks do nothing, so what a run costs is Airflow's own: scheduling, process start,
Execution API round trips. Nothing here imports beyond ``airflow.sdk``.
"""

from __future__ import annotations

from airflow.sdk import Param, dag, task


@dag(
    dag_id="bench_noop",
    schedule=None,
    catchup=False,
    max_active_runs=1,
    tags=["bench"],
    params={"n": Param(10, type="integer", minimum=1, maximum=1024, description="Mapped no-op tasks")},
)
def bench_noop():
    @task
    def make_items(params: dict | None = None) -> list[int]:
        return list(range(params["n"]))

    @task
    def noop(item: int) -> None:
        return None

    noop.expand(item=make_items())


bench_noop()
