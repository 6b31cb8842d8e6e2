"""Label and field selectors, parsed and matched as the Kubernetes API server does.

Label selector grammar (comma-separated requirements, all must hold):
``key``, ``!key``, ``key=value``, ``key==value``, ``key!=value``, ``key in (a,b)``, ``key notin (a,b)``.
``!=`` and ``notin`` also match objects that lack the key, as in Kubernetes.

Field selectors support ``=``, ``==`` and ``!=`` on a fixed set of fields per kind; any other field
is rejected with the API server's "field label not supported" error.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


class SelectorError(ValueError):
    """A selector the API server would reject with 400 BadRequest."""


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str  # "exists", "!exists", "=", "!=", "in", "notin"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        match self.operator:
            case "exists":
                return present
            case "!exists":
                return not present
            case "=" | "in":
                return present and value in self.values
            case "!=" | "notin":
                return not present or value not in self.values
        raise AssertionError(self.operator)


@dataclass(frozen=True)
class LabelSelector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        return all(requirement.matches(labels) for requirement in self.requirements)


# Label keys: optional DNS-subdomain prefix and a name of alphanumerics, '-', '_', '.'.
_KEY = r"(?:[a-z0-9](?:[-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?"
_VALUE = r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_KEY_RE = re.compile(rf"^{_KEY}$")
_VALUE_RE = re.compile(rf"^{_VALUE}$")
_SET_RE = re.compile(rf"^({_KEY})\s+(in|notin)\s*\((.*)\)$")
_EQUALITY_RE = re.compile(rf"^({_KEY})\s*(==|!=|=)\s*(.*)$")


def _split_requirements(text: str) -> list[str]:
    """Split on commas that are not inside a ``(...)`` value set."""
    parts, depth, current = [], 0, []
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise SelectorError(f"unable to parse requirement: unbalanced ')' in {text!r}")
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth:
        raise SelectorError(f"unable to parse requirement: unbalanced '(' in {text!r}")
    parts.append("".join(current))
    return [part.strip() for part in parts]


def _checked_value(value: str, raw: str) -> str:
    if not _VALUE_RE.match(value) or len(value) > 63:
        raise SelectorError(f"unable to parse requirement: invalid label value: {value!r} in {raw!r}")
    return value


def parse_label_selector(text: str | None) -> LabelSelector:
    if not text or not text.strip():
        return LabelSelector()
    requirements = []
    for raw in _split_requirements(text):
        if not raw:
            raise SelectorError(f"unable to parse requirement: empty requirement in {text!r}")
        if set_match := _SET_RE.match(raw):
            key, operator, values_text = set_match.groups()
            values = [value.strip() for value in values_text.split(",")]
            if values == [""]:
                raise SelectorError(f"unable to parse requirement: {operator} needs at least one value")
            requirements.append(
                Requirement(key, operator, frozenset(_checked_value(value, raw) for value in values))
            )
        elif equality := _EQUALITY_RE.match(raw):
            key, operator, value = equality.groups()
            value = value.strip()
            requirements.append(
                Requirement(key, "!=" if operator == "!=" else "=", frozenset({_checked_value(value, raw)}))
            )
        elif raw.startswith("!") and _KEY_RE.match(raw[1:].strip()):
            requirements.append(Requirement(raw[1:].strip(), "!exists"))
        elif _KEY_RE.match(raw):
            requirements.append(Requirement(raw, "exists"))
        else:
            raise SelectorError(f"unable to parse requirement: {raw!r}")
    return LabelSelector(tuple(requirements))


# --- field selectors -------------------------------------------------------------------------------------


def _path(*keys: str) -> Callable[[Mapping[str, Any]], str]:
    def get(obj: Mapping[str, Any]) -> str:
        node: Any = obj
        for key in keys:
            node = node.get(key) if isinstance(node, Mapping) else None
        if node is None:
            return ""
        if isinstance(node, bool):
            return str(node).lower()
        return str(node)

    return get


# The fields each kind's API registers for field selection (metadata.name/namespace for every kind).
FIELDS: dict[str, dict[str, Callable[[Mapping[str, Any]], str]]] = {
    "Pod": {
        "spec.nodeName": _path("spec", "nodeName"),
        "spec.restartPolicy": _path("spec", "restartPolicy"),
        "spec.schedulerName": _path("spec", "schedulerName"),
        "spec.serviceAccountName": _path("spec", "serviceAccountName"),
        "spec.hostNetwork": _path("spec", "hostNetwork"),
        "status.phase": _path("status", "phase"),
        "status.podIP": _path("status", "podIP"),
        "status.nominatedNodeName": _path("status", "nominatedNodeName"),
    },
    "Node": {"spec.unschedulable": _path("spec", "unschedulable")},
    "Event": {
        "involvedObject.kind": _path("involvedObject", "kind"),
        "involvedObject.namespace": _path("involvedObject", "namespace"),
        "involvedObject.name": _path("involvedObject", "name"),
        "involvedObject.uid": _path("involvedObject", "uid"),
        "involvedObject.apiVersion": _path("involvedObject", "apiVersion"),
        "involvedObject.resourceVersion": _path("involvedObject", "resourceVersion"),
        "involvedObject.fieldPath": _path("involvedObject", "fieldPath"),
        "reason": _path("reason"),
        "reportingComponent": _path("reportingComponent"),
        "source": _path("source", "component"),
        "type": _path("type"),
    },
    "Namespace": {"status.phase": _path("status", "phase")},
}
_COMMON_FIELDS = {
    "metadata.name": _path("metadata", "name"),
    "metadata.namespace": _path("metadata", "namespace"),
}


@dataclass(frozen=True)
class FieldRequirement:
    field: str
    negated: bool
    value: str
    getter: Callable[[Mapping[str, Any]], str]

    def matches(self, obj: Mapping[str, Any]) -> bool:
        return (self.getter(obj) == self.value) != self.negated


@dataclass(frozen=True)
class FieldSelector:
    requirements: tuple[FieldRequirement, ...] = ()

    def matches(self, obj: Mapping[str, Any]) -> bool:
        return all(requirement.matches(obj) for requirement in self.requirements)


_FIELD_RE = re.compile(r"^([A-Za-z0-9.]+)\s*(==|!=|=)\s*(.*)$")


def parse_field_selector(text: str | None, kind: str) -> FieldSelector:
    if not text or not text.strip():
        return FieldSelector()
    fields = {**_COMMON_FIELDS, **FIELDS.get(kind, {})}
    requirements = []
    for raw in text.split(","):
        match = _FIELD_RE.match(raw.strip())
        if not match:
            raise SelectorError(f"invalid selector: {raw!r}; can't understand {raw.strip()!r}")
        field, operator, value = match.groups()
        if field not in fields:
            raise SelectorError(f'field label not supported: "{field}"')
        requirements.append(FieldRequirement(field, operator == "!=", value.strip(), fields[field]))
    return FieldSelector(tuple(requirements))
