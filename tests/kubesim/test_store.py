"""The store versions every change as etcd does and keeps a bounded watch history per kind."""

import pytest

from tests.kubesim.objects import ApiError, namespace_object
from tests.kubesim.store import Store


def test_every_write_gets_a_higher_resource_version_and_a_no_op_none():
    store = Store()
    created = store.create(namespace_object("a"))
    relabelled = store.update("Namespace", None, "a", lambda ns: ns["metadata"]["labels"].update(x="1"))
    unchanged = store.update("Namespace", None, "a", lambda ns: None)
    assert int(created["metadata"]["resourceVersion"]) < int(relabelled["metadata"]["resourceVersion"])
    assert unchanged["metadata"]["resourceVersion"] == relabelled["metadata"]["resourceVersion"]


def test_a_watch_resumes_within_the_kept_history_and_gets_410_beyond_it():
    store = Store(history_limit=2)
    start = store.resource_version
    for name in ("a", "b"):
        store.create(namespace_object(name))
    with store.watch("Namespace", str(start), lambda change: None) as (backlog, _):
        assert [c.object["metadata"]["name"] for c in backlog] == ["a", "b"]
    store.create(namespace_object("c"))  # pushes "a" out of the history
    with pytest.raises(ApiError) as error, store.watch("Namespace", str(start), lambda change: None):
        pass
    assert (error.value.code, error.value.reason) == (410, "Expired")
    with store.watch("Namespace", str(start + 1), lambda change: None) as (backlog, _):
        assert [c.object["metadata"]["name"] for c in backlog] == ["b", "c"]


def test_history_is_per_kind_like_the_watch_cache():
    store = Store(history_limit=1)
    start = store.resource_version
    store.create(namespace_object("a"))
    store.create({"kind": "Event", "metadata": {"name": "e", "namespace": "a"}})
    with store.watch("Namespace", str(start), lambda change: None) as (backlog, _):
        assert [c.type for c in backlog] == ["ADDED"]
