"""A kubelet that really runs pods: each bound pod's first container becomes a local process.

Mapping from a container to a process (the image is recorded in the status, never pulled):

- argv is ``command + args`` with ``$(VAR)`` expanded from the container env; without ``command`` the
  image's entrypoint is taken to exec its args (as the Airflow image's does). An argv[0] of ``python``,
  ``python3`` or ``python3.X`` runs this repo's interpreter (``sys.executable``); anything else is looked
  up on ``PATH``.
- env: a minimal host env (``PATH`` with the venv's bin first, ``PYTHONPATH`` of the repo and
  ``plugins/``, ``HOME`` and cwd a per-pod directory, ``HOSTNAME`` the pod name), then the cluster's
  ``image_env`` (what an image would bake in), then the container's ``envFrom`` (ConfigMaps, with
  ``prefix``), then its ``env`` (``value``, ``fieldRef``, ``configMapKeyRef``), as the kubelet orders
  them. A missing ConfigMap or key that is not ``optional`` leaves the container in
  ``CreateContainerConfigError`` until the ConfigMap appears; Secrets are not served, so a Secret
  reference is skipped when ``optional`` and an error otherwise. Keys that are not valid variable
  names are skipped.
- stdout and stderr go to one log file, served by the pods/log endpoint.
- the process runs in its own session; every process of the container carries ``KUBESIM_CONTAINER_ID``
  in its env, so that killing a container kills all of it, even children that left the process group
  (the Airflow supervisor puts the task in a group of its own).
- only the first container runs (Airflow's ``base``) and only it has a status; init containers,
  volumes, volumeMounts, workingDir, probes and restartPolicy other than Never are not emulated: a
  container runs once.

Termination follows the kubelet: a graceful delete sends SIGTERM to the main process, SIGKILL to the
whole container after ``deletionGracePeriodSeconds``; the pod then reaches a terminal phase and the
kubelet removes it (DELETED). Exit codes: a signal N becomes 128+N (137 for SIGKILL).

Memory limits are enforced as the kernel does (``memory.py``): past its limit, the container's
largest process is SIGKILLed (PID 1 lives on unless it is the largest), or every process with
``oom_group_kill`` (cgroup v2 ``memory.oom.group``); the container then ends with reason
``OOMKilled`` and its main process's exit code, as the runtime reports an OOM event. A container
that exits non-zero with ``terminationMessagePolicy: FallbackToLogsOnError`` gets the tail of its
output (80 lines, 2 KiB) as its termination message; ``terminationMessagePath`` files are not
emulated (a process cannot be given its own /dev/termination-log here).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from kubernetes.utils import parse_quantity

from tests.kubesim import memory
from tests.kubesim.objects import (
    ApiError,
    event_object,
    image_id,
    new_uid,
    set_condition,
    timestamp,
)
from tests.kubesim.store import Change, Store

REPO_ROOT = Path(__file__).resolve().parents[2]
CONTAINER_ID_ENV = "KUBESIM_CONTAINER_ID"
CLUSTER_ID_ENV = "KUBESIM_CLUSTER_ID"
_PYTHON_RE = re.compile(r"^python(\d(\.\d+)?)?$")
_VAR_REF_RE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
# What the kubelet accepts as an environment variable name from a ConfigMap key.
_ENV_NAME_RE = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
# The kubelet's FallbackToLogsOnError reads at most this much of the log's tail.
TERMINATION_LOG_LINES = 80
TERMINATION_LOG_BYTES = 2048
ConfigMapLookup = Callable[[str, str], "dict[str, Any] | None"]  # (namespace, name) -> ConfigMap


class ContainerConfigError(Exception):
    """The container cannot be created from its spec (kubelet reason CreateContainerConfigError)."""


@dataclass
class Container:
    """A pod's running main container."""

    namespace: str
    pod_name: str
    pod_uid: str
    node_name: str
    name: str
    image: str
    container_id: str
    process: subprocess.Popen[bytes]
    log_path: Path
    started_at: float
    memory_limit: int | None = None  # bytes (resources.limits.memory)
    message_from_logs: bool = False  # terminationMessagePolicy: FallbackToLogsOnError
    oom_killed: bool = False  # the OOM killer acted on this container (the runtime's OOM event)
    sigkill_at: float | None = None  # after a SIGTERM: when the grace period ends
    exit_code: int | None = None
    finished_at: float | None = None


