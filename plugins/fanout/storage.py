"""Artifact storage: one base location, atomic writes, verified outputs.

The base is a local directory (the embedded default) or any fsspec URI (``s3://``,
``gs://``, ``abfs://``) in a cluster; all paths below are relative to it. Every write goes
to a temporary name first and is committed with a rename (local) or a single object PUT
(object stores, where a PUT is atomic), so a reader never sees half a file and a retried
task simply overwrites its own output.

A unit of output (a shard, a trial, a chunk of frames) is *verified* once its
``_SUCCESS.json`` manifest exists and every file it lists still has the recorded SHA-256.
The manifest is written last, so its presence means the whole unit was committed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Generator, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fanout.errors import BadInputError
from fanout.keys import check_key
from fanout.settings import settings

MANIFEST = "_SUCCESS.json"
_CHUNK = 1 << 20


def safe_key(text: str) -> str:
    """A path component for a run id like ``manual__2026-11-22T18:00:00+00:00``."""
    # Strip dots too, so ".." can never become a path component.
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "_"


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


class ArtifactStore:
    """Read and atomically write artifacts under one base location."""

    def __init__(self, root: str | None = None):
        import fsspec  # with its backends (s3fs, boto3) only where a store is opened

        self.root_uri = (root or settings().artifact_root).rstrip("/")
        self.fs, self._root = fsspec.core.url_to_fs(self.root_uri)
        self.is_local = "file" in (
            self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        )

    def __repr__(self) -> str:
        return f"ArtifactStore({self.root_uri!r})"

    # -- paths ---------------------------------------------------------------------------
    def path(self, rel: str) -> str:
        """The filesystem path (without protocol) of ``rel``, which must stay inside the root."""
        check_key(rel)
        return f"{self._root}/{rel.rstrip('/')}" if rel else self._root

    def uri(self, rel: str) -> str:
        """The full URI of ``rel``, for messages and for readers outside fanout."""
        check_key(rel)
        return f"{self.root_uri}/{rel.rstrip('/')}"

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.path(rel))

    def listdir(self, rel: str) -> list[str]:
        """Names directly under ``rel`` now (empty if it does not exist).

        Never a cached listing (s3fs keeps one per folder): other processes write here too.
        """
        self.fs.invalidate_cache(self.path(rel))
        try:
            entries = self.fs.ls(self.path(rel), detail=False)
        except FileNotFoundError:
            return []
        return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in entries)

    # -- writing -------------------------------------------------------------------------
    @contextmanager
    def staged(self, rel: str, suffix: str = "") -> Generator[Path, None, None]:
        """Yield a local temporary path; on clean exit it becomes ``rel`` atomically.

        On an exception the temporary file is removed and ``rel`` is left as it was.
        """
        final = self.path(rel)
        if self.is_local:
            parent = os.path.dirname(final)
            os.makedirs(parent, exist_ok=True)
            tmp = Path(parent) / f".{os.path.basename(final)}.{uuid.uuid4().hex}.tmp{suffix}"
        else:
            tmp = Path(tempfile.mkdtemp(prefix="fanout-")) / (os.path.basename(final) + suffix)
        try:
            yield tmp
            if self.is_local:
                os.replace(tmp, final)
            else:
                self.fs.put_file(str(tmp), final)
        finally:
            if self.is_local:
                tmp.unlink(missing_ok=True)
            else:
                shutil.rmtree(tmp.parent, ignore_errors=True)

    def write_bytes(self, rel: str, data: bytes) -> None:
        with self.staged(rel) as tmp:
            tmp.write_bytes(data)

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())

    # -- reading -------------------------------------------------------------------------
    def read_bytes(self, rel: str) -> bytes:
        try:
            return self.fs.cat_file(self.path(rel))
        except FileNotFoundError:
            raise FileNotFoundError(f"artifact not found: {self.uri(rel)}") from None

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_bytes(rel))

    def size(self, rel: str) -> int:
        """Bytes in the file ``rel``; FileNotFoundError if it is not a file."""
        path = self.path(rel)
        if not self.fs.isfile(path):
            raise FileNotFoundError(f"artifact not found: {self.uri(rel)}")
        return int(self.fs.size(path))

    def iter_bytes(self, rel: str, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        """The bytes of ``rel`` from ``start`` (``length`` of them, or to the end), in blocks.

        For serving artifacts over HTTP (range requests) without holding a video in memory.
        """
        remaining = length
        with self.fs.open(self.path(rel), "rb") as fh:
            fh.seek(start)
            while remaining is None or remaining > 0:
                block = fh.read(_CHUNK if remaining is None else min(_CHUNK, remaining))
                if not block:
                    return
                if remaining is not None:
                    remaining -= len(block)
                yield block

    def files(self, rel: str) -> dict[str, int]:
        """Every file under ``rel`` (paths relative to it) with its size; staged temporaries excluded."""
        base = self.path(rel).rstrip("/")
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return {}
        out = {}
        for path, info in found.items():
            name = path[len(base) :].lstrip("/") if path.startswith(base) else path
            if name and not any(part.startswith(".") for part in name.split("/")):
                out[name] = int(info.get("size") or 0)
        return dict(sorted(out.items()))

    def contains(self, prefix: str, rel: str) -> bool:
        """Whether ``rel`` really lies under ``prefix``: a plain key, and on a local store no link out."""
        try:
            check_key(rel)
        except BadInputError:
            return False
        if any(part in ("", ".") for part in rel.split("/")):
            return False
        if not self.is_local:
            return True  # object stores have no links; keys are taken literally
        real_prefix = os.path.realpath(self.path(prefix))
        return os.path.realpath(self.path(f"{prefix}/{rel}")).startswith(real_prefix + os.sep)

    @contextmanager
    def local_copy(self, rel: str) -> Generator[Path, None, None]:
        """A local path to read ``rel`` from (the file itself when the store is local)."""
        if not self.exists(rel):
            raise FileNotFoundError(f"artifact not found: {self.uri(rel)}")
        if self.is_local:
            yield Path(self.path(rel))
            return
        tmpdir = Path(tempfile.mkdtemp(prefix="fanout-"))
        try:
            local = tmpdir / os.path.basename(rel)
            self.fs.get_file(self.path(rel), str(local))
            yield local
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)

    def sha256(self, rel: str) -> str:
        digest = hashlib.sha256()
        with self.fs.open(self.path(rel), "rb") as fh:
            while block := fh.read(_CHUNK):
                digest.update(block)
        return digest.hexdigest()

    # -- verified units ------------------------------------------------------------------
    def commit(
        self, unit: str, files: list[str], *, written: Mapping[str, Mapping] | None = None, **extra: Any
    ) -> dict:
        """Record ``files`` (relative to ``unit``) with their checksums; the unit is then verified.

        Call it after every file of the unit has been written; ``extra`` is stored in the
        manifest (row counts, metrics) so fan-in tasks can read it without opening data files.
        ``written`` maps a file to the ``{"sha256", "bytes"}`` its writer recorded while it still
        held the bytes (another process: a Dask worker, a generating task); such a file is checked
        by its size instead of being read back, and a mismatch raises ``OSError``.
        """
        written = written or {}
        digests = {}
        for name in sorted(files):
            record = written.get(name)
            if record is None:
                digests[name] = self.sha256(f"{unit}/{name}")
                continue
            size = self.size(f"{unit}/{name}")
            if size != record["bytes"]:
                raise OSError(
                    f"{self.uri(f'{unit}/{name}')} has {size} bytes, its writer recorded {record['bytes']}"
                )
            digests[name] = record["sha256"]
        manifest = {"files": digests, **extra}
        self.write_json(f"{unit}/{MANIFEST}", manifest)
        return manifest

    def verified(self, unit: str) -> dict | None:
        """The unit's manifest if it was committed and every file still matches, else None."""
        try:
            manifest = self.read_json(f"{unit}/{MANIFEST}")
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        for name, digest in manifest.get("files", {}).items():
            rel = f"{unit}/{name}"
            if not self.exists(rel) or self.sha256(rel) != digest:
                return None
        return manifest

    def move(self, src: str, dst: str) -> None:
        """Rename ``src`` to ``dst`` (replacing it): a rename on a directory, a server-side copy on object stores."""
        if self.is_local:
            os.makedirs(os.path.dirname(self.path(dst)), exist_ok=True)
            os.replace(self.path(src), self.path(dst))
        else:
            self.fs.mv(self.path(src), self.path(dst))

    def remove(self, rel: str, recursive: bool = False) -> None:
        """Delete ``rel`` (a file, or with ``recursive`` a whole prefix) if it exists."""
        path = self.path(rel)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=recursive)

    def invalidate(self, unit: str) -> None:
        """Forget a unit's commit (before rewriting it), so a crash mid-rewrite is not trusted."""
        path = self.path(f"{unit}/{MANIFEST}")
        if self.fs.exists(path):
            self.fs.rm_file(path)
