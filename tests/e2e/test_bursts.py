"""The local stack stays responsive under a burst of triggers while its scheduler is busy.

One stack as ``make up`` and ``make demo`` start it (fanout's LocalExecutor, PostgreSQL, a Dask
scheduler and worker beside it), with the no-op fan-out of ``bench/`` as its only DAG. While a
fan-out of a few hundred no-op tasks keeps the scheduler writing, 24 concurrent API calls (half
trigger the DAG, half unpause it) must all be answered with a success: a metadata database
that serialises writes (SQLite) answered part of such a burst with HTTP 500 "Database error".
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from fanout.localstack import AirflowError, AirflowStack

PROJECT_ROOT = Path(__file__).resolve().parents[2]
NOOP_DAG = PROJECT_ROOT / "bench" / "dags" / "bench_noop.py"
DAG_ID = "bench_noop"
BURST = 24
BUSY_FANOUT = 300


@pytest.fixture(scope="module")
def busy_stack(tmp_path_factory):
    """A stack like ``make up``'s, its scheduler busy with a fan-out of no-op tasks."""
    dags = tmp_path_factory.mktemp("burst-dags")
    (dags / NOOP_DAG.name).write_text(NOOP_DAG.read_text())
    stack = AirflowStack(
        home=tmp_path_factory.mktemp("burst-home"),
        dags_folder=dags,
        parallelism=2,
        dask=True,
        dask_workers=1,
        ephemeral=True,
        extra_env={"FANOUT_ARTIFACT_ROOT": str(tmp_path_factory.mktemp("burst-artifacts"))},
    )
    client = stack.start()
    try:
        client.wait_for_dags([DAG_ID])
        client.unpause(DAG_ID)
        run_id = client.trigger(DAG_ID, {"n": BUSY_FANOUT})
        # Busy: the fan-out is expanded and its tasks are being scheduled and run.
        deadline = time.monotonic() + 120
        while not any(t["map_index"] >= 0 for t in client.task_instances(DAG_ID, run_id)):
            assert time.monotonic() < deadline, "the fan-out never expanded"
            time.sleep(0.5)
        yield stack, client
    finally:
        stack.stop()


def test_components_keep_their_metadata_in_the_stacks_postgresql(busy_stack):
    """Every component talks to the stack's PostgreSQL, Dask or not (none to a SQLite file)."""
    import psycopg2

    stack, _ = busy_stack
    assert stack.database == "postgres"
    assert not (stack.home / "airflow.db").exists(), "a component created a SQLite database"
    uri = stack.env().get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "")
    assert uri.startswith("postgresql"), f"the components' database is {uri or 'Airflow default (SQLite)'}"
    conn = psycopg2.connect(uri.replace("+psycopg2", ""))
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            (clients,) = cur.fetchone()
    finally:
        conn.close()
    assert clients > 0, "no component is connected to the stack's PostgreSQL"


def _database_errors(stack: AirflowStack) -> str:
    """The api-server's logged database errors (the HTTP answer hides them), and PostgreSQL's."""
    found = []
    for name, marker in (("api-server", "Error with id"), ("postgres", "ERROR:")):
        log = stack.home / "logs" / f"{name}.log"
        if log.exists():
            found += [
                f"{name}: {line[:300]}"
                for line in log.read_text(errors="replace").splitlines()
                if marker in line
            ]
    return "\n".join(found[-12:])


def test_a_burst_of_triggers_and_unpauses_is_answered_without_error(busy_stack, record_property):
    stack, client = busy_stack
    client.token()  # one login, shared by the burst's threads
    start = threading.Barrier(BURST)
    answers: list[tuple[str, float, str | None]] = []
    lock = threading.Lock()

    def one(index: int) -> None:
        kind = "unpause" if index % 2 else "trigger"
        start.wait()
        began = time.perf_counter()
        try:
            if kind == "unpause":
                client.patch(f"/dags/{DAG_ID}", {"is_paused": False})
            else:
                client.trigger(DAG_ID, {"n": 1})
            error = None
        except (AirflowError, OSError) as exc:
            error = str(exc)[:300]
        with lock:
            answers.append((kind, time.perf_counter() - began, error))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(BURST)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    record_property("burst_latency_max_s", round(max(a[1] for a in answers), 3))
    failed = [f"{kind} after {seconds:.1f} s: {error}" for kind, seconds, error in answers if error]
    assert len(answers) == BURST
    assert failed == [], (
        f"{len(failed)} of {BURST} requests failed:\n" + "\n".join(failed) + "\n" + _database_errors(stack)
    )
