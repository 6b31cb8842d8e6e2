"""A pytest session that is interrupted on purpose: ``test_teardown.py`` runs it and signals it.

Not collected by the suite (the name does not start with ``test_``). It takes the session's real
``airflow`` fixture, starts a render chunk, writes what the outer test needs to find every
process of the stack, and waits for the signal.
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import time
from pathlib import Path

from fanout.localstack import AirflowError
from tests.e2e.test_local_pipeline import _process_of

READY = "FANOUT_INTERRUPT_READY"
STACKS = "stacks.txt"
# Heavy enough that the chunk is still running when the signal arrives.
CONF = {"n_frames": 2, "chunk_size": 1, "width": 320, "height": 180, "samples": 64}


def test_waits_with_a_task_running_until_interrupted(airflow):
    # The outer test asks for every thread's stack (SIGUSR1) if this session does not end in time;
    # they go beside the ready file (pytest captures this session's stderr).
    dump = Path(os.environ[READY]).with_name(STACKS).open("w")  # open until the session ends
    faulthandler.register(signal.SIGUSR1, file=dump, all_threads=True)
    stack, client = airflow
    client.unpause("fanout_render")
    run_id = client.trigger("fanout_render", CONF)
    deadline = time.monotonic() + 300
    pid = None
    while pid is None:
        assert time.monotonic() < deadline, "no render chunk ran"
        try:
            tis = client.task_instances("fanout_render", run_id)
        except (OSError, AirflowError):  # three stacks starting on 2 cores: an answer may time out
            continue
        for ti in tis:
            if ti["task_id"] == "render_chunk" and ti["state"] == "running":
                pid = _process_of(ti["id"])
        time.sleep(0.2)
    ready = Path(os.environ[READY])
    tmp = ready.with_suffix(".tmp")
    tmp.write_text(
        json.dumps(
            {
                "tag": stack.tag,
                "sessions": stack.supervisor.sessions,
                "processes": stack.processes(),
                "task_pid": pid,
                "dask_pids": list(stack.dask_cluster.pids().values()),
                "dask_workers": stack.dask_cluster.workers,
                "database": str((stack.home / "postgres").resolve()),
            }
        )
    )
    tmp.replace(ready)
    while True:  # until the outer test's signal ends this session
        time.sleep(1)
