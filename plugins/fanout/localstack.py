"""The embedded default: real Airflow components on one machine, and a small REST client.

``AirflowStack`` runs the api-server, scheduler and dag-processor (LocalExecutor, SQLite
unless a database URI is given) from a private AIRFLOW_HOME, each in its own process group
so ``stop()`` ends them and every task process they started. With ``dask=True`` it first
starts a real Dask scheduler and workers beside them (``fanout.localdask``) and gives every
component, and so every task, ``DASK_SCHEDULER_ADDRESS``; ``stop()`` stops Dask last. ``AirflowClient`` talks to the
public REST API (``/api/v2``) the way the web UI does; tests and the demo use it instead of
the CLI, which costs seconds of imports per call.

Used by ``make demo`` / ``make up`` (see ``fanout.demo``) and the end-to-end tests.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fanout.localdask import LocalDaskCluster

PROJECT_ROOT = Path(__file__).resolve().parents[2]
ADMIN_USER = "admin"
TERMINAL_RUN_STATES = {"success", "failed"}
COMPONENTS = ("api-server", "scheduler", "dag-processor")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class AirflowError(RuntimeError):
    """A component did not start, or the REST API answered with an error."""


@dataclass
class AirflowStack:
    """Airflow's components as local processes sharing one AIRFLOW_HOME."""

    home: Path
    dags_folder: Path = PROJECT_ROOT / "dags"
    port: int = 0
    # Airflow's LocalExecutor with each task's size as a memory budget (README "The local stack's
    # memory budgets"); "LocalExecutor" runs tasks without budgets.
    executor: str = "fanout.local_executor.FanoutLocalExecutor"
    parallelism: int = 0
    """LocalExecutor worker processes; 0 means one per CPU core."""
    database_uri: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    components: tuple[str, ...] = COMPONENTS
    dask: bool = False
    """Run a local Dask scheduler and workers for the preprocessing tasks (fanout.localdask)."""
    dask_workers: int = 0
    """Dask worker processes; 0 means one per CPU."""
    dask_cluster: LocalDaskCluster | None = field(default=None, init=False, repr=False)
    _procs: dict[str, subprocess.Popen] = field(default_factory=dict, init=False, repr=False)

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

    # -- configuration -----------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def password_file(self) -> Path:
        return self.home / "simple_auth_manager_passwords.json.generated"

    def _secrets(self) -> dict[str, str]:
        """Per-home secrets, generated once: a restarted stack keeps its tokens and password."""
        path = self.home / "fanout-secrets.json"
        if path.exists():
            return json.loads(path.read_text())
        from cryptography.fernet import Fernet

        values = {
            "fernet_key": Fernet.generate_key().decode(),
            # >= 64 bytes: shorter generated secrets trigger PyJWT key-length warnings.
            "jwt_secret": secrets.token_urlsafe(64),
            "api_secret_key": secrets.token_urlsafe(32),
            "admin_password": secrets.token_urlsafe(12),
        }
        path.write_text(json.dumps(values))
        path.chmod(0o600)
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
            # holding the executor slot (5 s by default, bench/README.md); 1 s bounds that.
            "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
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
        env.update(self.extra_env)
        return env

    # -- lifecycle -----------------------------------------------------------------------
    def _airflow(self) -> list[str]:
        return [sys.executable, "-m", "airflow"]

    def migrate(self) -> None:
        log = self.home / "logs" / "db-migrate.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as out:
            done = subprocess.run(
                [*self._airflow(), "db", "migrate"], env=self.env(), stdout=out, stderr=subprocess.STDOUT
            )
        if done.returncode:
            raise AirflowError(f"airflow db migrate failed (exit {done.returncode}); see {log}")

    def start(self, timeout: float = 120) -> AirflowClient:
        """Migrate the database, start the components and wait until the API answers."""
        # The simple auth manager keeps the password it finds in this file.
        self.password_file.write_text(json.dumps({ADMIN_USER: self._secrets()["admin_password"]}))
        if self.dask_cluster is not None:
            self.dask_cluster.start()
        try:
            self.migrate()
        except BaseException:
            self.stop()
            raise
        env = self.env()
        for name in self.components:
            self.start_component(name, env)
        client = AirflowClient(self.base_url, ADMIN_USER, self._secrets()["admin_password"])
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            try:
                health = client.health()
                if health.get("scheduler", {}).get("status") == "healthy":
                    return client
            except (OSError, AirflowError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AirflowError(
                    f"Airflow did not become healthy within {timeout}s; logs in {self.home}/logs"
                )
            time.sleep(0.5)

    def start_component(self, name: str, env: dict[str, str] | None = None) -> None:
        log = (self.home / "logs" / f"{name}.log").open("a")
        # Own process group: stopping the group also stops LocalExecutor workers and their
        # task processes, which ignore a SIGTERM sent to the parent alone.
        self._procs[name] = subprocess.Popen(
            [*self._airflow(), name],
            env=env or self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=self.home,
        )

    def check_alive(self) -> None:
        for name, proc in self._procs.items():
            if proc.poll() is not None:
                log = self.home / "logs" / f"{name}.log"
                tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-3:])
                raise AirflowError(f"airflow {name} exited with {proc.returncode}; see {log}:\n{tail}")

    def stop_component(self, name: str, grace: float = 15) -> None:
        proc = self._procs.pop(name, None)
        if proc is None:
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(wait)
                # The leader is gone; its group may still hold task processes.
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
            break

    def stop(self) -> None:
        for name in reversed(list(self._procs)):
            self.stop_component(name)
        if self.dask_cluster is not None:
            self.dask_cluster.stop()  # after Airflow: no task is left to use it

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
            with urllib.request.urlopen(req, timeout=30) as resp:
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

    def trigger(self, dag_id: str, conf: dict | None = None, run_id: str | None = None) -> str:
        body: dict[str, Any] = {"conf": conf or {}, "logical_date": None}
        if run_id:
            body["dag_run_id"] = run_id
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
