"""An interrupted test session leaves no Airflow process and no database behind.

Three pytest sessions run ``interruptible.py`` at once (each a real stack with a task running);
each test interrupts one: Ctrl-C (SIGINT to its process group), SIGTERM (a CI timeout, ``kill``),
SIGKILL (no cleanup code runs at all). Afterwards no process of that stack may be left (in the
sessions its components started, or carrying its tag): components, LocalExecutor workers, task
processes, PostgreSQL, the Dask scheduler and workers; and its throwaway database is removed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from fanout.supervise import cmdline, members_or_tagged
from tests.e2e.conftest import DASK_WORKERS
from tests.e2e.interruptible import READY, STACKS

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)


@dataclass
class Inner:
    proc: subprocess.Popen
    ready: Path
    log: Path

    def wait_ready(self, timeout: float = 480) -> dict:
        deadline = time.monotonic() + timeout
        while not self.ready.exists():
            assert self.proc.poll() is None, f"the inner session ended early:\n{self.log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, (
                f"the inner session never got ready:\n{self.log.read_text()[-3000:]}"
            )
            time.sleep(0.5)
        return json.loads(self.ready.read_text())


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(scope="module")
def inner_sessions(tmp_path_factory):
    """One inner session per signal, started together (their stacks start in parallel)."""
    sessions = {}
    # The inner sessions configure Airflow themselves (tests/conftest.py), as any session does.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    for sig in SIGNALS:
        tmp = tmp_path_factory.mktemp(f"inner-{sig.name}")
        with (tmp / "inner.log").open("w") as out:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "pytest",
                    "tests/e2e/interruptible.py",
                    "-q",
                    "-p",
                    "no:cacheprovider",
                ],
                cwd=PROJECT_ROOT,
                env={**env, READY: str(tmp / "ready.json"), DASK_WORKERS: "1"},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, as a terminal's foreground job
                # whose Ctrl-C is not ignored: a shell without job control (CI, `cmd &`) starts its
                # background commands with SIGINT ignored, and children inherit that.
                preexec_fn=_default_sigint,
            )
        sessions[sig] = Inner(proc, tmp / "ready.json", tmp / "inner.log")
    yield sessions
    for inner in sessions.values():
        if inner.proc.poll() is None:
            inner.proc.kill()  # its reaper ends its stack
            inner.proc.wait()


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_interrupted_session_leaves_no_airflow_process(sig, inner_sessions):
    inner = inner_sessions[sig]
    try:
        info = inner.wait_ready()
    except AssertionError as exc:
        # Three stacks start at once on 2 cores; one whose api-server never answered has nothing to
        # tear down yet (seen once in CI, 2026-11-26). What is tested starts at the signal below.
        if "ended early" not in str(exc):
            raise
        pytest.xfail(f"the inner {sig.name} session never came up: {str(exc)[-800:]}")
    assert info["task_pid"] in info["processes"], "the task process is one of the stack's"
    assert len(info["dask_pids"]) == 1 + info["dask_workers"] == 2, "the Dask scheduler and a worker run"
    assert set(info["dask_pids"]) <= set(info["processes"]), "Dask's processes are the stack's"

    if sig == signal.SIGINT:
        os.killpg(inner.proc.pid, sig)  # what Ctrl-C in a terminal does: the whole foreground group
    else:
        os.kill(inner.proc.pid, sig)
    try:
        inner.proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        os.kill(inner.proc.pid, signal.SIGUSR1)  # interruptible.py dumps every thread's stack
        time.sleep(3)
        stacks = inner.ready.with_name(STACKS)
        pytest.fail(
            f"the {sig.name}ed session did not end in 120 s; its threads:\n{stacks.read_text()[-8000:]}"
        )

    deadline = time.monotonic() + 60
    while left := members_or_tagged(info["sessions"], info["tag"]):
        assert time.monotonic() < deadline, [cmdline(pid) for pid in left]
        time.sleep(0.5)
    while Path(info["database"]).exists():  # removed right after the processes ended
        assert time.monotonic() < deadline, f"the throwaway database {info['database']} is still there"
        time.sleep(0.5)
