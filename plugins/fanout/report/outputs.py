"""A run's artifacts: where they are, which ones the report shows, and which paths it serves.

A fanout DAG ``fanout_<kind>`` writes everything of a run under ``<kind>/partitions/<key>/<run>/``
(a run with a partition key) or ``<kind>/<run>/`` of the artifact root (``fanout.partitions.run_prefix``):
that folder is all the report serves for the run.
A requested path is served only if it names a file inside it (no ``..``, no absolute path, no
hidden or staged file, no link leading out on a local store); anything else is "not found",
exactly like a file that does not exist, so the answer tells nothing about the rest of the store.

The outputs shown, where present (their producers own the layout, see the README):

* ``merged/manifest.json`` (preprocessing): rows in and out, rows dropped per reason, statistics;
* ``best/metrics.json`` (training): the ranking and every trial's per-epoch losses;
* ``video/render.mp4`` and ``video/contact_sheet.png`` (rendering).
"""

from __future__ import annotations

import json
import mimetypes
from dataclasses import dataclass, field
from typing import Any

from fanout import partitions
from fanout.errors import BadInputError
from fanout.storage import MANIFEST, ArtifactStore

PREPROCESS_MANIFEST = "merged/manifest.json"
TRAIN_METRICS = "best/metrics.json"
VIDEO = "video/render.mp4"
CONTACT_SHEET = "video/contact_sheet.png"
LISTED_FILES = 400
"""Files listed on the page at most (a long render has one PNG per frame)."""

# Served inline: what a browser shows without running anything. Everything else is a download.
INLINE_TYPES = {
    "video/mp4",
    "image/png",
    "image/jpeg",
    "application/json",
    "text/plain",
    "text/csv",
}


class ArtifactNotFound(LookupError):
    pass


def run_prefix(dag_id: str, run_id: str, partition_key: str | None = None) -> str:
    """Where a run of ``fanout_<kind>`` keeps its artifacts; ArtifactNotFound for a malformed key."""
    try:
        return partitions.run_prefix(dag_id.removeprefix("fanout_"), run_id, partition_key)
    except BadInputError:
        raise ArtifactNotFound(partition_key) from None


def resolve(
    store: ArtifactStore, dag_id: str, run_id: str, rel: str, partition_key: str | None = None
) -> str:
    """The store path of ``rel`` inside the run's artifacts; ArtifactNotFound for anything else."""
    prefix = run_prefix(dag_id, run_id, partition_key)
    name = rel.split("/")[-1] if rel else ""
    if not rel or name.startswith(".") or not store.contains(prefix, rel):
        raise ArtifactNotFound(rel)
    path = f"{prefix}/{rel}"
    try:
        store.size(path)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError):
        raise ArtifactNotFound(rel) from None
    return path


def media_type(rel: str) -> tuple[str, bool]:
    """(Content-Type, whether a browser may show it inline)."""
    kind = mimetypes.guess_type(rel)[0] or "application/octet-stream"
    if kind in INLINE_TYPES:
        return kind, True
    return "application/octet-stream", False


@dataclass
class Outputs:
    prefix: str
    files: dict[str, int] = field(default_factory=dict)
    units: list[str] = field(default_factory=list)
    """Unit folders committed (with a ``_SUCCESS.json``): listed, not re-hashed on every view."""
    preprocessing: dict[str, Any] | None = None
    training: dict[str, Any] | None = None
    video: str | None = None
    contact_sheet: str | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(self.files.values())


def _json(store: ArtifactStore, path: str, problems: list[str]) -> Any | None:
    try:
        return store.read_json(path)
    except FileNotFoundError:
        return None
    except (ValueError, OSError) as err:
        problems.append(f"{path} could not be read: {err}")
        return None


def collect(store: ArtifactStore, dag_id: str, run_id: str, partition_key: str | None = None) -> Outputs:
    """What the run wrote, and the manifests the report shows."""
    try:
        prefix = run_prefix(dag_id, run_id, partition_key)
    except ArtifactNotFound:
        return Outputs(prefix="", problems=[f"the run's partition key {partition_key!r} is malformed"])
    out = Outputs(prefix=prefix, files=store.files(prefix))
    out.units = [
        rel.removesuffix(MANIFEST).rstrip("/") for rel in out.files if rel.rsplit("/", 1)[-1] == MANIFEST
    ]
    if PREPROCESS_MANIFEST in out.files:
        out.preprocessing = _json(store, f"{prefix}/{PREPROCESS_MANIFEST}", out.problems)
    if TRAIN_METRICS in out.files:
        out.training = _json(store, f"{prefix}/{TRAIN_METRICS}", out.problems)
        if out.training:
            _fill_curves(store, prefix, out.training, out.problems)
    if VIDEO in out.files:
        out.video = VIDEO
    if CONTACT_SHEET in out.files:
        out.contact_sheet = CONTACT_SHEET
    return out


def _fill_curves(store: ArtifactStore, prefix: str, metrics: dict[str, Any], problems: list[str]) -> None:
    """Per-epoch losses for every ranked trial; older rankings lack them, the trials have them."""
    for entry in metrics.get("ranking") or []:
        unit = entry.get("unit")
        if "val_loss" in entry or not isinstance(unit, str) or not unit.startswith(f"{prefix}/"):
            continue
        if not store.contains(prefix, unit.removeprefix(f"{prefix}/")):
            continue
        trial = _json(store, f"{entry['unit']}/metrics.json", problems) or {}
        for key in ("train_loss", "val_loss", "val_rmse_per_epoch"):
            entry.setdefault(key, trial.get(key) or [])


def listing(files: dict[str, int], limit: int = LISTED_FILES) -> tuple[list[tuple[str, int]], int]:
    """The files to list (manifests and outputs before frames), and how many were left out."""

    def order(item: tuple[str, int]) -> tuple[int, str]:
        rel = item[0]
        frames = rel.rsplit("/", 1)[-1].startswith("frame-")
        return (1 if frames else 0, rel)

    items = sorted(files.items(), key=order)
    return items[:limit], max(0, len(items) - limit)


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True)
