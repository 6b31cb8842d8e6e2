"""The embedded default: real Airflow components on one machine, and a small REST client.

``AirflowStack`` runs the api-server, scheduler and dag-processor (fanout's LocalExecutor,
PostgreSQL unless told otherwise) from a private AIRFLOW_HOME. ``fanout.supervise`` keeps them
running: each in a session of its own, restarted with backoff when it dies, and a reaper
process that ends every process of the stack even when ours is killed. ``fanout.localdb`` is
the database; ``fanout.local_executor`` the executor: a memory budget per task size, and a
scheduler crash costs no retries. With ``dask=True`` it also starts a real Dask scheduler and workers beside them
(``fanout.localdask``) and gives every component, and so every task, ``DASK_SCHEDULER_ADDRESS``.
``AirflowClient`` talks to the public REST API (``/api/v2``) the way the web UI does; tests and
the demo use it instead of the CLI, which costs seconds of imports per call.

Used by ``make demo`` / ``make up`` (see ``fanout.demo``), the end-to-end tests and ``bench/``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fanout.localdask import LocalDaskCluster

from fanout.supervise import TAG_VARIABLE, Component, ComponentExited, Reaper, Supervisor, members_or_tagged

PROJECT_ROOT = Path(__file__).resolve().parents[2]
ADMIN_USER = "admin"
TERMINAL_RUN_STATES = {"success", "failed"}
COMPONENTS = ("api-server", "scheduler", "dag-processor")
LOCAL_EXECUTOR = "fanout.local_executor.FanoutLocalExecutor"

# What makes a crash cheap (see fanout.local_executor): a dead scheduler's tasks are adopted within
# ~30 s; a queued task nobody runs is requeued (same try) after two minutes; a task rides out an
# api-server restart: its Execution API calls wait 15 s for an answer and retry 12 times with
# backoff, ~4 minutes on average instead of ~30 s (on a loaded 2-core machine a restarted
# api-server answered its first Execution API call after 90 s, and 8 tries of 5 s were not enough
# for a render chunk in the chaos test). The scheduler's heartbeat timeout stays Airflow's 5
# minutes, longer than that: a live task sends no heartbeat while the api-server is away.
RECOVERY_SETTINGS = {
    "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD": "20",
    "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "10",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "300",
    "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "120",
    "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT_CHECK_INTERVAL": "15",
    "AIRFLOW__WORKERS__EXECUTION_API_RETRIES": "12",
    "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "15",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class AirflowError(RuntimeError):
    """A component did not start, or the REST API answered with an error."""


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


def _to_stderr(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


@dataclass
class AirflowStack:
    """Airflow's components as local processes sharing one AIRFLOW_HOME."""

    home: Path
    dags_folder: Path = PROJECT_ROOT / "dags"
    port: int = 0
    # fanout's LocalExecutor (README "The local stack's memory budgets", "The local stack");
    # "LocalExecutor" runs tasks without budgets and without adopting a dead scheduler's tasks.
    executor: str = LOCAL_EXECUTOR
    parallelism: int = 0
    """LocalExecutor worker processes; 0 means one per CPU core."""
    database_uri: str | None = None
    """An existing database; None runs the local one (``database``)."""
    database: str | None = None
    """``postgres`` or ``sqlite``; None takes ``FANOUT_LOCAL_DATABASE`` (default postgres)."""
    extra_env: dict[str, str] = field(default_factory=dict)
    components: tuple[str, ...] = COMPONENTS
    dask: bool = False
    """Run a local Dask scheduler and workers for the preprocessing tasks (fanout.localdask)."""
    dask_workers: int = 0
    """Dask worker processes; 0 means one per CPU."""
    dask_cluster: LocalDaskCluster | None = field(default=None, init=False, repr=False)
    supervise: bool = True
    """Restart a component that dies after the stack is up (with backoff, reported)."""
    ephemeral: bool | None = None
    """Remove the database with the stack, even if our process is killed; None: when the home is
    in the temporary directory (tests, benchmarks), not for ``make up``'s ``.airflow``."""
    report: Callable[[str], None] = _to_stderr
    supervisor: Supervisor = field(init=False, repr=False)
    _reaper: Reaper | None = field(default=None, init=False, repr=False)
    _tag: str = field(default="", init=False, repr=False)
    _postgres: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.home = Path(self.home).resolve()
        # Components run with the home as working directory: a relative path would find nothing.
        self.dags_folder = Path(self.dags_folder).resolve()
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        self.parallelism = self.parallelism or (os.cpu_count() or 2)
        if self.dask:
            from fanout.localdask import LocalDaskCluster

            self.dask_cluster = LocalDaskCluster(
                self.home / "dask", workers=self.dask_workers, env=self.extra_env
            )
        if self.ephemeral is None:
            self.ephemeral = self.home.is_relative_to(Path(tempfile.gettempdir()).resolve())
        if self.database is None:
            from fanout.settings import settings

            self.database = settings({**os.environ, **self.extra_env}).local_database
        self.supervisor = Supervisor(report=self.report)

    # -- configuration -----------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def tag(self) -> str:
        """What every process of the running stack carries in its environment (``FANOUT_STACK_TAG``)."""
        return self._tag

    def processes(self) -> list[int]:
        """Every live process of the stack: in a session it started (or tagged with its tag)."""
        return members_or_tagged(self.supervisor.sessions, self._tag or None)

    @property
    def password_file(self) -> Path:
        return self.home / "simple_auth_manager_passwords.json.generated"

    def _secrets(self) -> dict[str, str]:
        """Per-home secrets, generated once: a restarted stack keeps its tokens and password."""
        path = self.home / "fanout-secrets.json"
        values = json.loads(path.read_text()) if path.exists() else {}
        wanted = {
            "fernet_key": _fernet_key,
            # >= 64 bytes: shorter generated secrets trigger PyJWT key-length warnings.
            "jwt_secret": lambda: secrets.token_urlsafe(64),
            "api_secret_key": lambda: secrets.token_urlsafe(32),
            "admin_password": lambda: secrets.token_urlsafe(12),
            "database_password": lambda: secrets.token_urlsafe(24),
        }
        missing = {name: make() for name, make in wanted.items() if name not in values}
        if missing:
            values.update(missing)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(values))
            tmp.chmod(0o600)
            tmp.replace(path)
        return values

    def env(self) -> dict[str, str]:
        """The environment every component (and so every task) runs with."""
        sec = self._secrets()
        cpus = os.cpu_count() or 2
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": self.executor,
            "AIRFLOW__CORE__PARALLELISM": str(self.parallelism),
            "AIRFLOW__CORE__FERNET_KEY": sec["fernet_key"],
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__SECRET_KEY": sec["api_secret_key"],
            "AIRFLOW__API__EXPOSE_CONFIG": "True",
            "AIRFLOW__API_AUTH__JWT_SECRET": sec["jwt_secret"],
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            # Pick up DAG file changes quickly on a developer machine.
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "30",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            # The task supervisor can sleep this long after its task exited before it notices,
            # holding the executor slot (5 s by default, bench/README.md). fanout's executor ends
            # that wait at once (fanout.exit_watch); 1 s bounds it where pidfds are missing, and
            # for the benchmark's plain-Airflow anchor, which runs with the same settings.
            "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
            # A scheduler with nothing to do sleeps this long before it looks again, so a freed slot
            # waited 0.5 s on average for its next task (1 s by default). Measured idle: 0.033 CPU
            # cores at 1 s, 0.086 at 0.25 s; a mapped wave of 2 slots gains 0.375 s each time.
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.25",
            **RECOVERY_SETTINGS,
            # Each LocalExecutor slot gets an equal share of the cores, so parallel tasks that
            # size their thread/process pools from it do not oversubscribe the machine.
            "FANOUT_TASK_CPUS": str(max(1, cpus // self.parallelism)),
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(PROJECT_ROOT / "plugins"), os.environ.get("PYTHONPATH", "")) if p
            ),
        }
        # No GPU on the embedded default: GPU-sized tasks run on the CPU, one per executor slot.
        env.setdefault("FANOUT_GPU_AIRFLOW_POOL_SLOTS", str(self.parallelism))
        if self.database_uri:
            env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = self.database_uri
        if self.dask_cluster is not None:
            env["DASK_SCHEDULER_ADDRESS"] = self.dask_cluster.address
        # Not an elif: with Dask beside it, the stack ran on Airflow's default SQLite file while
        # its PostgreSQL idled, and a burst of triggers got HTTP 500 "database is locked".
        if self._postgres is not None:
            env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = self._postgres.uri
        env.update(self.extra_env)
        if self._tag:
            env[TAG_VARIABLE] = self._tag  # what the reaper finds every process of this stack by
        return env

    # -- lifecycle -----------------------------------------------------------------------
    def _airflow(self) -> list[str]:
        return [sys.executable, "-m", "airflow"]

    def _log(self, name: str) -> Path:
        return self.home / "logs" / f"{name}.log"

    def migrate(self) -> None:
        log = self._log("db-migrate")
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as out:
            done = subprocess.run(
                [*self._airflow(), "db", "migrate"], env=self.env(), stdout=out, stderr=subprocess.STDOUT
            )
        if done.returncode:
            raise AirflowError(f"airflow db migrate failed (exit {done.returncode}); see {log}")

    def start(self, timeout: float = 180) -> AirflowClient:
        """Start the database, migrate it, start the components and wait until the API answers."""
        self._tag = uuid.uuid4().hex
        # First the reaper: no process of the stack may exist without one to end it.
        self._reaper = Reaper(self._tag, remove=self._ephemeral_paths())
        self.supervisor = Supervisor(report=self.report, on_start=self._reaper.watch)
        try:
            self._start_database()
            if self.dask_cluster is not None:
                # Components of this stack: restarted by its supervisor, ended by its reaper.
                self.dask_cluster.start(self.supervisor, self._tag, wait=False)
            # The simple auth manager keeps the password it finds in this file.
            self.password_file.write_text(json.dumps({ADMIN_USER: self._secrets()["admin_password"]}))
            self.migrate()
            env = self.env()
            for name in self.components:
                self.start_component(name, env)
            client = AirflowClient(self.base_url, ADMIN_USER, self._secrets()["admin_password"])
            if self.dask_cluster is not None:
                self.dask_cluster.wait_for_workers(self.dask_cluster.workers, timeout)
            self._wait_healthy(client, timeout)
        except BaseException:
            self.stop()
            raise
        if self.supervise:
            self.supervisor.watch()
        return client

    def _ephemeral_paths(self) -> list[Path]:
        if not self.ephemeral or self.database_uri or self.database != "postgres":
            return []
        from fanout.localdb import data_dir_for

        return [data_dir_for(self.home)]

    def _start_database(self) -> None:
        if self.database_uri or self.database == "sqlite":
            return
        from fanout.localdb import LocalPostgres, data_dir_for

        datadir = data_dir_for(self.home)
        link = self.home / "postgres"
        if datadir != link and not link.is_symlink():
            shutil.rmtree(datadir, ignore_errors=True)  # left by an earlier home of the same path
            link.symlink_to(datadir)
        postgres = LocalPostgres(datadir, free_port(), self._secrets()["database_password"])
        postgres.init()
        self._postgres = postgres
        self.supervisor.start(
            Component(
                "postgres",
                postgres.command(),
                # What the server needs, and the tag: no Airflow settings, no secrets.
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", TAG_VARIABLE: self._tag},
                cwd=Path("/"),
                log=self._log("postgres"),
                user=postgres.user,
                stop_signal=signal.SIGINT,  # PostgreSQL's fast shutdown
                stop_last=True,
            )
        )
        postgres.wait_ready(alive=lambda: self.supervisor.pid("postgres") is not None)

    def _wait_healthy(self, client: AirflowClient, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.supervisor.check_started()
            except ComponentExited as exc:
                raise AirflowError(f"airflow {exc}") from None
            try:
                health = client.health()
                if health.get("scheduler", {}).get("status") == "healthy":
                    # The api-server builds its Execution API on the first request to it (2.8 s on
                    # 2 quiet cores, 7 s loaded): paid here, not by the first task's start.
                    client.warm_execution_api()
                    return
            except (OSError, AirflowError):
                pass
            if time.monotonic() > deadline:
                raise AirflowError(
                    f"Airflow did not become healthy within {timeout}s; logs in {self.home}/logs"
                )
            time.sleep(0.5)

    def start_component(self, name: str, env: dict[str, str] | None = None) -> None:
        argv = [*self._airflow(), name]
        if name == "scheduler":
            # The api-server reads task logs from the files on this machine; a log server per
            # scheduler would only take a fixed port (8793) that parallel stacks fight over.
            argv.append("--skip-serve-logs")
        self.supervisor.start(
            Component(
                name,
                argv,
                env=env or self.env(),
                cwd=self.home,
                log=self._log(name),
                # LocalExecutor workers of a dead scheduler keep supervising their tasks; they are
                # ended once idle (their title then ends in "<idle>").
                drains="<idle>" if name == "scheduler" and "LocalExecutor" in self.executor else None,
            )
        )

    def check_alive(self) -> None:
        """Raise if a component has exited (and is not being restarted)."""
        try:
            self.supervisor.check_started()
        except ComponentExited as exc:
            raise AirflowError(f"airflow {exc}") from None

    def stop_component(self, name: str, grace: float = 15) -> None:
        """Stop one component for good, with every process it started."""
        self.supervisor.stop_component(name, grace)

    def stop(self) -> None:
        """Stop every component, then the database; the reaper ends whatever is left."""
        self.supervisor.stop()  # Dask's processes too: they are components of this stack
        if self.dask_cluster is not None:
            self.dask_cluster.stop()
        if self._reaper is not None:
            self._reaper.close()
            self._reaper = None
        self._postgres = None

    def __enter__(self) -> AirflowClient:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _log_line(line: Any) -> str:
    """One structured log record as the UI shows it: the event, then any exception it carries."""
    if not isinstance(line, dict):
        return str(line)
    text = str(line.get("event", ""))
    for error in line.get("error_detail") or []:
        text += f"\n{error.get('exc_type')}: {error.get('exc_value')}"
    return text


class AirflowClient:
    """A thin client of Airflow's public REST API (v2) with the simple auth manager."""

    def __init__(self, base_url: str, username: str, password: str):
        self.base_url = base_url.rstrip("/")
        self.username, self.password = username, password
        self._token: str | None = None

    # -- plumbing ------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: Any = None, auth: bool = True) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.base_url}{path}", data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if auth:
            req.add_header("Authorization", f"Bearer {self.token()}")
        try:
            # 90 s: a fresh api-server's first Execution API call (a task's start) held its one
            # worker for 40 s on a loaded 2-core machine; every other request waited behind it.
            with urllib.request.urlopen(req, timeout=90) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as err:
            if err.code == 401 and auth and self._token:
                self._token = None
                return self._request(method, path, body, auth)
            raise AirflowError(f"{method} {path}: HTTP {err.code}: {err.read().decode()[:500]}") from None
        return json.loads(raw) if raw else None

    def token(self) -> str:
        if self._token is None:
            answer = self._request(
                "POST", "/auth/token", {"username": self.username, "password": self.password}, auth=False
            )
            self._token = answer["access_token"]
        return self._token

    def get(self, path: str, **params: Any) -> Any:
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None}, doseq=True)
        return self._request("GET", f"/api/v2{path}" + (f"?{query}" if query else ""))

    def post(self, path: str, body: Any) -> Any:
        return self._request("POST", f"/api/v2{path}", body)

    def patch(self, path: str, body: Any) -> Any:
        return self._request("PATCH", f"/api/v2{path}", body)

    # -- Airflow objects -----------------------------------------------------------------
    def health(self) -> dict:
        return self._request("GET", "/api/v2/monitor/health", auth=False)

    def warm_execution_api(self) -> None:
        """One unauthenticated request to the Execution API, which the api-server builds lazily."""
        self._request("GET", "/execution/health", auth=False)

    def wait_for_dags(self, dag_ids: list[str], timeout: float = 120) -> None:
        """Wait until the dag-processor has parsed every DAG; fail fast on import errors."""
        deadline = time.monotonic() + timeout
        while True:
            errors = self.get("/importErrors")["import_errors"]
            if errors:
                detail = "; ".join(f"{e['filename']}: {e['stack_trace'][-400:]}" for e in errors)
                raise AirflowError(f"DAG import errors: {detail}")
            known = {d["dag_id"] for d in self.get("/dags", limit=100)["dags"]}
            if set(dag_ids) <= known:
                return
            if time.monotonic() > deadline:
                raise AirflowError(f"DAGs not parsed within {timeout}s: {sorted(set(dag_ids) - known)}")
            time.sleep(0.5)

    def unpause(self, dag_id: str) -> None:
        self.patch(f"/dags/{dag_id}", {"is_paused": False})

    def set_pool(self, name: str, slots: int, description: str = "") -> None:
        """Create the pool, or resize it if it exists (a restarted stack keeps its database)."""
        body = {"name": name, "slots": slots, "description": description, "include_deferred": False}
        existing = {p["name"] for p in self.get("/pools", limit=1000)["pools"]}
        if name in existing:
            self.patch(f"/pools/{name}", body)
        else:
            self.post("/pools", body)

    def trigger(
        self,
        dag_id: str,
        conf: dict | None = None,
        run_id: str | None = None,
        partition_key: str | None = None,
    ) -> str:
        body: dict[str, Any] = {"conf": conf or {}, "logical_date": None}
        if run_id:
            body["dag_run_id"] = run_id
        if partition_key:
            body["partition_key"] = partition_key
        return self.post(f"/dags/{dag_id}/dagRuns", body)["dag_run_id"]

    def dag_run(self, dag_id: str, run_id: str) -> dict:
        return self.get(f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}")

    def dag_runs(self, dag_id: str) -> list[dict]:
        return self.get(f"/dags/{dag_id}/dagRuns", order_by="-start_date", limit=100)["dag_runs"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        """Every task instance of a run, mapped ones individually."""
        quoted = urllib.parse.quote(run_id, safe="")
        out: list[dict] = []
        while True:
            page = self.get(f"/dags/{dag_id}/dagRuns/{quoted}/taskInstances", limit=100, offset=len(out))
            out.extend(page["task_instances"])
            if len(out) >= page["total_entries"] or not page["task_instances"]:
                return out

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int, map_index: int = -1) -> str:
        quoted = urllib.parse.quote(run_id, safe="")
        answer = self.get(
            f"/dags/{dag_id}/dagRuns/{quoted}/taskInstances/{task_id}/logs/{try_number}",
            map_index=map_index,
            full_content=True,
        )
        content = answer.get("content", "")
        if not isinstance(content, list):
            return str(content)
        return "\n".join(_log_line(line) for line in content)

    def wait_run(
        self,
        dag_id: str,
        run_id: str,
        timeout: float = 600,
        on_poll: Callable[[dict, list[dict]], None] | None = None,
        interval: float = 1.0,
    ) -> dict:
        """Poll a run until it ends; ``on_poll(run, task_instances)`` can show progress."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.dag_run(dag_id, run_id)
            if on_poll:
                on_poll(run, self.task_instances(dag_id, run_id))
            if run["state"] in TERMINAL_RUN_STATES:
                return run
            if time.monotonic() > deadline:
                raise AirflowError(f"{dag_id} {run_id} still {run['state']} after {timeout}s")
            time.sleep(interval)

    def wait_triggered_run(self, dag_id: str, after: str, timeout: float = 300) -> str:
        """The run id of the first asset-triggered run of ``dag_id`` queued after ``after`` (ISO time)."""
        deadline = time.monotonic() + timeout
        while True:
            runs = [
                r
                for r in self.dag_runs(dag_id)
                if r["run_type"] == "asset_triggered" and (r.get("queued_at") or "") > after
            ]
            if runs:
                return min(runs, key=lambda r: r["queued_at"])["dag_run_id"]
            if time.monotonic() > deadline:
                raise AirflowError(f"no asset-triggered run of {dag_id} after {after} within {timeout}s")
            time.sleep(1)
