"""Artifact storage: atomic writes and verified units, on a local directory and an object store."""

from __future__ import annotations

import os
import re
import uuid

import pytest

from fanout.errors import BadInputError
from fanout.keys import KEY_PATTERN, check_key
from fanout.storage import MANIFEST, ArtifactStore, safe_key


@pytest.fixture(params=["local", "memory"])
def store(request, tmp_path):
    """The same tests on a local directory and on fsspec's in-memory object store."""
    if request.param == "local":
        return ArtifactStore(str(tmp_path))
    return ArtifactStore(f"memory://fanout-test-{uuid.uuid4().hex}")


def test_round_trip(store):
    store.write_json("a/b.json", {"x": 1})
    store.write_bytes("a/c.bin", b"\x00\x01")
    assert store.read_json("a/b.json") == {"x": 1}
    assert store.read_bytes("a/c.bin") == b"\x00\x01"
    assert store.listdir("a") == ["b.json", "c.bin"]
    assert store.listdir("missing") == []


def test_a_failed_write_leaves_the_old_file_and_no_temporary(store):
    store.write_bytes("unit/data.bin", b"old")
    with pytest.raises(RuntimeError), store.staged("unit/data.bin") as tmp:
        tmp.write_bytes(b"half of the new")
        raise RuntimeError("killed mid-write")
    assert store.read_bytes("unit/data.bin") == b"old"
    assert store.listdir("unit") == ["data.bin"]


def test_overwrite_replaces_whole_file(store):
    store.write_bytes("f.bin", b"a much longer first version")
    store.write_bytes("f.bin", b"short")
    assert store.read_bytes("f.bin") == b"short"


def test_committed_unit_verifies_until_a_file_changes_or_disappears(store):
    store.write_bytes("u/one.bin", b"1")
    store.write_bytes("u/two.bin", b"2")
    manifest = store.commit("u", ["one.bin", "two.bin"], rows=2)
    assert manifest["rows"] == 2
    assert store.verified("u") == manifest
    store.write_bytes("u/two.bin", b"tampered")
    assert store.verified("u") is None
    store.write_bytes("u/two.bin", b"2")
    assert store.verified("u") == manifest
    store.fs.rm_file(store.path("u/one.bin"))
    assert store.verified("u") is None


def test_uncommitted_or_invalidated_unit_is_not_verified(store):
    store.write_bytes("u/one.bin", b"1")
    assert store.verified("u") is None
    store.commit("u", ["one.bin"])
    store.invalidate("u")
    assert store.verified("u") is None
    assert MANIFEST not in store.listdir("u")


def test_corrupt_manifest_is_not_trusted(store):
    store.write_bytes(f"u/{MANIFEST}", b"{not json")
    assert store.verified("u") is None


def test_missing_artifact_error_names_the_uri(store):
    with pytest.raises(FileNotFoundError, match=r"missing\.json"):
        store.read_json("missing.json")
    with pytest.raises(FileNotFoundError, match=r"missing\.bin"), store.local_copy("missing.bin"):
        pass


def test_local_copy_gives_readable_file(store):
    store.write_bytes("x/y.bin", b"payload")
    with store.local_copy("x/y.bin") as path:
        assert path.read_bytes() == b"payload"


def test_local_store_writes_through_a_rename_in_the_same_directory(tmp_path, monkeypatch):
    """Same directory = same filesystem, so the final rename is atomic."""
    store = ArtifactStore(str(tmp_path))
    renames = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (renames.append((src, dst)), real_replace(src, dst)))
    store.write_bytes("d/file.bin", b"x")
    ((src, dst),) = renames
    assert os.path.dirname(src) == os.path.dirname(dst) == str(tmp_path / "d")


@pytest.mark.parametrize(
    ("run_id", "key"),
    [
        ("manual__2026-11-22T18:00:00+00:00", "manual__2026-11-22T18_00_00_00_00"),
        ("asset_triggered__x_AbC9", "asset_triggered__x_AbC9"),
        ("../../etc", "etc"),
        ("..", "_"),
    ],
)
def test_safe_key_makes_run_ids_path_components(run_id, key):
    assert safe_key(run_id) == key
    assert "/" not in safe_key(run_id)


# -- user-supplied paths never leave the artifact root -----------------------------------------

ESCAPES = [
    "../outside/ds",
    "a/../../b",
    "..",
    "a/..",
    "/etc/passwd",
    "s3://other-bucket/x",
    "c:/x",
    "a\\..\\b",
]


@pytest.mark.parametrize("rel", ESCAPES)
def test_every_store_operation_refuses_a_path_outside_the_root(tmp_path, rel):
    store = ArtifactStore(str(tmp_path / "root"))
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "ds").write_text("secret")
    for operation in (store.exists, store.read_bytes, store.listdir, store.verified, store.uri):
        with pytest.raises(BadInputError, match="relative to the artifact root"):
            operation(rel)
    with pytest.raises(BadInputError):
        store.write_bytes(rel, b"x")
    assert (tmp_path / "outside" / "ds").read_text() == "secret"


@pytest.mark.parametrize("rel", ESCAPES)
def test_the_param_pattern_refuses_what_the_store_refuses(rel):
    assert not re.match(KEY_PATTERN, rel)


@pytest.mark.parametrize(
    "rel", ["datasets/rides/seed7", "preprocess/run_1/merged/manifest.json", "a..b/c", ""]
)
def test_ordinary_relative_keys_pass_both_checks(rel):
    assert re.match(KEY_PATTERN, rel)
    assert check_key(rel) == rel


def test_the_error_names_what_was_given():
    with pytest.raises(BadInputError, match=r"param 'model' '\.\./m\.pt' contains '\.\.'"):
        check_key("../m.pt", what="param 'model'")


def test_commit_takes_a_writers_checksum_after_checking_the_size(store):
    """Files written by another process (a Dask worker) are committed without reading them back."""
    import hashlib

    store.write_bytes("unit/part.bin", b"written elsewhere")
    digest = hashlib.sha256(b"written elsewhere").hexdigest()
    manifest = store.commit("unit", ["part.bin"], written={"part.bin": {"sha256": digest, "bytes": 17}})
    assert manifest["files"] == {"part.bin": digest}
    assert store.verified("unit") is not None

    with pytest.raises(OSError, match=r"part\.bin has 17 bytes, its writer recorded 18"):
        store.commit("unit", ["part.bin"], written={"part.bin": {"sha256": digest, "bytes": 18}})


def test_move_replaces_the_target_and_remove_takes_a_whole_prefix(store):
    store.write_bytes("staging/a.bin", b"new")
    store.write_bytes("final/a.bin", b"old")
    store.move("staging/a.bin", "final/a.bin")
    assert store.read_bytes("final/a.bin") == b"new"
    assert not store.exists("staging/a.bin")

    store.write_bytes("staging/b/c.bin", b"x")
    store.remove("staging", recursive=True)
    assert not store.exists("staging/b/c.bin")
    store.remove("never-there")  # nothing to do
