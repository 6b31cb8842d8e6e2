"""Probe DAGs of the cluster tests: ways a task's pod can end, caused from inside a task.

They let ``tests/cluster`` inject faults on any cluster through the scheduler alone, with no
access to nodes: a task whose process the kernel's OOM killer ends (it allocates past its pod's
memory limit), one that is SIGKILLed (it sends the signal to itself), and a task of a size that a
test makes too large for every node. The first two fail only their first try, so a test sees the
retry succeed. They are not part of fanout's pipeline: only tests/cluster puts this file in a DAGs
folder (and, for a real cluster, in the worker image: tests/cluster/FIDELITY.md).
"""

from __future__ import annotations

from airflow.sdk import dag, get_current_context, task

from fanout.dagkit import Tag, default_args
from fanout.pools import placement

KILLS_DAG_ID = "fanout_probe_kills"
SIZE_DAG_ID = "fanout_probe_size"
HOLD_S = 60  # how long the memory hog waits for the OOM killer before it gives up


def _first_try() -> bool:
    return get_current_context()["ti"].try_number == 1


@dag(
    dag_id=KILLS_DAG_ID,
    schedule=None,
    catchup=False,
    default_args=default_args(),
    tags=[Tag.FANOUT],
    doc_md=__doc__,
)
def fanout_probe_kills():
    @task(**placement("bookkeeping"))
    def hog_memory() -> str:
        """Allocate twice the pod's memory limit, touching every page, and hold it."""
        import time

        from fanout.pools import size_of
        from fanout.settings import parse_quantity

        if not _first_try():
            return "spared"
        limit_mib = int(parse_quantity(size_of("bookkeeping").memory)) >> 20
        held = []
        for mib in range(32, 2 * limit_mib + 1, 32):
            held.append(b"x" * (32 << 20))
            if mib % 256 == 0:
                print(f"holding {mib} MiB of a {limit_mib} MiB limit", flush=True)
        deadline = time.monotonic() + HOLD_S
        while time.monotonic() < deadline:  # a real kernel never lets it get here
            time.sleep(0.1)
        raise RuntimeError(f"held {2 * limit_mib} MiB for {HOLD_S}s: the pod's memory limit was not enforced")

    @task(**placement("bookkeeping"))
    def kill_itself() -> str:
        """SIGKILL the task process, as ``kill -9`` of it from the node would."""
        import os
        import signal
        import time

        if not _first_try():
            return "spared"
        print(f"SIGKILL to the task process {os.getpid()} at {time.time():.3f}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        return "unreachable"

    hog_memory()
    kill_itself()


@dag(
    dag_id=SIZE_DAG_ID,
    schedule=None,
    catchup=False,
    default_args=default_args(),
    tags=[Tag.FANOUT],
    doc_md=__doc__,
)
def fanout_probe_size():
    @task(**placement("shard"))
    def sized_task() -> str:
        return "ran"

    sized_task()


fanout_probe_kills()
fanout_probe_size()
