"""Keep a local stack's processes running, and leave none of them behind.

``Supervisor`` starts each component (a command line) in a session of its own, watches it from
a thread, and when one exits unasked restarts it after a backoff that doubles while it keeps
dying young (1 s, 2 s, 4 s ... 60 s; back to 1 s once a start lived a minute), saying so on
``report``. What a dead component leaves in its session is ended too: at once, or, for a
component that ``drains`` (the scheduler: its LocalExecutor workers keep supervising running
tasks, which report to the api-server and finish), once every process left is idle.

``Reaper`` is a small separate process that ends every process of the stack when its parent
goes away: on a normal stop, and also when the parent is killed by SIGKILL and runs no cleanup.
It reads a pipe from the parent: the session id of every component as it starts, then end of
file as the signal. Sessions find what a component started (LocalExecutor workers, task
processes, which only change their process group, Dask workers); the stack's tag in the
environment (``FANOUT_STACK_TAG``) finds what left its session, where the process kept its
environment readable (``setproctitle``, which Airflow uses, overwrites it; PostgreSQL's backends
start sessions of their own but end when their postmaster does).

Standard library only: the reaper is started with ``python -m fanout.supervise`` and must start
in milliseconds.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

TAG_VARIABLE = "FANOUT_STACK_TAG"


# -- processes, found by session and by tag ------------------------------------------------------
def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def session_members(sid: int) -> list[int]:
    """Every live process in session ``sid`` (a component and what it started, unless it left)."""
    members = []
    for pid in _pids():
        try:
            if os.getsid(pid) == sid:
                members.append(pid)
        except (ProcessLookupError, PermissionError):
            continue
    return members


def tagged(tag: str) -> list[int]:
    """Every live process whose environment carries ``FANOUT_STACK_TAG=tag``."""
    needle = f"{TAG_VARIABLE}={tag}".encode()
    found = []
    for pid in _pids():
        if pid == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            found.append(pid)
    return found


def members_or_tagged(sessions: Iterable[int], tag: str | None) -> list[int]:
    """Every live process in one of ``sessions`` or tagged with ``tag``."""
    sessions = set(sessions)
    found = set(tagged(tag)) if tag else set()
    for pid in _pids():
        try:
            if os.getsid(pid) in sessions:
                found.add(pid)
        except (ProcessLookupError, PermissionError):
            continue
    found.discard(os.getpid())
    return sorted(found)


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


def signal_all(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def end_processes(find: Callable[[], list[int]], grace: float) -> list[int]:
    """SIGTERM what ``find`` returns, SIGKILL what is still there after ``grace`` seconds.

    Returns the processes that needed SIGKILL. Zombies count as gone (their parent reaps them).
    """
    alive = [pid for pid in find() if not is_zombie(pid)]
    if not alive:
        return []
    signal_all(alive, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        alive = [pid for pid in find() if not is_zombie(pid)]
        if not alive:
            return []
        time.sleep(0.1)
    killed: list[int] = []
    for _ in range(20):  # a process may fork while we look: sweep until nothing is left
        alive = [pid for pid in find() if not is_zombie(pid)]
        if not alive:
            break
        signal_all(alive, signal.SIGKILL)
        killed += alive
        time.sleep(0.1)
    return sorted(set(killed))


# -- the supervisor ----------------------------------------------------------------------------
@dataclass
class Component:
    """One long-running process of the stack."""

    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    log: Path
    drains: str | None = None
    """A text that the title of an idle leftover process contains (e.g. ``<idle>``): when the
    component dies, its leftovers may finish their work and are ended once all are idle. None
    ends them at once."""
    user: str | None = None
    """Run as this user (PostgreSQL refuses to run as root)."""
    stop_signal: int = signal.SIGTERM
    stop_last: bool = False
    """Stopped after the others (the database they write to)."""


@dataclass
class _Running:
    component: Component
    proc: subprocess.Popen
    started: float
    backoff: float
    restarts: int = 0
    restart_at: float | None = None
    """When a dead component is due to start again."""


class ComponentExited(RuntimeError):
    """A component exited while the stack was starting, before supervision took over."""


@dataclass
class Supervisor:
    """Components in their own sessions, restarted with backoff when they die."""

    report: Callable[[str], None] = field(default=lambda message: print(message, flush=True))
    on_start: Callable[[int], None] = field(default=lambda sid: None)
    """Told the session id of every process it starts (the reaper's ``watch``)."""
    poll_interval: float = 0.5
    first_backoff: float = 1.0
    max_backoff: float = 60.0
    stable_after: float = 60.0
    """A start that lived this long resets the backoff."""
    _running: dict[str, _Running] = field(default_factory=dict, init=False)
    _draining: dict[int, tuple[str, str]] = field(default_factory=dict, init=False)
    """session id of a dead component -> (its name, the idle marker of its leftovers)."""
    _lock: threading.RLock = field(default_factory=threading.RLock, init=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)
    restarts: list[tuple[str, int | None, float]] = field(default_factory=list, init=False)
    """(component, exit status, seconds it had run) for every unasked exit, in order."""
    sessions: list[int] = field(default_factory=list, init=False)
    """Every session it started, live or not."""
    _sessions_by_name: dict[str, list[int]] = field(default_factory=dict, init=False)

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, component: Component) -> subprocess.Popen:
        with self._lock:
            proc = self._spawn(component)
            self._running[component.name] = _Running(
                component, proc, time.monotonic(), backoff=self.first_backoff
            )
            return proc

    def _spawn(self, component: Component) -> subprocess.Popen:
        component.log.parent.mkdir(parents=True, exist_ok=True)
        with component.log.open("a") as log:
            # A session of its own: Ctrl-C in the terminal reaches only our process, which stops
            # the stack in order, and the session finds everything the component started.
            proc = subprocess.Popen(
                component.argv,
                env=component.env,
                cwd=component.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                user=component.user,
                group=_group_of(component.user),
                extra_groups=[] if component.user else None,
            )
        self.sessions.append(proc.pid)
        self._sessions_by_name.setdefault(component.name, []).append(proc.pid)
        self.on_start(proc.pid)
        return proc

    def pid(self, name: str) -> int | None:
        with self._lock:
            running = self._running.get(name)
            return running.proc.pid if running and running.proc.poll() is None else None

    def sessions_of(self, name: str) -> list[int]:
        """Every session a component has had (one per start), live or not."""
        return list(self._sessions_by_name.get(name, []))

    def names(self) -> list[str]:
        return list(self._running)

    def check_started(self, names: Iterable[str] | None = None) -> None:
        """Raise if a component (of ``names``, else any) has exited: while starting, a crash is a
        configuration error."""
        wanted = None if names is None else set(names)
        for name, running in list(self._running.items()):
            if wanted is not None and name not in wanted:
                continue
            if running.proc.poll() is not None:
                raise ComponentExited(
                    f"{name} exited with {_describe_status(running.proc.returncode)}; "
                    f"see {running.component.log}:\n{_tail(running.component.log)}"
                )

    def watch(self) -> None:
        """Start restarting components that die (from a background thread)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="fanout-supervisor", daemon=True)
            self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                self.poll()
            except Exception as exc:  # the watcher must outlive any one bad poll
                self.report(f"fanout: supervisor poll failed: {type(exc).__name__}: {exc}")

    def poll(self) -> None:
        """Restart what died (when its backoff has passed) and end idle leftovers of dead ones."""
        with self._lock:
            if self._stop.is_set():
                return
            now = time.monotonic()
            for name, running in self._running.items():
                status = running.proc.poll()
                if status is not None and running.restart_at is None:
                    self._died(name, running, status, now)
                elif running.restart_at is not None and now >= running.restart_at:
                    running.proc = self._spawn(running.component)
                    running.started, running.restart_at = time.monotonic(), None
                    self.report(f"fanout: {name} restarted (pid {running.proc.pid})")
            self._end_idle_leftovers()

    def _died(self, name: str, running: _Running, status: int, now: float) -> None:
        lived = now - running.started
        self.restarts.append((name, status, round(lived, 1)))
        if lived >= self.stable_after:
            running.backoff = self.first_backoff
        delay = running.backoff
        running.backoff = min(self.max_backoff, running.backoff * 2)
        running.restarts += 1
        running.restart_at = now + delay
        sid = running.proc.pid
        if running.component.drains and session_members(sid):
            self._draining[sid] = (name, running.component.drains)
            leftovers = " (its running tasks may finish)"
        else:
            end_processes(lambda: session_members(sid), grace=2)
            leftovers = ""
        self.report(
            f"fanout: {name} exited with {_describe_status(status)} after {lived:.0f} s; "
            f"restarting in {delay:g} s (restart {running.restarts}){leftovers}; log {running.component.log}"
        )

    def _end_idle_leftovers(self) -> None:
        for sid, (name, marker) in list(self._draining.items()):
            members = [pid for pid in session_members(sid) if not is_zombie(pid)]
            if members and not all(marker in cmdline(pid) for pid in members):
                continue
            end_processes(lambda sid=sid: session_members(sid), grace=2)
            del self._draining[sid]
            if members:
                self.report(f"fanout: ended {len(members)} idle process(es) the old {name} left")

    def stop(self, grace: float = 10) -> None:
        """End every component and its session: SIGTERM, then SIGKILL after ``grace`` seconds."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            first = [r for r in self._running.values() if not r.component.stop_last]
            last = [r for r in self._running.values() if r.component.stop_last]
            self._end_sessions(first, set(self._draining), grace)
            self._end_sessions(last, set(), grace)
            self._running.clear()
            self._draining.clear()

    @staticmethod
    def _end_sessions(group: list[_Running], extra_sessions: set[int], grace: float) -> None:
        sessions = {r.proc.pid for r in group} | extra_sessions
        for running in group:
            if running.proc.poll() is None:
                signal_all([running.proc.pid], running.component.stop_signal)

        def members() -> list[int]:
            return [pid for sid in sessions for pid in session_members(sid)]

        end_processes(members, grace)
        for running in group:
            with contextlib.suppress(subprocess.TimeoutExpired):
                running.proc.wait(timeout=5)

    def stop_component(self, name: str, grace: float = 10) -> None:
        """End one component for good (it is not restarted)."""
        with self._lock:
            running = self._running.pop(name, None)
            if running is None:
                return
            sid = running.proc.pid
            signal_all([sid], running.component.stop_signal)
            end_processes(lambda: session_members(sid), grace)
            running.proc.wait(timeout=5)


