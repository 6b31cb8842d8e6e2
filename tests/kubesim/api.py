"""The harness's Kubernetes API server: the core/v1 endpoints the KubernetesExecutor and kubectl use.

Served: discovery (/version, /api, /apis, /api/v1); pods (list, watch, create, get, replace, patch,
delete, deletecollection, status, log, eviction), nodes (list, watch, get, patch), events and namespaces
(list, watch, get, create), configmaps (list, watch, create, get, replace, patch, delete). Lists and watches take labelSelector and fieldSelector; lists paginate with
limit/continue; an ``Accept: ...;as=PartialObjectMetadataList`` answer carries metadata only, and
``as=Table`` gives kubectl its usual columns. Watches
stream ADDED/MODIFIED/DELETED events from a resourceVersion (an object leaving the selector is DELETED,
entering it ADDED, as the watch cache does) and answer a too-old version with an ERROR event holding a
410 Expired Status. Not served: other API groups, Secrets, server-side apply, dryRun,
finalizers, authentication (plain HTTP on 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import functools
import json
import time
import traceback
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.kubesim.objects import (
    KUBERNETES_VERSION,
    ApiError,
    bad_request,
    config_map_data_errors,
    conflict,
    namespace_object,
    not_found,
    set_condition,
    timestamp,
    validate_and_default_pod,
    validate_config_map,
)
from tests.kubesim.patches import apply_patch
from tests.kubesim.selectors import SelectorError, parse_field_selector, parse_label_selector
from tests.kubesim.store import PLURALS, Change, Store
from tests.kubesim.tables import as_table


def _resource(name: str, kind: str, namespaced: bool, verbs: str, **extra: Any) -> dict[str, Any]:
    singular = "" if "/" in name else kind.lower()
    return {
        "name": name,
        "singularName": singular,
        "namespaced": namespaced,
        "kind": kind,
        "verbs": verbs.split(),
        **extra,
    }


# What /api/v1 advertises: exactly the verbs served here.
API_RESOURCES = [
    _resource(
        "pods",
        "Pod",
        True,
        "create delete deletecollection get list patch update watch",
        shortNames=["po"],
        categories=["all"],
    ),
    _resource("pods/eviction", "Eviction", True, "create", group="policy", version="v1"),
    _resource("pods/log", "Pod", True, "get"),
    _resource("pods/status", "Pod", True, "get patch"),
    _resource("nodes", "Node", False, "get list patch watch", shortNames=["no"]),
    _resource("nodes/status", "Node", False, "get"),
    _resource("events", "Event", True, "create get list watch", shortNames=["ev"]),
    _resource("namespaces", "Namespace", False, "create get list patch watch", shortNames=["ns"]),
    _resource(
        "configmaps", "ConfigMap", True, "create delete get list patch update watch", shortNames=["cm"]
    ),
]
# Pod spec fields a PATCH or PUT may change (everything else is immutable once created).
MUTABLE_POD_SPEC_FIELDS = {"activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds"}


def _json(body: Any, status: int = 200, content_type: str = "application/json") -> web.Response:
    return web.Response(body=json.dumps(body).encode(), status=status, headers={"Content-Type": content_type})


def _metadata_only(obj: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]}


def _answer_format(request: web.Request) -> str | None:
    """The first acceptable of: "object" (plain JSON), "metadata" (PartialObjectMetadata[List]), "table"."""
    for media_range in request.headers.get("Accept", "application/json").split(","):
        parts = [part.strip() for part in media_range.split(";")]
        params = dict(part.split("=", 1) for part in parts[1:] if "=" in part)
        if parts[0] not in ("application/json", "*/*", "application/*"):
            continue
        wanted = params.get("as")
        if wanted in ("PartialObjectMetadataList", "PartialObjectMetadata"):
            return "metadata"
        if wanted == "Table" and params.get("v") == "v1":
            return "table"
        if wanted is None:
            return "object"
        # Anything else is not served: try the next media range, as the API server does.
    return None


class ApiServer:
    def __init__(self, store: Store, log_path_for: Callable[[str], Path | None]):
        self.store = store
        self.log_path_for = log_path_for
        self.requests: deque[tuple[float, str, str]] = deque(maxlen=20000)  # (time, method, path?query)
        self._watch_queues: set[asyncio.Queue[Change | None]] = set()
        self.app = web.Application(middlewares=[self._errors], client_max_size=64 * 1024**2)
        self._routes()

    # --- plumbing --------------------------------------------------------------------------------------

    def _routes(self) -> None:
        router = self.app.router

        def for_kind(handler: Callable[..., Any], kind: str) -> Callable[[web.Request], Any]:
            return functools.partial(handler, kind=kind)

        router.add_get("/version", self._version)
        for probe in ("/healthz", "/livez", "/readyz"):
            router.add_get(probe, self._ok)
        router.add_get("/api", self._api_versions)
        router.add_get("/apis", self._api_groups)
        router.add_get("/api/v1", self._api_resources)
        for kind in ("Pod", "Event", "ConfigMap"):
            plural = PLURALS[kind]
            router.add_get(f"/api/v1/{plural}", for_kind(self._list_or_watch, kind))
            router.add_get(f"/api/v1/namespaces/{{namespace}}/{plural}", for_kind(self._list_or_watch, kind))
            router.add_get(f"/api/v1/namespaces/{{namespace}}/{plural}/{{name}}", for_kind(self._get, kind))
        for kind in ("Node", "Namespace"):
            plural = PLURALS[kind]
            router.add_get(f"/api/v1/{plural}", for_kind(self._list_or_watch, kind))
            router.add_get(f"/api/v1/{plural}/{{name}}", for_kind(self._get, kind))
            router.add_patch(f"/api/v1/{plural}/{{name}}", for_kind(self._patch, kind))
        router.add_get("/api/v1/nodes/{name}/status", for_kind(self._get, "Node"))
        router.add_post("/api/v1/namespaces", self._create_namespace)
        pod = "/api/v1/namespaces/{namespace}/pods/{name}"
        router.add_post("/api/v1/namespaces/{namespace}/pods", self._create_pod)
        router.add_delete("/api/v1/namespaces/{namespace}/pods", self._delete_pods)
        router.add_put(pod, self._replace_pod)
        router.add_patch(pod, for_kind(self._patch, "Pod"))
        router.add_delete(pod, self._delete_pod)
        router.add_get(f"{pod}/status", for_kind(self._get, "Pod"))
        router.add_patch(f"{pod}/status", for_kind(self._patch, "Pod"))
        router.add_get(f"{pod}/log", self._log)
        router.add_post(f"{pod}/eviction", self._evict)
        router.add_post("/api/v1/namespaces/{namespace}/events", self._create_event)
        config_map = "/api/v1/namespaces/{namespace}/configmaps/{name}"
        router.add_post("/api/v1/namespaces/{namespace}/configmaps", self._create_config_map)
        router.add_put(config_map, self._replace_config_map)
        router.add_patch(config_map, for_kind(self._patch, "ConfigMap"))
        router.add_delete(config_map, self._delete_config_map)

    @web.middleware
    async def _errors(self, request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        self.requests.append((time.time(), request.method, request.path_qs))
        try:
            return await handler(request)
        except ApiError as error:
            return _json(error.status(), error.code)
        except SelectorError as error:
            return _json(bad_request(str(error)).status(), 400)
        except json.JSONDecodeError as error:
            return _json(bad_request(f"invalid JSON body: {error}").status(), 400)
        except web.HTTPNotFound:
            message = "the server could not find the requested resource"
            return _json(ApiError(404, "NotFound", message).status(), 404)
        except web.HTTPMethodNotAllowed:
            return _json(
                ApiError(405, "MethodNotAllowed", "the server does not allow this method").status(), 405
            )
        except Exception as error:  # a harness bug: answer as the API server would, and show it
            traceback.print_exc()
            return _json(ApiError(500, "InternalError", f"kubesim: {error!r}").status(), 500)

    @property
    def open_watches(self) -> int:
        """Watches streaming now (subscribed, their backlog sent or being sent)."""
        return len(self._watch_queues)

    def close_watches(self) -> None:
        for queue in list(self._watch_queues):
            queue.put_nowait(None)

    # --- discovery -------------------------------------------------------------------------------------

    async def _version(self, request: web.Request) -> web.Response:
        return _json(
            {
                **KUBERNETES_VERSION,
                "gitCommit": "kubesim",
                "gitTreeState": "clean",
                "buildDate": "2026-11-22T00:00:00Z",
                "goVersion": "go1.24",
                "compiler": "gc",
                "platform": "linux/amd64",
            }
        )

    async def _ok(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _api_versions(self, request: web.Request) -> web.Response:
        address = request.host
        return _json(
            {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": address}],
            }
        )

    async def _api_groups(self, request: web.Request) -> web.Response:
        return _json({"kind": "APIGroupList", "apiVersion": "v1", "groups": []})

    async def _api_resources(self, request: web.Request) -> web.Response:
        return _json(
            {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "v1", "resources": API_RESOURCES}
        )

    # --- reads -----------------------------------------------------------------------------------------

    def _matcher(self, request: web.Request, kind: str) -> Callable[[dict[str, Any]], bool]:
        labels = parse_label_selector(request.query.get("labelSelector"))
        fields = parse_field_selector(request.query.get("fieldSelector"), kind)
        return lambda obj: labels.matches(obj["metadata"].get("labels")) and fields.matches(obj)

    async def _list_or_watch(self, request: web.Request, kind: str) -> web.StreamResponse:
        answer_format = _answer_format(request)
        if answer_format is None:
            raise ApiError(
                406, "NotAcceptable", "only the following media types are accepted: application/json"
            )
        if request.query.get("watch") in ("true", "1", "True"):
            return await self._watch(request, kind, answer_format)
        namespace = request.match_info.get("namespace")
        if kind == "Namespace":
            namespace = None
        items, resource_version = self.store.list(kind, namespace, self._matcher(request, kind))
        list_meta: dict[str, Any] = {"resourceVersion": str(resource_version)}
        if request.query.get("resourceVersionMatch") == "Exact" and request.query.get(
            "resourceVersion"
        ) != str(resource_version):
            raise ApiError(
                410, "Expired", "the harness keeps no snapshots: only the current version is exact"
            )
        items = self._paginate(request, items, list_meta)
        if answer_format == "table":
            table = as_table(kind, items, list_meta)
            return _json(table, content_type="application/json;as=Table;g=meta.k8s.io;v=v1")
        if answer_format == "metadata":
            return _json(
                {
                    "kind": "PartialObjectMetadataList",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": list_meta,
                    "items": [_metadata_only(item) for item in items],
                },
                content_type="application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
            )
        for item in items:  # list items carry no kind/apiVersion, as in the real API
            item.pop("kind", None)
            item.pop("apiVersion", None)
        return _json({"kind": f"{kind}List", "apiVersion": "v1", "metadata": list_meta, "items": items})

    @staticmethod
    def _paginate(
        request: web.Request, items: list[dict[str, Any]], list_meta: dict[str, Any]
    ) -> list[dict[str, Any]]:
        offset = 0
        if token := request.query.get("continue"):
            try:
                offset = int(json.loads(base64.urlsafe_b64decode(token.encode()))["offset"])
            except (ValueError, KeyError, TypeError) as error:
                raise bad_request("continue key is not valid") from error
        limit = int(request.query.get("limit") or 0)
        if limit <= 0:
            return items[offset:]
        page = items[offset : offset + limit]
        if offset + limit < len(items):
            token = json.dumps({"offset": offset + limit, "rv": list_meta["resourceVersion"]})
            list_meta["continue"] = base64.urlsafe_b64encode(token.encode()).decode()
            list_meta["remainingItemCount"] = len(items) - offset - limit
        return page

    async def _get(self, request: web.Request, kind: str) -> web.Response:
        obj = self.store.get(kind, request.match_info.get("namespace"), request.match_info["name"])
        answer_format = _answer_format(request)
        if answer_format == "table":
            return _json(as_table(kind, [obj], {"resourceVersion": obj["metadata"]["resourceVersion"]}))
        return _json(_metadata_only(obj) if answer_format == "metadata" else obj)

    async def _watch(self, request: web.Request, kind: str, answer_format: str) -> web.StreamResponse:
        namespace = None if kind == "Namespace" else request.match_info.get("namespace")
        matches = self._matcher(request, kind)
        timeout = float(request.query.get("timeoutSeconds") or 1800)
        send_initial_events = request.query.get("sendInitialEvents") == "true"
        deadline = asyncio.get_running_loop().time() + timeout
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Change | None] = asyncio.Queue()

        def subscriber(change: Change) -> None:
            if change.kind == kind:
                loop.call_soon_threadsafe(queue.put_nowait, change)

        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)

        def encode(event_type: str, obj: dict[str, Any]) -> bytes:
            if answer_format == "table":  # kubectl get --watch: one row per event
                body = as_table(kind, [obj], {"resourceVersion": obj["metadata"]["resourceVersion"]})
            else:
                body = _metadata_only(obj) if answer_format == "metadata" else obj
            return (json.dumps({"type": event_type, "object": body}) + "\n").encode()

        try:
            with self.store.watch(
                kind, request.query.get("resourceVersion"), subscriber, initial_state=send_initial_events
            ) as (backlog, revision):
                self._watch_queues.add(queue)
                for change in backlog:
                    if event := watch_event(change, namespace, matches):
                        await response.write(encode(*event))
                if send_initial_events:
                    # A watch-list (kubectl, informers) waits for this bookmark to know the list is whole.
                    bookmark = {
                        "kind": kind,
                        "apiVersion": "v1",
                        "metadata": {
                            "resourceVersion": str(revision),
                            "annotations": {"k8s.io/initial-events-end": "true"},
                        },
                    }
                    await response.write(
                        (json.dumps({"type": "BOOKMARK", "object": bookmark}) + "\n").encode()
                    )
                while (remaining := deadline - loop.time()) > 0:
                    try:
                        change = await asyncio.wait_for(queue.get(), timeout=remaining)
                    except TimeoutError:
                        break
                    if change is None:
                        break
                    if event := watch_event(change, namespace, matches):
                        await response.write(encode(*event))
        except ApiError as error:  # a too-old resourceVersion: an ERROR event in a 200 stream
            await response.write((json.dumps({"type": "ERROR", "object": error.status()}) + "\n").encode())
        except ConnectionResetError:
            return response  # the client went away
        finally:
            self._watch_queues.discard(queue)
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response

    async def _log(self, request: web.Request) -> web.StreamResponse:
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        pod = self.store.get("Pod", namespace, name)
        containers = [c["name"] for c in pod["spec"]["containers"]]
        container = request.query.get("container") or (containers[0] if len(containers) == 1 else None)
        if container is None:
            raise bad_request(
                f"a container name must be specified for pod {name}, choose one of: {containers}"
            )
        if container not in containers:
            raise bad_request(f"container {container} is not valid for pod {name}")
        if request.query.get("previous") in ("true", "1"):
            raise bad_request(f'previous terminated container "{container}" in pod "{name}" not found')
        log_path = self.log_path_for(pod["metadata"]["uid"])
        if log_path is None or container != containers[0] or not log_path.exists():
            state = (
                next(
                    (
                        s.get("state")
                        for s in pod["status"].get("containerStatuses") or []
                        if s["name"] == container
                    ),
                    {},
                )
                or {}
            )
            reason = (state.get("waiting") or {}).get("reason", "ContainerCreating")
            raise bad_request(f'container "{container}" in pod "{name}" is waiting to start: {reason}')
        data = log_path.read_bytes()
        if (tail := request.query.get("tailLines")) is not None:
            lines = data.splitlines(keepends=True)
            data = b"".join(lines[-int(tail) :]) if int(tail) > 0 else b""
        if (limit := request.query.get("limitBytes")) is not None:
            data = data[: int(limit)]
        if request.query.get("follow") not in ("true", "1"):
            return web.Response(body=data, content_type="text/plain")
        return await self._follow_log(request, namespace, name, log_path, data)

    async def _follow_log(
        self, request: web.Request, namespace: str, name: str, log_path: Path, head: bytes
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        await response.write(head)
        position = log_path.stat().st_size
        with contextlib.suppress(ConnectionResetError):
            while True:
                with log_path.open("rb") as log:
                    log.seek(position)
                    if chunk := log.read():
                        position += len(chunk)
                        await response.write(chunk)
                pod = self.store.find("Pod", namespace, name)
                if pod is None or pod["status"].get("phase") in ("Succeeded", "Failed"):
                    break
                await asyncio.sleep(0.1)
            await response.write_eof()
        return response

    # --- writes ----------------------------------------------------------------------------------------

    async def _body(self, request: web.Request) -> Any:
        raw = await request.read()
        return json.loads(raw) if raw else {}

    def _require_namespace(self, namespace: str) -> None:
        if self.store.find("Namespace", None, namespace) is None:
            raise not_found("namespaces", namespace)

    async def _create_pod(self, request: web.Request) -> web.Response:
        namespace = request.match_info["namespace"]
        self._require_namespace(namespace)
        pod = validate_and_default_pod(await self._body(request), namespace)
        return _json(self.store.create(pod), 201)

    async def _create_config_map(self, request: web.Request) -> web.Response:
        namespace = request.match_info["namespace"]
        self._require_namespace(namespace)
        config_map = validate_config_map(await self._body(request), namespace)
        return _json(self.store.create(config_map), 201)

    async def _replace_config_map(self, request: web.Request) -> web.Response:
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        body = await self._body(request)
        return _json(
            self.store.update("ConfigMap", namespace, name, lambda current: _merged_update(current, body))
        )

    async def _delete_config_map(self, request: web.Request) -> web.Response:
        # No finalizers or grace period: gone at once, answered with a Status as the API server does.
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        deleted = self.store.delete("ConfigMap", namespace, name)
        details = {"name": name, "kind": "configmaps", "uid": deleted["metadata"]["uid"]}
        return _json(
            {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}
        )

    async def _create_namespace(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        name = (body.get("metadata") or {}).get("name")
        if not name:
            raise ApiError(422, "Invalid", "metadata.name: Required value")
        obj = namespace_object(name)
        obj["metadata"]["labels"].update((body.get("metadata") or {}).get("labels") or {})
        return _json(self.store.create(obj), 201)

    async def _create_event(self, request: web.Request) -> web.Response:
        namespace = request.match_info["namespace"]
        event = await self._body(request)
        event.update(apiVersion="v1", kind="Event")
        event.setdefault("metadata", {})["namespace"] = namespace
        return _json(self.store.create(event), 201)

    async def _replace_pod(self, request: web.Request) -> web.Response:
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        body = await self._body(request)
        return _json(self.store.update("Pod", namespace, name, lambda current: _merged_update(current, body)))

    async def _patch(self, request: web.Request, kind: str) -> web.Response:
        namespace, name = request.match_info.get("namespace"), request.match_info["name"]
        status_only = request.path.endswith("/status")
        patch = await self._body(request)
        content_type = request.headers.get("Content-Type", "")

        def patched(current: dict[str, Any]) -> dict[str, Any]:
            result = apply_patch(content_type, current, patch)
            if status_only:
                return {**current, "status": result.get("status", current.get("status"))}
            return _merged_update(current, result)

        return _json(self.store.update(kind, namespace, name, patched))

    async def _delete_pod(self, request: web.Request) -> web.Response:
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        options = await self._body(request) if request.can_read_body else {}
        if "gracePeriodSeconds" in request.query:
            options.setdefault("gracePeriodSeconds", int(request.query["gracePeriodSeconds"]))
        return _json(delete_pod(self.store, namespace, name, options))

    async def _delete_pods(self, request: web.Request) -> web.Response:
        namespace = request.match_info["namespace"]
        options = await self._body(request) if request.can_read_body else {}
        items, resource_version = self.store.list("Pod", namespace, self._matcher(request, "Pod"))
        deleted = []
        for pod in items:
            with contextlib.suppress(ApiError):
                deleted.append(delete_pod(self.store, namespace, pod["metadata"]["name"], options))
        return _json(
            {
                "kind": "PodList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(resource_version)},
                "items": deleted,
            }
        )

    async def _evict(self, request: web.Request) -> web.Response:
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        eviction = await self._body(request)

        def disruption(pod: dict[str, Any]) -> None:
            set_condition(
                pod["status"], "DisruptionTarget", "True", "EvictionByEvictionAPI", "Eviction API: evicting"
            )

        self.store.update("Pod", namespace, name, disruption)
        delete_pod(self.store, namespace, name, eviction.get("deleteOptions") or {})
        return _json(
            {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}, 201
        )


def watch_event(
    change: Change, namespace: str | None, matches: Callable[[dict[str, Any]], bool]
) -> tuple[str, dict[str, Any]] | None:
    """How the watch cache turns a change into an event for one watcher's namespace and selectors."""
    if namespace and change.object["metadata"].get("namespace") != namespace:
        return None
    current_passes = change.type != "DELETED" and matches(change.object)
    before = change.object if change.type == "DELETED" else change.previous
    before_passed = before is not None and matches(before)
    if current_passes:
        return ("MODIFIED" if before_passed else "ADDED"), change.object
    if before_passed:
        # Leaving the selection reads as a deletion: the last matching state at the event's version.
        gone = copy.deepcopy(before)
        gone["metadata"]["resourceVersion"] = str(change.resource_version)
        return "DELETED", gone
    return None


