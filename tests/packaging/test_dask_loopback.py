"""The chart's Dask command lines, run for real on loopback: a scheduler, a worker pod's processes
and a client using them, as a preprocessing task would.

The cluster harness runs no Deployments, so this runs the scheduler's and the worker's command
and args exactly as helm/fanout renders them, with two changes for one machine: the scheduler
Service's DNS name becomes 127.0.0.1 and both bind to 127.0.0.1 only (--host).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fanout.localstack import free_port
from tests.packaging.helmkit import NAMESPACE, render_chart

PROCESSES, MEMORY_LIMIT, RESERVE = 2, "2Gi", "512Mi"
PER_PROCESS_BYTES = (2048 - 512) // PROCESSES * 2**20


def free_port_range(count: int) -> int:
    """The first of ``count`` consecutive ports free on loopback."""
    for _ in range(50):
        first = free_port()
        socks = []
        try:
            for port in range(first, first + count):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError(f"no {count} consecutive free ports on loopback")


def command_line(deployment: dict) -> list[str]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container["command"] + container["args"]


def start(argv: list[str], log: Path) -> subprocess.Popen:
    bin_dir = str(Path(sys.executable).parent)  # the venv's `dask`, as the image has it on PATH
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    with log.open("w") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def chart_cluster(tmp_path_factory):
    """(scheduler address, rendered worker command) with the chart's processes running."""
    scheduler_port, dashboard_port = free_port(), free_port()
    values = {
        "dask": {
            "scheduler": {"port": scheduler_port, "dashboardPort": dashboard_port},
            "workers": {
                "resources": {
                    "requests": {"cpu": str(PROCESSES), "memory": MEMORY_LIMIT},
                    "limits": {"cpu": str(PROCESSES), "memory": MEMORY_LIMIT},
                },
                "memoryReserve": RESERVE,
                "workerPort": free_port_range(PROCESSES),
                "nannyPort": free_port_range(PROCESSES),
            },
        }
    }
    scheduler, worker = render_chart(
        values,
        ["templates/dask/dask-scheduler-deployment.yaml", "templates/dask/dask-worker-deployment.yaml"],
    )
    service_host = f"fanout-dask-scheduler.{NAMESPACE}.svc.cluster.local"
    scheduler_argv = [*command_line(scheduler), "--host=127.0.0.1"]
    worker_argv = [arg.replace(service_host, "127.0.0.1") for arg in command_line(worker)]
    worker_argv += ["--host=127.0.0.1"]
    assert worker_argv[2] == f"tcp://127.0.0.1:{scheduler_port}", "the worker must point at the Service"

    logs = tmp_path_factory.mktemp("dask-logs")
    processes = [start(scheduler_argv, logs / "scheduler.log")]
    try:
        processes.append(start(worker_argv, logs / "worker.log"))
        yield f"tcp://127.0.0.1:{scheduler_port}", worker_argv, logs
    finally:
        for process in reversed(processes):
            stop(process)


@pytest.fixture(scope="module")
def client(chart_cluster):
    from distributed import Client

    address, _, logs = chart_cluster
    try:
        with Client(address, timeout=60) as client:
            client.wait_for_workers(PROCESSES, timeout=45)
            yield client
    except Exception:
        for log in sorted(logs.iterdir()):
            print(f"--- {log.name}\n{log.read_text()}")
        raise


def test_the_worker_pod_command_is_single_threaded_processes_under_a_per_process_memory_limit(chart_cluster):
    _, argv, _ = chart_cluster
    assert argv[:2] == ["dask", "worker"]
    assert f"--nworkers={PROCESSES}" in argv and "--nthreads=1" in argv
    assert f"--memory-limit={PER_PROCESS_BYTES // 2**20}MiB" in argv


def test_one_worker_pod_joins_as_separate_single_threaded_processes(client):
    workers = client.scheduler_info(n_workers=-1)["workers"]
    assert len(workers) == PROCESSES
    assert [w["nthreads"] for w in workers.values()] == [1] * PROCESSES
    assert [w["memory_limit"] for w in workers.values()] == [PER_PROCESS_BYTES] * PROCESSES
    pids = client.run(os.getpid)
    assert len(set(pids.values())) == PROCESSES and os.getpid() not in pids.values()


def test_a_client_runs_pandas_work_on_the_chart_workers(client):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(7)
    frame = pd.DataFrame({"zone": rng.integers(0, 20, 200_000), "fare": rng.gamma(2.0, 7.5, 200_000)})

    def zone_sums(part: pd.DataFrame) -> tuple[int, pd.DataFrame]:  # pickled by value: a closure
        return os.getpid(), part.groupby("zone")["fare"].agg(["sum", "count"])

    results = client.gather(client.map(zone_sums, [frame.iloc[i::8] for i in range(8)]))
    worker_pids = set(client.run(os.getpid).values())
    assert {pid for pid, _ in results} <= worker_pids
    combined = pd.concat([sums for _, sums in results]).groupby(level=0).sum()
    expected = frame.groupby("zone")["fare"].agg(["sum", "count"])
    pd.testing.assert_frame_equal(combined, expected, check_exact=False, rtol=1e-9)
