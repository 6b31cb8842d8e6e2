"""The local cluster: API server, scheduler and kubelet on one event loop in a background thread.

    with Cluster(workdir=tmp_path) as cluster:            # default nodes: cpu-node-1, cpu-node-2, gpu-node-1
        v1 = cluster.core_v1()                            # a kubernetes client from the kubeconfig
        cluster.kubeconfig_path                           # for Airflow's [kubernetes_executor] config_file
        cluster.wait_for_pod("p", phase="Succeeded")
        cluster.record("p").node, cluster.capacity_history("gpu-node-1"), cluster.logs("p")
        cluster.faults.oom_kill("p")

Stopping kills every pod process (whole containers, including processes that left their group).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Generator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import yaml
from aiohttp import web

from tests.kubesim.api import ApiServer
from tests.kubesim.faults import Faults
from tests.kubesim.kubelet import CLUSTER_ID_ENV, Kubelet, processes_marked
from tests.kubesim.objects import NodeSpec, default_nodes, namespace_object, node_object
from tests.kubesim.records import CapacitySample, PodRecord, Recorder
from tests.kubesim.scheduler import Scheduler
from tests.kubesim.selectors import parse_label_selector
from tests.kubesim.store import Store

T = TypeVar("T")


class Cluster:
    def __init__(
        self,
        nodes: list[NodeSpec] | None = None,
        *,
        namespace: str = "default",
        workdir: Path | str | None = None,
        image_env: dict[str, str] | None = None,
        container_start_delay: float = 0.0,
        python: str = sys.executable,
        history_limit: int = 1000,
        port: int = 0,
        oom_group_kill: bool = False,
    ):
        """
        :param nodes: simulated nodes (default: two CPU nodes and one GPU node)
        :param namespace: created with default, kube-system and kube-public; the default for helpers
        :param workdir: per-pod directories and logs, and the kubeconfig (default: a temporary directory)
        :param image_env: env every container gets under its own (what an image would bake in)
        :param container_start_delay: seconds from binding to process start (image pull, container create)
        :param python: the interpreter that runs ``python ...`` containers
        :param history_limit: changes kept for watch resumption; older resourceVersions get 410 Gone
        :param port: 0 for a free port
        :param oom_group_kill: a container past its memory limit loses every process, as on cgroup v2
            nodes with ``memory.oom.group`` (Kubernetes >= 1.28); default: its largest process only, as
            on cgroup v1 nodes
        """
        self.node_specs = list(nodes) if nodes is not None else default_nodes()
        self.namespace = namespace
        self._tempdir = tempfile.TemporaryDirectory(prefix="kubesim-") if workdir is None else None
        self.workdir = Path(workdir or self._tempdir.name)  # type: ignore[union-attr]
        self.id = uuid.uuid4().hex
        self.store = Store(history_limit=history_limit)
        self.recorder = Recorder(self.store)
        self.scheduler = Scheduler(self.store)
        self.kubelet = Kubelet(
            self.store,
            self.workdir,
            python=python,
            image_env=image_env,
            start_delay=container_start_delay,
            cluster_id=self.id,
            oom_group_kill=oom_group_kill,
        )
        self.api = ApiServer(self.store, self.kubelet.log_paths.get)
        self.faults = Faults(self)
        self._port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""
        self.kubeconfig_path = self.workdir / "kubeconfig.yaml"

    # --- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> Cluster:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for name in dict.fromkeys(["default", "kube-system", "kube-public", self.namespace]):
            self.store.create(namespace_object(name))
        for spec in self.node_specs:
            self.store.create(node_object(spec))
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self._port))
        self.url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        self._loop = asyncio.new_event_loop()
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._serve, args=(listener, started), name="kubesim", daemon=True
        )
        self._thread.start()
        started.result(timeout=30)
        self.write_kubeconfig(self.kubeconfig_path)
        return self

    def _serve(self, listener: socket.socket, started: concurrent.futures.Future[None]) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)

        async def start_components() -> None:
            # Client disconnects cancel their handler, which ends the watch and drops its subscription.
            self._runner = web.AppRunner(
                self.api.app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0
            )
            await self._runner.setup()
            await web.SockSite(self._runner, listener).start()
            self.scheduler.start()
            self.kubelet.start()

        try:
            self._loop.run_until_complete(start_components())
        except BaseException as error:
            started.set_exception(error)
            return
        started.set_result(None)
        self._loop.run_forever()
        self._loop.close()

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return

        async def stop_components() -> None:
            self.api.close_watches()
            await self.scheduler.stop()
            await self.kubelet.stop()
            if self._runner:
                await self._runner.cleanup()

        try:
            asyncio.run_coroutine_threadsafe(stop_components(), self._loop).result(timeout=30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop = None
            # Whatever escaped (a process that outlived its container), nothing outlives the cluster.
            for process in processes_marked(CLUSTER_ID_ENV, self.id):
                process.kill()
            if self._tempdir is not None:
                self._tempdir.cleanup()

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def call(self, function: Callable[[], T], timeout: float = 30) -> T:
        """Run ``function`` on the cluster's event loop (where the kubelet and scheduler live)."""
        if self._loop is None:
            raise RuntimeError("the cluster is not running")
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(function())
            except BaseException as error:
                done.set_exception(error)

        self._loop.call_soon_threadsafe(run)
        return done.result(timeout=timeout)

    # --- clients ---------------------------------------------------------------------------------------

    def kubeconfig(self) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kubesim", "cluster": {"server": self.url}}],
            "users": [{"name": "kubesim", "user": {}}],
            "contexts": [
                {
                    "name": "kubesim",
                    "context": {"cluster": "kubesim", "user": "kubesim", "namespace": self.namespace},
                }
            ],
            "current-context": "kubesim",
            "preferences": {},
        }

    def write_kubeconfig(self, path: Path | str) -> Path:
        path = Path(path)
        path.write_text(yaml.safe_dump(self.kubeconfig(), sort_keys=False))
        return path

    def api_client(self) -> Any:
        """A `kubernetes.client.ApiClient` configured from this cluster's kubeconfig, as Airflow does."""
        from kubernetes import client, config

        configuration = client.Configuration()
        config.load_kube_config(config_file=str(self.kubeconfig_path), client_configuration=configuration)
        return client.ApiClient(configuration)

    def core_v1(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self.api_client())

    # --- inspection ------------------------------------------------------------------------------------

    def pod(self, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """The pod as the API serves it now, or None once deleted."""
        return self.store.find("Pod", namespace or self.namespace, name)

    def pods(self, namespace: str | None = None, label_selector: str | None = None) -> list[dict[str, Any]]:
        selector = parse_label_selector(label_selector)
        items, _ = self.store.list("Pod", namespace, lambda p: selector.matches(p["metadata"].get("labels")))
        return items

    def node(self, name: str) -> dict[str, Any]:
        return self.store.get("Node", None, name)

    def events(self, *, reason: str | None = None, involved: str | None = None) -> list[dict[str, Any]]:
        """Events, oldest first, optionally of one reason and about one object (by name)."""
        items, _ = self.store.list(
            "Event",
            where=lambda e: (
                (reason is None or e["reason"] == reason)
                and (involved is None or e["involvedObject"]["name"] == involved)
            ),
        )
        return items

    @property
    def records(self) -> list[PodRecord]:
        """Every pod ever created, deleted or not, in creation order."""
        return self.recorder.records

    def record(self, name: str, namespace: str | None = None) -> PodRecord:
        """The latest pod of that name, deleted or not."""
        namespace = namespace or self.namespace
        for record in reversed(self.records):
            if record.name == name and record.namespace == namespace:
                return record
        raise KeyError(f"no pod {namespace}/{name} was ever created")

    def capacity_history(self, node: str | None = None) -> list[CapacitySample]:
        return [sample for sample in list(self.recorder.capacity) if node is None or sample.node == node]

    def logs(self, name: str, namespace: str | None = None) -> str:
        """The pod's container output, kept after the pod is deleted (unlike the API's)."""
        path = self.kubelet.log_paths.get(self.record(name, namespace).uid)
        return path.read_text(errors="replace") if path and path.exists() else ""

    def pod_processes(self) -> list[Any]:
        """Live processes started for this cluster's pods (psutil), for leak checks."""
        return processes_marked(CLUSTER_ID_ENV, self.id)

    @contextmanager
    def containers_held(self) -> Generator[None, None, None]:
        """While held, bound pods stay Pending (ContainerCreating): to act on pods before they start."""
        with self.kubelet.held():
            yield

    def wait_for(self, condition: Callable[[], T], timeout: float = 10.0, message: str = "") -> T:
        deadline = time.monotonic() + timeout
        while True:
            if result := condition():
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(message or f"condition not met within {timeout}s")
            time.sleep(0.02)

    def wait_for_pod(
        self, name: str, *, phase: str | None = None, namespace: str | None = None, timeout: float = 10.0
    ) -> dict[str, Any]:
        """Wait until the pod exists (and has ``phase``); returns it."""

        def reached() -> dict[str, Any] | None:
            pod = self.pod(name, namespace)
            return pod if pod and (phase is None or pod["status"].get("phase") == phase) else None

        return self.wait_for(
            reached,
            timeout,
            f"pod {name} did not reach phase {phase} within {timeout}s: {self.pod(name, namespace)}",
        )

    def wait_for_deletion(self, name: str, namespace: str | None = None, timeout: float = 10.0) -> PodRecord:
        self.wait_for(lambda: self.pod(name, namespace) is None, timeout, f"pod {name} was not deleted")
        return self.record(name, namespace)
