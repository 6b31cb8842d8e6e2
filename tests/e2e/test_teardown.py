"""An interrupted test session leaves no Airflow process and no database behind.

Each case runs ``interruptible.py`` in a pytest of its own (a real stack with a task running),
then interrupts it: Ctrl-C (SIGINT to its process group), SIGTERM (a CI timeout, ``kill``), and
SIGKILL (no cleanup code runs at all). Afterwards no process of the stack may be left (in the
sessions its components started, or carrying its tag): components, LocalExecutor workers, task
processes, PostgreSQL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fanout.supervise import cmdline, members_or_tagged
from tests.e2e.interruptible import READY

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _interrupt(proc: subprocess.Popen, sig: signal.Signals) -> None:
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)  # what Ctrl-C in a terminal does: the whole foreground group
    else:
        os.kill(proc.pid, sig)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_interrupted_session_leaves_no_airflow_process(sig, tmp_path):
    ready = tmp_path / "ready.json"
    log = tmp_path / "inner.log"
    # The inner session configures Airflow itself (tests/conftest.py), as any session does.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env[READY] = str(ready)
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pytest", "tests/e2e/interruptible.py", "-q", "-p", "no:cacheprovider"],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as a terminal's foreground job
        )
    try:
        deadline = time.monotonic() + 420
        while not ready.exists():
            assert proc.poll() is None, f"the inner session ended early:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, (
                f"the inner session never got ready:\n{log.read_text()[-3000:]}"
            )
            time.sleep(0.5)
        info = json.loads(ready.read_text())
        assert info["task_pid"] in info["processes"], "the task process is one of the stack's"

        _interrupt(proc, sig)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()

    deadline = time.monotonic() + 60
    while left := members_or_tagged(info["sessions"], info["tag"]):
        assert time.monotonic() < deadline, [cmdline(pid) for pid in left]
        time.sleep(0.5)
    while Path(info["database"]).exists():  # removed right after the processes ended
        assert time.monotonic() < deadline, f"the throwaway database {info['database']} is still there"
        time.sleep(0.5)
