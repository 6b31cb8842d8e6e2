"""fanout.taskpod: the task container's command fails the pod when its task process was killed."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from fanout import taskpod
from fanout.settings import PROJECT_ROOT
from fanout.taskpod import RECORD_PREFIX, TaskProcessEnd, read_record, workload_arguments

WORKLOAD = ["-m", "airflow.sdk.execution_time.execute_workload", "--json-string", "{}"]


@pytest.mark.parametrize("python", ["python", "python3", "python3.11", "/usr/local/bin/python"])
def test_the_executors_workload_command_is_recognised(python):
    assert workload_arguments([python, *WORKLOAD]) == ["--json-string", "{}"]


@pytest.mark.parametrize(
    "argv",
    [
        ["airflow", "tasks", "run", "d", "t", "r"],
        ["python", "-m", "http.server"],
        ["bash", "-m", "airflow.sdk.execution_time.execute_workload"],
        ["python"],
    ],
)
def test_other_commands_are_not_taken_for_a_workload(argv):
    assert workload_arguments(argv) is None


@pytest.mark.parametrize(
    ("task_exit_code", "container_exit_code"),
    [
        (0, 0),  # success, or the task reported its own failure
        (-signal.SIGKILL, 137),  # the OOM killer or kill -9: nobody else reports it
        (-signal.SIGSEGV, 139),
        (1, 1),  # crashed before reporting
        (-signal.SIGTERM, 0),  # the supervisor's own stop signals: it reports the state itself
        (-signal.SIGINT, 0),
    ],
)
def test_the_container_fails_only_when_nobody_reports_the_try(task_exit_code, container_exit_code):
    assert TaskProcessEnd(task_exit_code).container_exit_code == container_exit_code


def test_the_record_is_read_back_from_the_end_of_the_output():
    record = TaskProcessEnd(-signal.SIGKILL).record()
    assert record == RECORD_PREFIX + '{"exit_code": -9, "signal": "SIGKILL"}'
    tail = '{"event": "Process terminated by signal"}\n' + record + "\n"
    end = read_record(tail)
    assert end == TaskProcessEnd(-9) and end.signal == signal.SIGKILL
    assert read_record("just a log line") is None
    assert read_record(None) is None
    assert read_record(RECORD_PREFIX + "{broken") is None


def test_a_killed_task_process_fails_the_container_with_its_record_last(monkeypatch, capsys):
    monkeypatch.setattr(taskpod, "_load_workload", lambda arguments: ("workload", arguments))
    monkeypatch.setattr(taskpod, "_supervise", lambda workload: -signal.SIGKILL)
    assert taskpod.main(["python", *WORKLOAD]) == 137
    assert capsys.readouterr().out.splitlines()[-1] == TaskProcessEnd(-9).record()

    monkeypatch.setattr(taskpod, "_supervise", lambda workload: 0)
    assert taskpod.main(["python", *WORKLOAD]) == 0
    assert capsys.readouterr().out == ""


def test_any_other_command_runs_unchanged():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fanout.taskpod",
            sys.executable,
            "-c",
            "import sys; print('as is'); sys.exit(3)",
        ],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env={"PYTHONPATH": str(PROJECT_ROOT / "plugins"), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert (result.returncode, result.stdout) == (3, "as is\n")


def test_the_pods_supervisor_watches_for_its_task_process_exit(monkeypatch):
    """The supervisor in the pod wakes when its task process exits (fanout.exit_watch, tested in
    test_exit_watch.py), so the container ends then, not a heartbeat interval later."""
    from airflow.executors.base_executor import BaseExecutor

    from fanout import exit_watch

    installs, seen = [], []
    monkeypatch.setattr(exit_watch, "install", lambda: installs.append(True) or True)
    monkeypatch.setattr(
        BaseExecutor, "run_workload", staticmethod(lambda workload, **_: seen.append(len(installs)))
    )
    assert taskpod._supervise("workload") == 0
    assert seen == [1], "installed once, before the workload ran"
