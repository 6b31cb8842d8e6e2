"""The featurised dataset as training reads it: one manifest merged from the shards' units.

``merge_stats`` (the preprocessing fan-in) reads the verified units ``fanout.daskrun``
committed, adds up their statistics and writes ``<out>/manifest.json``, the contract with
training (``fanout.train``) and what the run report shows:

* ``feature_columns``, ``target``;
* ``stats`` -- count, mean, std (ddof=0), min, max per column, to normalise with;
* ``files`` -- the feature Parquet files, in order: ``path``, ``rows_out``, ``sha256`` and the
  ``unit`` that made it; training reads and checks each;
* ``shards`` -- per raw shard: ``unit``, ``raw``, ``rows_in``, ``rows_out``, ``dropped`` (rows per
  reason in ``DROP_REASONS``), ``quality`` (its data quality gates' record) and its ``files``;
* ``rows_in``, ``rows_out``, ``dropped`` -- totals;
* ``quality`` -- the run-level gate (``fanout.quality.check_run``): the ``min_rows_kept``
  threshold, the share of rows kept overall, the outcome.
"""

from __future__ import annotations

from fanout.errors import BadInputError
from fanout.preprocess import (
    DROP_REASONS,
    FEATURE_COLUMNS,
    FEATURES_VERSION,
    TARGET,
    combine_stats,
    summarise_stats,
)
from fanout.quality import DEFAULT_MIN_ROWS_KEPT, check_run
from fanout.storage import ArtifactStore

MANIFEST_FILE = "manifest.json"


def merge_stats(
    store: ArtifactStore, units: list[str], out_prefix: str, min_rows_kept: float = DEFAULT_MIN_ROWS_KEPT
) -> dict:
    """Fan-in: combine per-shard units into ``out_prefix/manifest.json`` (training's contract).

    Every unit must be verified and made by this ``FEATURES_VERSION`` (BadInputError names the
    first that is not), and together they must pass the run-level data quality gate (at least
    ``min_rows_kept`` of their rows kept; BadInputError otherwise, and no manifest is written).
    The manifest is rewritten on every call: it is cheap and always reflects exactly ``units``.
    Returns a small summary, per-reason drop counts included.
    """
    if not units:
        raise BadInputError("merge_stats needs at least one featurised unit")
    files, shards, partials = [], [], []
    for unit in units:
        recorded = store.verified(unit)
        if recorded is None:
            raise BadInputError(f"featurised unit {store.uri(unit)} is missing or not verified")
        if recorded.get("features_version") != FEATURES_VERSION:
            raise BadInputError(
                f"featurised unit {store.uri(unit)} has features_version "
                f"{recorded.get('features_version')}, expected {FEATURES_VERSION}; re-run it"
            )
        partials.append(recorded["stats"])
        paths = [f"{unit}/{part['path']}" for part in recorded["parts"]]
        for path, part in zip(paths, recorded["parts"], strict=True):
            files.append(
                {
                    "unit": unit,
                    "path": path,
                    "rows_out": part["rows_out"],
                    "sha256": recorded["files"][part["path"]],
                }
            )
        shards.append(
            {
                "unit": unit,
                "raw": recorded["raw"],
                "rows_in": recorded["rows_in"],
                "rows_out": recorded["rows_out"],
                "dropped": recorded["dropped"],
                "quality": recorded["quality"],
                "files": paths,
            }
        )
    dropped = {reason: sum(shard["dropped"].get(reason, 0) for shard in shards) for reason in DROP_REASONS}
    quality = check_run(shards, min_rows_kept)
    manifest = {
        "feature_columns": FEATURE_COLUMNS,
        "target": TARGET,
        "stats": summarise_stats(combine_stats(partials)),
        "files": files,
        "shards": shards,
        "rows_in": sum(shard["rows_in"] for shard in shards),
        "rows_out": sum(shard["rows_out"] for shard in shards),
        "dropped": dropped,
        "quality": quality,
    }
    store.invalidate(out_prefix)
    store.write_json(f"{out_prefix}/{MANIFEST_FILE}", manifest)
    store.commit(out_prefix, [MANIFEST_FILE], rows_out=manifest["rows_out"], shards=len(shards))
    return {
        "manifest": f"{out_prefix}/{MANIFEST_FILE}",
        "shards": len(shards),
        "rows_in": manifest["rows_in"],
        "rows_out": manifest["rows_out"],
        "dropped": dropped,
        "quality": quality,
    }
