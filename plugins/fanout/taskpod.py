"""A task pod's command: Airflow's workload runner, with an exit status that tells what happened.

``fanout.pods`` sets the task container's ``command`` to ``python -m fanout.taskpod``; the
KubernetesExecutor's ``args`` follow unchanged, so the container runs::

    python -m fanout.taskpod python -m airflow.sdk.execution_time.execute_workload --json-string <workload>

and this module runs that workload in-process, as ``execute_workload`` does (the same supervisor,
the same task process, the same logs), with one difference: the container's exit status.

Why: inside a pod, Airflow's supervisor (the container's main process) forks the *task process*.
When the kernel's OOM killer or a ``kill -9`` ends the task process, the supervisor survives it
(the OOM killer picks the largest process, and on cgroup v1 nodes it kills that one alone). With
retries left, Airflow 3.3.2's supervisor then reports nothing: the try's state would be
``up_for_retry``, which it only ever sends on the task's own request (apache/airflow#70572 notes
that ``finish()`` is unreachable for it); ``execute_workload`` ignores the task's exit code and
the container exits 0. The pod ``Succeeded``, the executor deletes it as a success, and the task
instance stays ``running`` until the scheduler's heartbeat timeout (~5 minutes), with no trace
of why.

Here, when the task process was killed by a signal other than the supervisor's own stop signals
(SIGTERM, SIGINT: a server-side stop, a task past its success overtime, a pod being deleted --
Airflow reports those itself) or exited non-zero, the container exits non-zero too (128 + the
signal, as a shell reports it, e.g. 137 for SIGKILL; or the task process's own code) and the last
line of its output is a record of what the supervisor saw::

    fanout-task-process {"exit_code": -9, "signal": "SIGKILL"}

The pod is then ``Failed``: the KubernetesExecutor fails the try at once (retry or final
failure, as for any failed pod), keeps the pod (``delete_worker_pods_on_failure: False``), and
the kubelet copies the output's tail into the container's termination message
(``terminationMessagePolicy: FallbackToLogsOnError``, also set by ``fanout.pods``), where
``fanout.executors`` reads the record. Whether the kill was the OOM killer's is the kubelet's
to say (container reason ``OOMKilled``): the task process cannot tell a kernel SIGKILL from a
user's.

Anything else given as arguments is run as is (``exec``), so the command can front any image's
args. As the container's PID 1 this process would ignore SIGTERM without a handler (PID 1 has no
default signal actions): until the supervisor installs its own (which forwards SIGTERM to the task),
SIGTERM ends it as it would end any other process.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass

WORKLOAD_MODULE = "airflow.sdk.execution_time.execute_workload"
RECORD_PREFIX = "fanout-task-process "
"""Starts the line that records how the task process ended (the container's last line of output)."""

# Signals the supervisor sends its task process itself, after which it reports the try's state.
SUPERVISOR_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
_PYTHON = re.compile(r"^python(\d(\.\d+)?)?$")


@dataclass(frozen=True)
class TaskProcessEnd:
    """How the task process ended, as the supervisor returns it: negative for a signal."""

    exit_code: int

    @property
    def signal(self) -> signal.Signals | None:
        if self.exit_code >= 0:
            return None
        try:
            return signal.Signals(-self.exit_code)
        except ValueError:
            return None

    @property
    def container_exit_code(self) -> int:
        """Non-zero when the pod must fail because nobody reported the try's end; else 0."""
        if self.exit_code >= 0:
            return self.exit_code
        if self.signal in SUPERVISOR_SIGNALS:
            return 0
        return 128 - self.exit_code

    def record(self) -> str:
        """The line fanout.executors reads back from the container's termination message."""
        facts = {"exit_code": self.exit_code}
        if self.signal is not None:
            facts["signal"] = self.signal.name
        return RECORD_PREFIX + json.dumps(facts, sort_keys=True)


def read_record(text: str | None) -> TaskProcessEnd | None:
    """The task process's end from a termination message (the output's tail), if recorded there."""
    for line in reversed((text or "").splitlines()):
        if line.startswith(RECORD_PREFIX):
            try:
                return TaskProcessEnd(int(json.loads(line[len(RECORD_PREFIX) :])["exit_code"]))
            except (ValueError, KeyError, TypeError):
                return None
    return None


def workload_arguments(argv: Sequence[str]) -> list[str] | None:
    """The arguments after ``python -m airflow.sdk.execution_time.execute_workload``, if that is argv."""
    if (
        len(argv) >= 3
        and _PYTHON.match(os.path.basename(argv[0]))
        and list(argv[1:3]) == ["-m", WORKLOAD_MODULE]
    ):
        return list(argv[3:])
    return None


def _load_workload(arguments: list[str]):
    """The workload, parsed as ``execute_workload`` takes it (``--json-path`` or ``--json-string``)."""
    from airflow.executors import workloads
    from pydantic import TypeAdapter

    parser = argparse.ArgumentParser(prog=f"python -m {__name__}")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--json-path")
    source.add_argument("--json-string")
    parsed = parser.parse_args(arguments)
    if parsed.json_path:
        with open(parsed.json_path) as file:
            text = file.read()
    else:
        text = parsed.json_string
    return TypeAdapter(workloads.All).validate_json(text)


def _supervise(workload) -> int:
    """Run the workload under Airflow's supervisor, as execute_workload does; its task process's exit code."""
    from airflow.executors.base_executor import BaseExecutor
    from airflow.sdk.log import configure_logging
    from airflow.settings import dispose_orm

    from fanout import exit_watch

    # The pod ends when its task process does, not up to min_heartbeat_interval (5 s) later with
    # its node's GPU held: the next trial's pod was Unschedulable that long.
    exit_watch.install()
    dispose_orm(do_log=False)  # the supervisor talks to the Execution API, never to the database
    configure_logging(output=sys.stdout.buffer, json_output=True)
    # Task output also goes to stdout: the pod's log while it runs, the termination message after.
    return BaseExecutor.run_workload(workload, subprocess_logs_to_stdout=True) or 0


def _exit_on_signal(signum: int, _frame) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    arguments = workload_arguments(argv)
    if arguments is None:
        if not argv:
            print(f"usage: python -m {__name__} COMMAND [ARG...]", file=sys.stderr)
            return 2
        os.execvp(argv[0], argv)  # not an Airflow workload: run it unchanged
    previous = signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        end = TaskProcessEnd(_supervise(_load_workload(arguments)))
    finally:
        signal.signal(signal.SIGTERM, previous)
    code = end.container_exit_code
    if code:
        sys.stdout.flush()
        print(end.record(), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