def _merged_update(current: dict[str, Any], requested: dict[str, Any]) -> dict[str, Any]:
    """An update of the main resource: metadata and mutable spec fields change, status does not."""
    if (
        wanted_version := (requested.get("metadata") or {}).get("resourceVersion")
    ) and wanted_version != current["metadata"]["resourceVersion"]:
        raise conflict(PLURALS[current["kind"]], current["metadata"]["name"])
    updated = copy.deepcopy(current)
    meta = requested.get("metadata") or {}
    for key in ("labels", "annotations", "finalizers", "ownerReferences"):
        if key in meta:
            updated["metadata"][key] = meta[key]
        else:
            updated["metadata"].pop(key, None)
    if current["kind"] == "Pod":
        _check_pod_spec_update(current["spec"], requested.get("spec") or {}, current["metadata"]["name"])
        for key in MUTABLE_POD_SPEC_FIELDS:
            if key in (requested.get("spec") or {}):
                updated["spec"][key] = requested["spec"][key]
        for index, container in enumerate((requested.get("spec") or {}).get("containers") or []):
            updated["spec"]["containers"][index]["image"] = container.get("image")
    elif current["kind"] == "Node":
        updated["spec"] = requested.get("spec") or {}
    elif current["kind"] == "ConfigMap":
        _check_config_map_update(current, requested)
        for key in ("data", "binaryData", "immutable"):
            if key in requested:
                updated[key] = requested[key]
            else:
                updated.pop(key, None)
    return updated


