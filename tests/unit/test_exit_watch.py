"""fanout.exit_watch against Airflow's real supervisor class and a real forked process."""

from __future__ import annotations

import os
import time
import uuid

import pytest
from airflow.sdk.execution_time.supervisor import WatchedSubprocess

from fanout import exit_watch

pytestmark = pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs pidfd_open (Linux 5.3+)")


def _closes_its_sockets_then_lingers() -> None:
    os.closerange(0, 4096)  # every socket to the supervisor closed, as a task does before it exits,
    time.sleep(0.5)  # and the process lives on a little (interpreter shutdown, atexit hooks)


def _drain_sockets(proc: WatchedSubprocess) -> None:
    while proc._open_sockets:
        proc._service_subprocess(max_wait_time=5)


def test_the_supervisors_wait_ends_when_its_process_exits_not_at_the_select_timeout():
    assert exit_watch.install()
    proc = WatchedSubprocess.start(target=_closes_its_sockets_then_lingers, id=uuid.uuid4())
    _drain_sockets(proc)
    assert proc._exit_code is None, "the process still lives after closing its sockets"
    # Airflow's own wait: one select with the timeout the supervisor uses between heartbeats. With
    # no socket left only the exit can end it early; without the watch it returns [] after 10 s.
    events = proc.selector.select(timeout=10)
    assert [type(key.fileobj).__name__ for key, _ in events] == ["_ExitWatch"]
    assert proc._service_subprocess(max_wait_time=10) == 0


def test_no_descriptor_outlives_a_supervised_process():
    assert exit_watch.install()
    before = set(os.listdir("/proc/self/fd"))
    for _ in range(3):
        proc = WatchedSubprocess.start(target=_closes_its_sockets_then_lingers, id=uuid.uuid4())
        _drain_sockets(proc)
        while proc._service_subprocess(max_wait_time=10) is None:
            pass
        assert proc._exit_code == 0
        proc.selector.close()
        proc.stdin.close()
    assert set(os.listdir("/proc/self/fd")) <= before
    assert exit_watch._watches == {}


def test_installing_twice_patches_once():
    assert exit_watch.install()
    patched = WatchedSubprocess._register_pipe_readers, WatchedSubprocess._check_subprocess_exit
    assert exit_watch.install()
    assert (WatchedSubprocess._register_pipe_readers, WatchedSubprocess._check_subprocess_exit) == patched