def _group_of(user: str | None) -> str | None:
    if user is None:
        return None
    import pwd

    return pwd.getpwnam(user).pw_gid  # type: ignore[return-value]


def _describe_status(status: int | None) -> str:
    if status is None:
        return "no status"
    if status < 0:
        try:
            return f"signal {signal.Signals(-status).name}"
        except ValueError:
            return f"signal {-status}"
    return f"exit code {status}"


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return "".join(path.read_text(errors="replace").splitlines(keepends=True)[-lines:])
    except OSError:
        return ""


# -- the reaper -------------------------------------------------------------------------------
class Reaper:
    """A separate process that ends every process tagged ``tag`` when we are gone.

    ``close()`` (a normal stop) and our death alike close the pipe it reads; it then sweeps the
    tagged processes and exits. Start it before anything tagged, so nothing escapes it.
    """

    def __init__(self, tag: str, grace: float = 5.0, remove: Iterable[Path] = ()):
        self.tag = tag
        self._lock = threading.Lock()
        read_end, self._write_end = os.pipe()  # both ends are close-on-exec
        removals = [arg for path in remove for arg in ("--remove", str(path))]
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fanout.supervise",
                "reap",
                "--tag",
                tag,
                "--grace",
                str(grace),
                *removals,
            ],
            stdin=read_end,
            stdout=subprocess.DEVNULL,
            env={**_environ_without_tag(), "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
            # Not in our process group: a Ctrl-C to the terminal must not end it before we do.
            start_new_session=True,
        )
        os.close(read_end)

    def watch(self, sid: int) -> None:
        """Add a session to what it ends."""
        with self._lock:
            if self._write_end is not None:
                os.write(self._write_end, f"{sid}\n".encode())

    def close(self, timeout: float = 60) -> None:
        """Let it sweep now and wait until it has."""
        with self._lock:
            if self._write_end is not None:
                os.close(self._write_end)
                self._write_end = None
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _environ_without_tag() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != TAG_VARIABLE}