def _check_config_map_update(current: dict[str, Any], requested: dict[str, Any]) -> None:
    name = current["metadata"]["name"]
    causes = config_map_data_errors(requested)
    if current.get("immutable") and any(
        requested.get(key) != current.get(key) for key in ("data", "binaryData", "immutable")
    ):
        causes.append("data: Forbidden: field is immutable when `immutable` is set")
    if causes:
        raise ApiError(
            422,
            "Invalid",
            f'ConfigMap "{name}" is invalid: {"; ".join(causes)}',
            {"name": name, "kind": "configmaps"},
        )


def _check_pod_spec_update(current: dict[str, Any], requested: dict[str, Any], name: str) -> None:
    def frozen(spec: dict[str, Any]) -> dict[str, Any]:
        spec = {k: v for k, v in spec.items() if k not in MUTABLE_POD_SPEC_FIELDS}
        spec["containers"] = [
            {k: v for k, v in c.items() if k != "image"} for c in spec.get("containers") or []
        ]
        return spec

    if frozen(current) != frozen({**current, **requested}):
        raise ApiError(
            422,
            "Invalid",
            f'Pod "{name}" is invalid: spec: Forbidden: pod updates may not change '
            "fields other than `spec.containers[*].image`, `spec.activeDeadlineSeconds`, "
            "`spec.tolerations` (only additions to existing tolerations), "
            "`spec.terminationGracePeriodSeconds`",
            {"name": name, "kind": "pods"},
        )


