"""The three PATCH flavours of the API server: strategic merge, JSON merge (RFC 7386), JSON patch (RFC 6902).

Strategic merge knows the merge keys of the pod and node lists a client is likely to patch (containers and
env by name, conditions by type, ...); other lists are replaced, as for fields without a patch strategy.
Directives: ``null`` deletes a key, ``$patch: replace`` / ``$patch: delete`` on a map; other directives
(``$retainKeys``, ``$setElementOrder``, ``$deleteFromPrimitiveList``) are not supported.
"""

from __future__ import annotations

import copy
from typing import Any

from tests.kubesim.objects import ApiError

# Field name -> merge key of its list elements (from the Kubernetes API's patchMergeKey tags).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "ports": "containerPort",
    "conditions": "type",
    "containerStatuses": "name",
    "initContainerStatuses": "name",
    "ownerReferences": "uid",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "addresses": "type",
    "podIPs": "ip",
}
# Lists of scalars that merge as sets.
MERGED_SCALAR_LISTS = {"finalizers"}


def strategic_merge(target: Any, patch: Any, field: str | None = None) -> Any:
    if isinstance(patch, dict) and isinstance(target, dict):
        directive = patch.get("$patch")
        if directive == "replace":
            return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
        if directive == "delete":
            return None
        merged = dict(target)
        for key, value in patch.items():
            if key.startswith("$"):
                continue
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = strategic_merge(merged[key], value, key)
            else:
                merged[key] = _without_directives(value)
        return merged
    if isinstance(patch, list) and isinstance(target, list):
        if field in MERGED_SCALAR_LISTS:
            return target + [item for item in patch if item not in target]
        if field in MERGE_KEYS:
            return _merge_keyed_list(target, patch, MERGE_KEYS[field])
    return _without_directives(patch)


def _merge_keyed_list(target: list[Any], patch: list[Any], merge_key: str) -> list[Any]:
    merged = [copy.deepcopy(item) for item in target]
    for item in patch:
        if not isinstance(item, dict) or merge_key not in item:
            raise ApiError(
                400, "BadRequest", f"map: {item!r} does not contain declared merge key: {merge_key}"
            )
        index = next(
            (i for i, existing in enumerate(merged) if existing.get(merge_key) == item[merge_key]), None
        )
        if item.get("$patch") == "delete":
            if index is not None:
                merged.pop(index)
        elif index is None:
            merged.append(_without_directives(item))
        else:
            merged[index] = strategic_merge(merged[index], item)
    return merged


def _without_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: _without_directives(v) for k, v in value.items() if not k.startswith("$") and v is not None
        }
    if isinstance(value, list):
        return [_without_directives(item) for item in value]
    return value


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, "Invalid", f"the path {path!r} is not a JSON pointer")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _parent(document: Any, parts: list[str]) -> tuple[Any, str]:
    node = document
    for part in parts[:-1]:
        try:
            node = node[int(part)] if isinstance(node, list) else node[part]
        except (KeyError, IndexError, ValueError) as error:
            raise ApiError(
                422,
                "Invalid",
                f"the server rejected our request due to an error in our request: "
                f"doc is missing path: {'/'.join(parts)}",
            ) from error
    return node, parts[-1]


def json_patch(target: Any, operations: list[dict[str, Any]]) -> Any:
    document = copy.deepcopy(target)
    for operation in operations:
        op, parts = operation.get("op"), _pointer(operation.get("path", ""))
        if op not in ("add", "remove", "replace", "test", "move", "copy"):
            raise ApiError(422, "Invalid", f"unexpected kind: {op}")
        if op in ("move", "copy"):
            source_parent, source_key = _parent(document, _pointer(operation["from"]))
            value = source_parent[int(source_key) if isinstance(source_parent, list) else source_key]
            if op == "move":
                del source_parent[int(source_key) if isinstance(source_parent, list) else source_key]
            operation = {"op": "add", "path": operation["path"], "value": copy.deepcopy(value)}
            op = "add"
        if not parts:
            if op in ("add", "replace"):
                document = copy.deepcopy(operation["value"])
                continue
            raise ApiError(422, "Invalid", f"unsupported operation on the whole document: {op}")
        parent, key = _parent(document, parts)
        if isinstance(parent, list):
            index = len(parent) if key == "-" else int(key)
            if op == "add":
                parent.insert(index, copy.deepcopy(operation["value"]))
            elif op == "remove":
                parent.pop(index)
            elif op == "replace":
                parent[index] = copy.deepcopy(operation["value"])
            elif op == "test" and parent[index] != operation["value"]:
                raise ApiError(422, "Invalid", f"testing value {operation['path']} failed")
        else:
            if op in ("remove", "replace", "test") and key not in parent:
                raise ApiError(422, "Invalid", f"doc is missing key: {operation['path']}")
            if op in ("add", "replace"):
                parent[key] = copy.deepcopy(operation["value"])
            elif op == "remove":
                del parent[key]
            elif op == "test" and parent[key] != operation["value"]:
                raise ApiError(422, "Invalid", f"testing value {operation['path']} failed")
    return document


PATCH_TYPES = {
    "application/strategic-merge-patch+json": strategic_merge,
    "application/merge-patch+json": merge_patch,
    "application/json-patch+json": json_patch,
}


def apply_patch(content_type: str, target: dict[str, Any], patch: Any) -> dict[str, Any]:
    media_type = content_type.split(";")[0].strip().lower()
    if media_type not in PATCH_TYPES:
        raise ApiError(
            415,
            "UnsupportedMediaType",
            f"the body of the request was in an unknown format - "
            f"accepted media types include: {', '.join(PATCH_TYPES)}",
        )
    if media_type == "application/json-patch+json" and not isinstance(patch, list):
        raise ApiError(400, "BadRequest", "json patch must be a list of operations")
    if media_type != "application/json-patch+json" and not isinstance(patch, dict):
        raise ApiError(400, "BadRequest", "merge patch must be a JSON object")
    return PATCH_TYPES[media_type](target, patch)