def expand_references(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion in command, args and env values; ``$$`` escapes."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _VAR_REF_RE.sub(replace, text)


def field_ref_value(pod: dict[str, Any], field_path: str) -> str:
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
    if match := re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", field_path):
        return (meta.get(match.group(1)) or {}).get(match.group(2), "")
    values = {
        "metadata.name": meta["name"],
        "metadata.namespace": meta["namespace"],
        "metadata.uid": meta["uid"],
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.hostIP": status.get("hostIP", "127.0.0.1"),
        "status.podIP": status.get("podIP", "127.0.0.1"),
    }
    if field_path not in values:
        raise ContainerConfigError(f"unsupported fieldRef {field_path!r}")
    return values[field_path]


def container_env(
    pod: dict[str, Any],
    container: dict[str, Any],
    base: dict[str, str],
    config_maps: ConfigMapLookup = lambda namespace, name: None,
) -> dict[str, str]:
    """The container's environment: ``base``, then ``envFrom`` in order, then ``env`` (later wins)."""
    env = dict(base)
    namespace = pod["metadata"]["namespace"]
    for source in container.get("envFrom") or []:
        if "configMapRef" in source:
            ref = source["configMapRef"]
            config_map = config_maps(namespace, ref.get("name", ""))
            if config_map is None:
                if ref.get("optional"):
                    continue
                raise ContainerConfigError(f'configmap "{ref.get("name")}" not found')
            prefix = source.get("prefix", "")
            for key, value in (config_map.get("data") or {}).items():
                if _ENV_NAME_RE.match(prefix + key):
                    env[prefix + key] = value
        elif "secretRef" in source:
            if not source["secretRef"].get("optional"):  # the harness serves no Secrets
                raise ContainerConfigError(f'secret "{source["secretRef"].get("name")}" not found')
        else:
            raise ContainerConfigError(f"unsupported envFrom source: {sorted(source)}")
    for variable in container.get("env") or []:
        name = variable["name"]
        if "valueFrom" in variable:
            source = variable["valueFrom"]
            if "fieldRef" in source:
                env[name] = field_ref_value(pod, source["fieldRef"]["fieldPath"])
            elif "configMapKeyRef" in source:
                value = config_map_key(namespace, source["configMapKeyRef"], config_maps)
                if value is not None:
                    env[name] = value
            elif "secretKeyRef" in source:
                if not source["secretKeyRef"].get("optional"):
                    raise ContainerConfigError(f'secret "{source["secretKeyRef"].get("name")}" not found')
            else:
                raise ContainerConfigError(f"unsupported valueFrom for {name}: {sorted(source)}")
        else:
            env[name] = expand_references(str(variable.get("value", "")), env)
    return env


def config_map_key(namespace: str, ref: dict[str, Any], config_maps: ConfigMapLookup) -> str | None:
    """A ``configMapKeyRef``'s value; None when it is optional and missing."""
    name, key = ref.get("name", ""), ref.get("key", "")
    config_map = config_maps(namespace, name)
    if config_map is None:
        if ref.get("optional"):
            return None
        raise ContainerConfigError(f'configmap "{name}" not found')
    data = config_map.get("data") or {}
    if key not in data:
        if ref.get("optional"):
            return None
        raise ContainerConfigError(f"couldn't find key {key} in ConfigMap {namespace}/{name}")
    return data[key]


def container_argv(container: dict[str, Any], env: dict[str, str], python: str) -> list[str]:
    argv = [
        expand_references(str(part), env)
        for part in (container.get("command") or []) + (container.get("args") or [])
    ]
    if not argv:
        raise ContainerConfigError("no command or args: the harness cannot run an image's default command")
    if _PYTHON_RE.match(argv[0]):
        argv[0] = python
    return argv


def exit_code_of(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def processes_marked(variable: str, value: str) -> list[psutil.Process]:
    """Live processes whose env has ``variable=value``: how the harness finds a container's processes."""
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if process.environ().get(variable) == value:
                found.append(process)
    return found


def log_tail(path: Path) -> str | None:
    """The end of a container's log, as FallbackToLogsOnError makes it the termination message."""
    try:
        with path.open("rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - TERMINATION_LOG_BYTES))
            tail = log.read()
    except OSError:
        return None
    lines = tail.decode(errors="replace").splitlines()[-TERMINATION_LOG_LINES:]
    return "\n".join(lines) or None


def kill_container_processes(container_id: str, main: subprocess.Popen[bytes] | None = None) -> None:
    """SIGKILL a whole container, as the runtime does when its PID 1 dies or its cgroup is killed."""
    if main is not None and main.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(main.pid, signal.SIGKILL)
    for process in processes_marked(CONTAINER_ID_ENV, container_id):
        with contextlib.suppress(psutil.Error):
            process.kill()


class Kubelet:
    """Runs the pods bound to ready nodes. Lives on the harness's event loop."""

    def __init__(
        self,
        store: Store,
        workdir: Path,
        *,
        python: str = sys.executable,
        image_env: dict[str, str] | None = None,
        start_delay: float = 0.0,
        cluster_id: str = "",
        oom_group_kill: bool = False,
        memory_check_interval: float = 0.2,
    ):
        self.store = store
        self.workdir = Path(workdir)
        self.python = python
        self.image_env = dict(image_env or {})
        self.start_delay = start_delay
        self.cluster_id = cluster_id
        self.oom_group_kill = oom_group_kill
        self.memory_check_interval = memory_check_interval
        self._next_memory_check = 0.0
        self.containers: dict[str, Container] = {}  # by pod uid
        self.log_paths: dict[str, Path] = {}  # by pod uid, kept after the pod is gone
        self._creating: dict[str, float] = {}  # pod uid -> when its container may start
        self._config_errors: set[str] = set()  # pod uids waiting in CreateContainerConfigError
        self._held = 0
        self._down_nodes: set[str] = set()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    # --- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.store.subscribe(self._on_change)
        self._task = asyncio.create_task(self._run(), name="kubesim-kubelet")

    async def stop(self) -> None:
        # A stop flag, not Task.cancel(): Python 3.11's wait_for can swallow a cancellation.
        self.store.unsubscribe(self._on_change)
        self._stopping = True
        self._wake.set()
        if self._task:
            await self._task
        self.kill_all()

    def kill_all(self) -> None:
        """SIGKILL every container this kubelet started, including processes that left their group."""
        for container in self.containers.values():
            kill_container_processes(container.container_id, container.process)
        for container in self.containers.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                container.process.wait(timeout=5)
        if self.cluster_id:
            for process in processes_marked(CLUSTER_ID_ENV, self.cluster_id):
                with contextlib.suppress(psutil.Error):
                    process.kill()

    @contextlib.contextmanager
    def held(self) -> Generator[None, None, None]:
        """Containers do not start while held: pods stay Pending in ContainerCreating."""
        self._held += 1
        try:
            yield
        finally:
            self._held -= 1
            self.wake()

    def wake(self) -> None:
        if self._loop:
            self._loop.call_soon_threadsafe(self._wake.set)

    def _on_change(self, change: Change) -> None:
        if change.kind == "ConfigMap" and self._loop:
            self._loop.call_soon_threadsafe(self._retry_config_errors)
        elif change.kind in ("Pod", "Node"):
            self.wake()

    def _retry_config_errors(self) -> None:
        """As the kubelet's periodic sync: a pod waiting for a ConfigMap may start now."""
        for uid in self._config_errors:
            self._creating[uid] = time.time()
        self._config_errors.clear()
        self._wake.set()

    def forget_pending(self, pod_uid: str) -> None:
        """Drop a pod whose container has not started yet (a fault took the pod over)."""
        self._creating.pop(pod_uid, None)
        self._config_errors.discard(pod_uid)

    def node_down(self, node_name: str) -> None:
        """The kubelet of this node stops: no starts, no status updates, no final deletions."""
        self._down_nodes.add(node_name)

    def node_up(self, node_name: str) -> None:
        self._down_nodes.discard(node_name)
        self.wake()

    async def _run(self) -> None:
        last_error = ""
        while not self._stopping:
            woken = False
            with contextlib.suppress(TimeoutError):
                # Wake on changes; poll often enough to see processes exit promptly.
                await asyncio.wait_for(self._wake.wait(), timeout=0.05)
                woken = True
            if self._stopping:
                break
            self._wake.clear()
            try:
                now = time.time()
                if now >= self._next_memory_check:
                    self._next_memory_check = now + self.memory_check_interval
                    self.enforce_memory_limits()
                if woken or self._due(now):
                    self.sync()
            except Exception as error:  # keep the kubelet alive; a test will see the pod stuck
                if repr(error) != last_error:
                    last_error = repr(error)
                    print(f"kubesim kubelet: sync failed: {error!r}", file=sys.stderr)

    # --- the sync loop ---------------------------------------------------------------------------------

    def _due(self, now: float) -> bool:
        """Whether time alone calls for a sync: a process exited, or a start or a SIGKILL is due."""
        for container in self.containers.values():
            if container.exit_code is None and (
                container.process.poll() is not None
                or (container.sigkill_at is not None and now >= container.sigkill_at)
            ):
                return True
        return not self._held and any(now >= start for start in self._creating.values())

    def enforce_memory_limits(self) -> None:
        """The kernel's part: a container past its memory limit loses its largest process (or all)."""
        for container in self.containers.values():
            if (
                container.memory_limit is None
                or container.exit_code is not None
                or container.node_name in self._down_nodes
                or container.process.poll() is not None
            ):
                continue
            if memory.over_limit(container.process.pid, container.memory_limit):
                self.oom_kill(container)

    def oom_kill(self, container: Container) -> None:
        container.oom_killed = True
        memory.oom_kill(container.process.pid, group=self.oom_group_kill)

    def sync(self) -> None:
        pods, _ = self.store.list("Pod")
        now = time.time()
        live_uids = set()
        for pod in pods:
            meta, spec = pod["metadata"], pod["spec"]
            live_uids.add(meta["uid"])
            node_name = spec.get("nodeName")
            if not node_name or node_name in self._down_nodes:
                continue
            container = self.containers.get(meta["uid"])
            if meta.get("deletionTimestamp"):
                self._terminate(pod, container, now)
            elif container is None and pod["status"].get("phase") == "Pending":
                self._advance_pending(pod, now)
        for uid, container in list(self.containers.items()):
            if container.node_name in self._down_nodes:
                continue
            if container.exit_code is None and container.process.poll() is not None:
                self._on_exit(container)
            if uid not in live_uids:  # force-deleted: the kubelet kills what is left
                if container.exit_code is None:
                    kill_container_processes(container.container_id, container.process)
                    continue
                del self.containers[uid]
        for uid in list(self._creating):
            if uid not in live_uids:
                del self._creating[uid]
        self._config_errors &= live_uids

    def _advance_pending(self, pod: dict[str, Any], now: float) -> None:
        uid = pod["metadata"]["uid"]
        if uid not in self._creating:
            self._creating[uid] = now + self.start_delay
            self._update_status(pod, self._creating_status)
        if self._held or now < self._creating[uid]:
            return
        self._start_container(pod)

    def _creating_status(self, pod: dict[str, Any]) -> None:
        status = pod["status"]
        status.update(
            hostIP="127.0.0.1",
            hostIPs=[{"ip": "127.0.0.1"}],
            podIP="127.0.0.1",
            podIPs=[{"ip": "127.0.0.1"}],
            startTime=timestamp(),
        )
        set_condition(status, "PodReadyToStartContainers", "True")
        set_condition(status, "Initialized", "True")
        set_condition(
            status, "Ready", "False", "ContainersNotReady", "containers with unready status: [base]"
        )
        set_condition(
            status, "ContainersReady", "False", "ContainersNotReady", "containers with unready status: [base]"
        )
        main = pod["spec"]["containers"][0]
        status["containerStatuses"] = [
            self._container_status(main, state={"waiting": {"reason": "ContainerCreating"}})
        ]

    @staticmethod
    def _container_status(
        container: dict[str, Any],
        *,
        state: dict[str, Any],
        container_id: str | None = None,
        ready: bool = False,
        started: bool = False,
    ) -> dict[str, Any]:
        status = {
            "name": container["name"],
            "image": container["image"],
            "imageID": image_id(container["image"]) if container_id else "",
            "ready": ready,
            "restartCount": 0,
            "started": started,
            "state": state,
            "lastState": {},
        }
        if container_id:
            status["containerID"] = container_id
        return status

    def _start_container(self, pod: dict[str, Any]) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        uid = meta["uid"]
        del self._creating[uid]
        main = spec["containers"][0]  # the harness runs one container per pod: Airflow's "base"
        pod_dir = self.workdir / "pods" / f"{meta['namespace']}.{meta['name']}.{uid[:8]}"
        home = pod_dir / "home"
        home.mkdir(parents=True, exist_ok=True)
        log_path = pod_dir / f"{main['name']}.log"
        container_id = f"containerd://{new_uid().replace('-', '')}"
        host_env = {
            "PATH": os.pathsep.join([str(Path(self.python).parent), "/usr/local/bin", "/usr/bin", "/bin"]),
            "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "plugins"), str(REPO_ROOT)]),
            "HOME": str(home),
            "HOSTNAME": meta["name"],
            "LANG": "C.UTF-8",
            **self.image_env,
        }
        try:
            env = container_env(pod, main, host_env, self._config_map)
            argv = container_argv(main, env, self.python)
        except ContainerConfigError as error:
            self._fail_config(pod, main, str(error))
            return
        env[CONTAINER_ID_ENV] = container_id
        env[CLUSTER_ID_ENV] = self.cluster_id
        self.log_paths[uid] = log_path
        self._event(pod, "Pulled", f'Container image "{main["image"]}" already present on machine', main)
        try:
            with log_path.open("ab") as log:
                process = subprocess.Popen(
                    argv,
                    cwd=home,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        except OSError as error:
            self._fail_start(pod, main, container_id, str(error))
            return
        limit = ((main.get("resources") or {}).get("limits") or {}).get("memory")
        container = Container(
            namespace=meta["namespace"],
            pod_name=meta["name"],
            pod_uid=uid,
            node_name=spec["nodeName"],
            name=main["name"],
            image=main["image"],
            container_id=container_id,
            process=process,
            log_path=log_path,
            started_at=time.time(),
            memory_limit=int(parse_quantity(limit)) if limit else None,
            message_from_logs=main.get("terminationMessagePolicy") == "FallbackToLogsOnError",
        )
        self.containers[uid] = container
        self._event(pod, "Created", f"Created container: {main['name']}", main)
        self._event(pod, "Started", f"Started container {main['name']}", main)

        def running(obj: dict[str, Any]) -> None:
            status = obj["status"]
            status["phase"] = "Running"
            set_condition(status, "Ready", "True")
            set_condition(status, "ContainersReady", "True")
            status["containerStatuses"] = [
                self._container_status(
                    main,
                    state={"running": {"startedAt": timestamp(container.started_at)}},
                    container_id=container_id,
                    ready=True,
                    started=True,
                )
            ]

        self._update_status(pod, running)

    def _config_map(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.store.find("ConfigMap", namespace, name)

    def _fail_config(self, pod: dict[str, Any], main: dict[str, Any], message: str) -> None:
        """As the kubelet: the pod stays Pending, its container waiting with the error as reason."""
        # Retried when a ConfigMap changes (the only thing here that can fix it).
        self._creating[pod["metadata"]["uid"]] = float("inf")
        self._config_errors.add(pod["metadata"]["uid"])

        def waiting(obj: dict[str, Any]) -> None:
            obj["status"]["containerStatuses"] = [
                self._container_status(
                    main, state={"waiting": {"reason": "CreateContainerConfigError", "message": message}}
                )
            ]

        self._update_status(pod, waiting)
        self._event(pod, "Failed", f"Error: {message}", main, "Warning")

    def _fail_start(self, pod: dict[str, Any], main: dict[str, Any], container_id: str, message: str) -> None:
        now = timestamp()
        self._event(pod, "Failed", f"Error: failed to start container: {message}", main, "Warning")

        def failed(obj: dict[str, Any]) -> None:
            self._terminal_status(
                obj,
                main,
                container_id,
                exit_code=128,
                reason="StartError",
                message=message,
                started_at=now,
                finished_at=now,
            )

        self._update_status(pod, failed)

    def _terminal_status(
        self,
        pod: dict[str, Any],
        main: dict[str, Any],
        container_id: str,
        *,
        exit_code: int,
        reason: str,
        started_at: str,
        finished_at: str,
        message: str | None = None,
    ) -> None:
        status = pod["status"]
        status["phase"] = "Succeeded" if exit_code == 0 else "Failed"
        pod_reason = "PodCompleted" if exit_code == 0 else "PodFailed"
        set_condition(status, "Ready", "False", pod_reason)
        set_condition(status, "ContainersReady", "False", pod_reason)
        set_condition(status, "PodReadyToStartContainers", "False")
        terminated = {
            "exitCode": exit_code,
            "reason": reason,
            "startedAt": started_at,
            "finishedAt": finished_at,
            "containerID": container_id,
        }
        if message:
            terminated["message"] = message
        status["containerStatuses"] = [
            self._container_status(main, state={"terminated": terminated}, container_id=container_id)
        ]

    def _on_exit(self, container: Container) -> None:
        """The main process ended: the runtime kills the rest of the container, the kubelet reports it."""
        kill_container_processes(container.container_id)
        container.exit_code = exit_code_of(container.process.returncode)
        container.finished_at = time.time()
        # An OOM event in the container's cgroup makes the reason OOMKilled, whatever PID 1 exited with.
        reason = "Completed" if container.exit_code == 0 else "Error"
        if container.oom_killed:
            reason = "OOMKilled"
        message = None
        if container.exit_code and container.message_from_logs:
            message = log_tail(container.log_path)
        pod = self.store.find("Pod", container.namespace, container.pod_name)
        if pod is None or pod["metadata"]["uid"] != container.pod_uid:
            return
        main = pod["spec"]["containers"][0]

        def terminated(obj: dict[str, Any]) -> None:
            self._terminal_status(
                obj,
                main,
                container.container_id,
                exit_code=container.exit_code or 0,
                reason=reason,
                message=message,
                started_at=timestamp(container.started_at),
                finished_at=timestamp(container.finished_at),
            )

        self._update_status(pod, terminated)

    def _terminate(self, pod: dict[str, Any], container: Container | None, now: float) -> None:
        """A pod being deleted: stop its container within the grace period, then remove the pod."""
        if container is not None and container.exit_code is None:
            grace = int(pod["metadata"].get("deletionGracePeriodSeconds") or 0)
            if container.sigkill_at is None:
                container.sigkill_at = now + grace
                self._event(
                    pod, "Killing", f"Stopping container {container.name}", pod["spec"]["containers"][0]
                )
                with contextlib.suppress(ProcessLookupError):
                    container.process.send_signal(signal.SIGTERM if grace else signal.SIGKILL)
            elif now >= container.sigkill_at:
                kill_container_processes(container.container_id, container.process)
            elif now + grace < container.sigkill_at:  # a second delete asked for a shorter grace period
                container.sigkill_at = now + grace
            return  # the exit is reported by the next sync, then the pod is removed
        self._creating.pop(pod["metadata"]["uid"], None)
        with contextlib.suppress(ApiError):
            self.store.delete("Pod", pod["metadata"]["namespace"], pod["metadata"]["name"])

    # --- helpers ---------------------------------------------------------------------------------------

    def _update_status(self, pod: dict[str, Any], mutate: Any) -> None:
        meta = pod["metadata"]

        def guarded(obj: dict[str, Any]) -> None:
            if obj["metadata"]["uid"] == meta["uid"]:
                mutate(obj)

        with contextlib.suppress(ApiError):
            self.store.update("Pod", meta["namespace"], meta["name"], guarded)

    def _event(
        self,
        pod: dict[str, Any],
        reason: str,
        message: str,
        container: dict[str, Any],
        event_type: str = "Normal",
    ) -> None:
        self.store.create(
            event_object(
                pod,
                reason=reason,
                message=message,
                event_type=event_type,
                component="kubelet",
                host=pod["spec"].get("nodeName"),
                field_path=f"spec.containers{{{container['name']}}}",
            )
        )