def reap(tag: str, grace: float, remove: Iterable[Path] = (), wait_on: int = 0) -> list[int]:
    """Read session ids from ``wait_on`` (a file descriptor) until end of file, then end every
    process in those sessions or tagged ``tag``, and remove ``remove`` (a throwaway database)."""
    # Signals meant for the parent's terminal or group must not stop the sweep half-way.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    sessions: set[int] = set()
    pending = b""
    while chunk := os.read(wait_on, 4096):
        *lines, pending = (pending + chunk).split(b"\n")
        sessions.update(int(line) for line in lines if line.strip())
    killed = end_processes(lambda: members_or_tagged(sessions, tag), grace)
    for path in remove:
        shutil.rmtree(path, ignore_errors=True)
    return killed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fanout.supervise")
    sub = parser.add_subparsers(dest="command", required=True)
    reaper = sub.add_parser("reap", help="when stdin closes, end every process tagged --tag")
    reaper.add_argument("--tag", required=True)
    reaper.add_argument("--grace", type=float, default=5.0)
    reaper.add_argument("--remove", type=Path, action="append", default=[], help="a directory to remove then")
    args = parser.parse_args(argv)
    reap(args.tag, args.grace, args.remove)
    return 0


if __name__ == "__main__":
    sys.exit(main())
