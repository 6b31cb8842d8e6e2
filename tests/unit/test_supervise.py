"""fanout.supervise with real processes (small Python programs), no Airflow."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from fanout.supervise import Component, Supervisor, members_or_tagged, session_members

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def _component(tmp_path: Path, name: str, code: str, **kw) -> Component:
    return Component(
        name, _python(code), env=dict(os.environ), cwd=tmp_path, log=tmp_path / f"{name}.log", **kw
    )


def _wait(condition, timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what or "timed out"
        time.sleep(0.05)


def test_a_component_that_keeps_dying_is_restarted_with_doubling_backoff_and_said(tmp_path):
    said: list[str] = []
    sup = Supervisor(report=said.append, poll_interval=0.02, first_backoff=0.2, max_backoff=0.8)
    sup.start(_component(tmp_path, "crasher", "raise SystemExit(3)"))
    try:
        started = time.monotonic()
        sup.watch()
        _wait(lambda: len(sup.restarts) >= 4, what=f"restarts: {sup.restarts}")
        elapsed = time.monotonic() - started
    finally:
        sup.stop(grace=1)
    assert [r[:2] for r in sup.restarts[:4]] == [("crasher", 3)] * 4
    # 0.2 + 0.4 + 0.8 (capped) between the four deaths, plus the process starts.
    assert elapsed >= 1.4
    assert any(
        "crasher exited with exit code 3" in m and "restarting in 0.2 s (restart 1)" in m for m in said
    )
    assert any("restarting in 0.8 s (restart 3)" in m for m in said)
    assert any("crasher restarted" in m for m in said)


def test_what_a_dead_component_started_is_ended_with_it(tmp_path):
    sup = Supervisor(report=lambda m: None, poll_interval=0.02, first_backoff=30)
    pidfile = tmp_path / "child.pid"
    code = f"""
        import subprocess, sys, pathlib
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        pathlib.Path({str(pidfile)!r}).write_text(str(child.pid))
        raise SystemExit(1)
    """
    sup.start(_component(tmp_path, "parent", code))
    try:
        sup.watch()
        _wait(pidfile.exists)
        child = int(pidfile.read_text())
        _wait(lambda: sup.restarts, what="the parent's death was not noticed")
        _wait(lambda: not _alive(child), what="the dead component's child still runs")
    finally:
        sup.stop(grace=1)


def test_a_draining_component_s_busy_leftovers_finish_and_idle_ones_are_ended(tmp_path):
    """Like LocalExecutor workers of a dead scheduler: busy ones finish, then all are ended."""
    sup = Supervisor(report=lambda m: None, poll_interval=0.02, first_backoff=30)
    done = tmp_path / "busy-finished"
    pids = tmp_path / "pids"
    code = f"""
        import subprocess, sys, pathlib
        busy = subprocess.Popen([sys.executable, "-c",
            "import time, pathlib; time.sleep(1.5); pathlib.Path({str(done)!r}).write_text('ok')"])
        idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", "<idle>"])
        pathlib.Path({str(pids)!r}).write_text(f"{{busy.pid}} {{idle.pid}}")
        raise SystemExit(1)
    """
    sup.start(_component(tmp_path, "scheduler", code, drains="<idle>"))
    try:
        sup.watch()
        _wait(pids.exists)
        busy, idle = map(int, pids.read_text().split())
        _wait(lambda: sup.restarts)
        time.sleep(0.5)
        assert _alive(busy) and _alive(idle), "an idle leftover is kept while a busy one works"
        _wait(done.exists, what="the busy leftover was not let finish")
        _wait(lambda: not _alive(idle), what="the idle leftover was not ended")
    finally:
        sup.stop(grace=1)


def test_the_reaper_ends_the_stack_when_its_owner_is_killed_with_sigkill(tmp_path):
    """The owner (a pytest, make up) dies without running any cleanup; its stack must not outlive it."""
    pidfile = tmp_path / "pids"
    owner = f"""
        import pathlib, sys, time
        sys.path.insert(0, {str(PLUGINS)!r})
        from fanout.supervise import Component, Reaper, Supervisor
        reaper = Reaper("test-tag", grace=1, remove=[pathlib.Path({str(tmp_path / "db")!r})])
        sup = Supervisor(report=print, on_start=reaper.watch)
        code = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); time.sleep(600)"
        proc = sup.start(Component("c", [sys.executable, "-c", code], env={{}}, cwd=pathlib.Path("/"),
                                   log=pathlib.Path({str(tmp_path / "c.log")!r})))
        pathlib.Path({str(pidfile)!r}).write_text(str(proc.pid))
        time.sleep(600)
    """
    (tmp_path / "db").mkdir()
    proc = subprocess.Popen(_python(owner), start_new_session=True)
    try:
        _wait(pidfile.exists)
        sid = int(pidfile.read_text())
        _wait(lambda: len(session_members(sid)) == 2, what="the component and its child")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        _wait(lambda: not members_or_tagged([sid], None), what="the component outlived its owner")
        _wait(lambda: not (tmp_path / "db").exists(), what="the throwaway directory was not removed")
    finally:
        if proc.poll() is None:
            proc.kill()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"
