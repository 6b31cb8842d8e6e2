"""Probe DAGs of the cluster tests: ways a task's pod can end, caused from inside a task.

They let ``tests/cluster`` inject faults on any cluster through the scheduler alone, with no
access to nodes: a task whose process the kernel's OOM killer ends (it allocates past its pod's
memory limit), one that is SIGKILLed (it sends the signal to itself), and a task of a size that a
test makes too large for every node. The first two fail only their first try, so a test sees the
retry succeed. For failure-aware retries: a task that needs more memory than its size has on every
try (only a retry with more memory succeeds), and a task whose first try fails because of its node
(an exit code the deployment marks as a node fault, or -- caused by the test on the harness -- the
node lost under it). They are not part of fanout's pipeline: only tests/cluster puts this file in a
DAGs folder (and, for a real cluster, in the worker image: tests/cluster/FIDELITY.md).
"""

from __future__ import annotations

from airflow.sdk import Param, dag, get_current_context, task

from fanout.dagkit import Tag, default_args
from fanout.pools import placement

KILLS_DAG_ID = "fanout_probe_kills"
SIZE_DAG_ID = "fanout_probe_size"
MEMORY_DAG_ID = "fanout_probe_memory"
NODE_DAG_ID = "fanout_probe_node"
HOLD_S = 60  # how long the memory hog waits for the OOM killer before it gives up
# What needs_more_memory needs in all (its pod's processes), as a share of its size's memory: more
# than its first try gets, less than a retry gets after an OOM kill (x1.5 by default).
NEED_SHARE = 1.25


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


@dag(
    dag_id=MEMORY_DAG_ID,
    schedule=None,
    catchup=False,
    default_args=default_args(),
    tags=[Tag.FANOUT],
    doc_md=__doc__,
)
def fanout_probe_memory():
    @task(**placement("bookkeeping"))
    def needs_more_memory() -> str:
        """Hold NEED_SHARE times the size's memory, counted over the pod's processes, on every try."""
        import os
        import time

        import psutil

        from fanout.pools import size_of
        from fanout.settings import parse_quantity

        need = int(int(parse_quantity(size_of("bookkeeping").memory)) * NEED_SHARE)
        # The supervisor (this process's parent) and this process: what the pod's cgroup is charged.
        in_use = sum(p.memory_full_info().pss for p in (psutil.Process(os.getppid()), psutil.Process()))
        held, chunk = [], 16 << 20
        for _ in range(max(0, need - in_use) // chunk):
            held.append(b"x" * chunk)  # touched pages, as a real workload's arrays
        print(f"holding {len(held) * chunk >> 20} MiB more than the {in_use >> 20} MiB in use", flush=True)
        # A node's kernel acts on the allocation itself; the harness samples every 0.2 s: stay a while.
        time.sleep(2)
        return f"held {need >> 20} MiB in all"

    needs_more_memory()


@dag(
    dag_id=NODE_DAG_ID,
    schedule=None,
    catchup=False,
    default_args=default_args(),
    tags=[Tag.FANOUT],
    params={"fault": Param("exit", type="string", enum=["exit", "node-lost"])},
    doc_md=__doc__,
)
def fanout_probe_node():
    @task(**placement("bookkeeping"))
    def fail_on_its_node(params: dict | None = None) -> str:
        """First try: ``exit``: end the task process with the first of FANOUT_NODE_FAULT_EXIT_CODES,
        as a GPU health check would on a failing GPU; ``node-lost``: wait for the test to take the
        node away. Later tries succeed."""
        import os
        import time

        from fanout.settings import settings

        if not _first_try():
            return "ran"
        if params["fault"] == "exit":
            codes = sorted(settings().node_fault_exit_codes)
            if not codes:
                raise RuntimeError("FANOUT_NODE_FAULT_EXIT_CODES is empty: no exit code means a node fault")
            print(f"exiting with {codes[0]}, a node fault", flush=True)
            os._exit(codes[0])
        print("waiting for the node to be lost", flush=True)
        deadline = time.monotonic() + HOLD_S
        while time.monotonic() < deadline:
            time.sleep(0.1)
        raise RuntimeError(f"the node was not lost within {HOLD_S}s")

    fail_on_its_node()


fanout_probe_kills()
fanout_probe_size()
fanout_probe_memory()
fanout_probe_node()