def delete_pod(store: Store, namespace: str, name: str, options: dict[str, Any]) -> dict[str, Any]:
    """The API server's pod deletion: graceful for a pod on a node, immediate otherwise."""
    pod = store.get("Pod", namespace, name)
    preconditions = options.get("preconditions") or {}
    if preconditions.get("uid") not in (None, pod["metadata"]["uid"]) or preconditions.get(
        "resourceVersion"
    ) not in (None, pod["metadata"]["resourceVersion"]):
        raise conflict("pods", name)
    grace = options.get("gracePeriodSeconds")
    if grace is None:
        grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
    # Unscheduled and finished pods have no process to stop: they go at once.
    if not pod["spec"].get("nodeName") or pod["status"].get("phase") in ("Succeeded", "Failed"):
        grace = 0
    meta = pod["metadata"]
    if meta.get("deletionTimestamp") and grace >= int(meta.get("deletionGracePeriodSeconds") or 0):
        return pod  # already terminating at least as fast
    if grace <= 0:

        def finalize(obj: dict[str, Any]) -> None:
            obj["metadata"]["deletionTimestamp"] = obj["metadata"].get("deletionTimestamp") or timestamp()
            obj["metadata"]["deletionGracePeriodSeconds"] = 0

        return store.delete("Pod", namespace, name, finalize)

    def mark(obj: dict[str, Any]) -> None:
        obj["metadata"]["deletionTimestamp"] = timestamp(time.time() + grace)
        obj["metadata"]["deletionGracePeriodSeconds"] = grace

    return store.update("Pod", namespace, name, mark)
