"""The workloads chained without Airflow, on an object store (fsspec memory://) instead of a directory.

In a cluster FANOUT_ARTIFACT_ROOT is an s3:// or gs:// URI; this proves every read and write
goes through the store (no stray local paths) and that the hand-offs between workloads hold.
"""

from __future__ import annotations

import uuid

from fanout import daskrun, datasets, featureset, render, train
from fanout.storage import ArtifactStore


def test_preprocess_train_render_on_an_object_store(monkeypatch):
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    store = ArtifactStore(f"memory://fanout-{uuid.uuid4().hex}")
    assert not store.is_local

    spec = datasets.SyntheticSpec(n_shards=2, rows_per_shard=4_000, seed=1, row_group_rows=1_000)
    shards = datasets.generate_dataset(store, "raw", spec)
    # No DASK_SCHEDULER_ADDRESS: each shard's graph runs in this process, where memory:// lives.
    units = [
        daskrun.featurise_shard(store, s, f"pre/shards/{i}", partition_rows=2_000)["out_unit"]
        for i, s in enumerate(shards)
    ]
    merged = featureset.merge_stats(store, units, "pre/merged")
    assert merged["rows_in"] == 8_000

    trials = train.plan_trials(2, epochs=2, seed=0)
    results = [
        train.train_trial(store, "pre/merged/manifest.json", t, f"tr/{t['trial']}", device="cpu")
        for t in trials
    ]
    best = train.select_best(store, [r["out_unit"] for r in results], "tr/best")
    assert store.verified("tr/best") is not None

    texture = train.prediction_surface(store, "tr/best/model.pt", resolution=16)
    chunks = [
        render.render_chunk(
            store,
            f"re/{c['chunk']}",
            start=c["start"],
            stop=c["stop"],
            n_frames=4,
            width=32,
            height=18,
            samples=1,
            seed=0,
            texture=texture,
            device="cpu",
        )["out_unit"]
        for c in render.plan_chunks(4, 2)
    ]
    video = render.encode_video(store, chunks, "re/video", fps=4)
    assert video["frames"] == 4
    assert store.verified("re/video") is not None
    assert best["val_rmse"] == min(r["val_rmse"] for r in results)
