"""Wake Airflow's task supervisor the moment its task process exits.

The supervisor (``airflow.sdk.execution_time.supervisor``) waits in ``select`` on the task
process's sockets. A task process closes them before it exits, and if it has not exited yet when
the last one closes, nothing is left to wake the wait: the supervisor notices the exit only when
``select`` times out, up to ``[workers] min_heartbeat_interval`` later, and its LocalExecutor
worker, a slot of the fan-out, stays busy until then (measured in ``bench/README.md``: p95 1.2 s
per task at an interval of 1 s, 5.2 s at Airflow's default 5 s).

A pidfd (Linux 5.3+) becomes readable when its process exits. Registered with the supervisor's
selector, it ends the wait at once; the supervisor then reaps the process as it always does.
``install()`` patches the supervisor class once, in the process that forks the workers.
"""

from __future__ import annotations

import os
import selectors
from contextlib import suppress
from typing import Any

_watches: dict[int, _ExitWatch] = {}
"""The open pidfd of every supervised task process, by pid, until its exit is known."""


class _ExitWatch:
    """A process's pidfd as a selectable file object: readable once the process has exited."""

    __slots__ = ("fd",)

    def __init__(self, pid: int) -> None:
        self.fd = os.pidfd_open(pid)

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def install() -> bool:
    """Make every supervised process's exit wake its supervisor; False where pidfds are missing."""
    if not hasattr(os, "pidfd_open"):
        return False
    from airflow.sdk.execution_time.supervisor import WatchedSubprocess

    if getattr(WatchedSubprocess, "_fanout_exit_watch", False):
        return True
    register_readers = WatchedSubprocess._register_pipe_readers
    check_exit = WatchedSubprocess._check_subprocess_exit

    def _register_pipe_readers(self, *args: Any, **kwargs: Any) -> None:
        register_readers(self, *args, **kwargs)
        try:
            watch = _ExitWatch(self.pid)
        except OSError:  # already reaped, or no pidfds in this kernel: the timeout still notices
            return
        _watches[self.pid] = watch

        def unregister(exited: _ExitWatch) -> None:
            with suppress(KeyError, ValueError):
                self.selector.unregister(exited)

        # (handler, on_close), as the supervisor's selector data is: the handler answers "no more
        # to read", so the supervisor unregisters and closes the watch, then checks the exit.
        self.selector.register(watch, selectors.EVENT_READ, (lambda _: False, unregister))

    def _check_subprocess_exit(self, *args: Any, **kwargs: Any) -> int | None:
        exit_code = check_exit(self, *args, **kwargs)
        if exit_code is not None and (watch := _watches.pop(self.pid, None)) is not None:
            with suppress(KeyError, ValueError, RuntimeError):  # already unregistered, or closed
                self.selector.unregister(watch)
            watch.close()  # the worker lives on: no descriptor may outlive its task
        return exit_code

    WatchedSubprocess._register_pipe_readers = _register_pipe_readers
    WatchedSubprocess._check_subprocess_exit = _check_subprocess_exit
    WatchedSubprocess._fanout_exit_watch = True
    return True
