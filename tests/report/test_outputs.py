"""Which artifacts belong to a run, and that no request reaches outside them."""

from __future__ import annotations

import os

import pytest

from fanout.report import outputs
from fanout.storage import ArtifactStore

DAG, RUN = "fanout_render", "manual__2026-11-26T12:00:00+00:00"
PREFIX = "render/manual__2026-11-26T12_00_00_00_00"


@pytest.fixture
def store(tmp_path):
    store = ArtifactStore(str(tmp_path / "artifacts"))
    store.write_bytes(f"{PREFIX}/video/render.mp4", b"\x00\x00\x00\x18ftypmp42")
    store.write_bytes(f"{PREFIX}/video/contact_sheet.png", b"\x89PNG")
    store.commit(f"{PREFIX}/video", ["render.mp4", "contact_sheet.png"])
    store.write_bytes("render/other-run/video/render.mp4", b"another run's video")
    store.write_bytes("secrets.txt", b"outside every run")
    return store


def test_a_run_of_fanout_kind_keeps_its_artifacts_under_kind_and_run():
    assert outputs.run_prefix(DAG, RUN) == PREFIX


def test_a_file_of_the_run_resolves_to_its_path(store):
    assert outputs.resolve(store, DAG, RUN, "video/render.mp4") == f"{PREFIX}/video/render.mp4"


@pytest.mark.parametrize(
    "rel",
    [
        "../other-run/video/render.mp4",
        "video/../../other-run/video/render.mp4",
        "../../secrets.txt",
        "/etc/passwd",
        "video//render.mp4",
        "./video/render.mp4",
        "video\\..\\..\\secrets.txt",
        "video/render.mp4\0.png",
        "video/.render.mp4.1234.tmp",
        "video",  # a folder, not a file
        "video/missing.mp4",
        "",
    ],
)
def test_anything_but_a_file_inside_the_run_is_not_found(store, rel):
    with pytest.raises(outputs.ArtifactNotFound):
        outputs.resolve(store, DAG, RUN, rel)


def test_a_link_leading_out_of_the_run_is_not_found(store, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("not an artifact")
    os.symlink(outside, store.path(f"{PREFIX}/video/escape.txt"))
    os.symlink(store.path("render/other-run"), store.path(f"{PREFIX}/elsewhere"))
    with pytest.raises(outputs.ArtifactNotFound):
        outputs.resolve(store, DAG, RUN, "video/escape.txt")
    with pytest.raises(outputs.ArtifactNotFound):
        outputs.resolve(store, DAG, RUN, "elsewhere/video/render.mp4")


def test_an_object_store_takes_keys_literally_and_still_refuses_dot_dot():
    store = ArtifactStore("memory://fanout-report-test")
    store.write_bytes(f"{PREFIX}/video/render.mp4", b"mp4")
    store.write_bytes("secrets.txt", b"outside")
    assert outputs.resolve(store, DAG, RUN, "video/render.mp4") == f"{PREFIX}/video/render.mp4"
    for rel in ("../../secrets.txt", "video/../../../secrets.txt"):
        with pytest.raises(outputs.ArtifactNotFound):
            outputs.resolve(store, DAG, RUN, rel)


@pytest.mark.parametrize(
    ("rel", "media_type", "inline"),
    [
        ("video/render.mp4", "video/mp4", True),
        ("video/contact_sheet.png", "image/png", True),
        ("best/metrics.json", "application/json", True),
        ("notes/page.html", "application/octet-stream", False),
        ("chart.svg", "application/octet-stream", False),
        ("shards/x/features.parquet", "application/octet-stream", False),
    ],
)
def test_only_plain_media_and_data_are_shown_inline(rel, media_type, inline):
    assert outputs.media_type(rel) == (media_type, inline)


def test_collect_finds_the_video_the_contact_sheet_and_committed_units(store):
    store.write_bytes(f"{PREFIX}/chunks/chunk-0000/frame-00000.png", b"\x89PNG")  # not committed yet
    out = outputs.collect(store, DAG, RUN)
    assert out.video == "video/render.mp4" and out.contact_sheet == "video/contact_sheet.png"
    assert set(out.files) == {
        "video/render.mp4",
        "video/contact_sheet.png",
        "video/_SUCCESS.json",
        "chunks/chunk-0000/frame-00000.png",
    }
    assert out.units == ["video"]
    assert out.preprocessing is None and out.training is None


def test_loss_curves_come_from_the_ranking_or_from_each_trial_of_the_run(tmp_path):
    store = ArtifactStore(str(tmp_path))
    prefix = outputs.run_prefix("fanout_train", "r1")
    store.write_json(
        f"{prefix}/trials/trial-000/metrics.json", {"train_loss": [3.0, 2.0], "val_loss": [2.5, 2.1]}
    )
    store.write_json("train/other/trials/trial-009/metrics.json", {"val_loss": [9.9]})
    ranking = [
        {"trial": 0, "unit": f"{prefix}/trials/trial-000"},  # written before rankings kept curves
        {"trial": 1, "unit": f"{prefix}/trials/trial-001", "val_loss": [1.0], "train_loss": [1.5]},
        {"trial": 9, "unit": "train/other/trials/trial-009"},  # not this run's: never read
    ]
    store.write_json(f"{prefix}/best/metrics.json", {"best": {"trial": 1}, "ranking": ranking})
    training = outputs.collect(store, "fanout_train", "r1").training
    assert training["ranking"][0]["val_loss"] == [2.5, 2.1]
    assert training["ranking"][1]["val_loss"] == [1.0]
    assert "val_loss" not in training["ranking"][2]


def test_the_listing_puts_outputs_before_frames_and_says_how_many_it_left_out():
    files = {f"chunks/chunk-0000/frame-{i:05d}.png": 10 for i in range(5)} | {"video/render.mp4": 99}
    listed, more = outputs.listing(files, limit=3)
    assert listed[0] == ("video/render.mp4", 99) and len(listed) == 3 and more == 3


def test_a_partitioned_run_keeps_its_artifacts_under_its_partition(store):
    run, key = "backfill__2026-11-20T00:00:00+00:00__2026-11-20__ab", "2026-11-20"
    prefix = outputs.run_prefix(DAG, run, key)
    assert prefix == "render/partitions/2026-11-20/backfill__2026-11-20T00_00_00_00_00__2026-11-20__ab"
    store.write_bytes(f"{prefix}/video/render.mp4", b"\x00\x00\x00\x18ftypmp42")
    store.write_bytes(f"render/partitions/2026-11-21/{run}/video/render.mp4", b"another partition's video")
    assert outputs.collect(store, DAG, run, key).video == "video/render.mp4"
    assert outputs.resolve(store, DAG, run, "video/render.mp4", key) == f"{prefix}/video/render.mp4"
    with pytest.raises(outputs.ArtifactNotFound):
        outputs.resolve(store, DAG, run, "../../2026-11-21/" + run + "/video/render.mp4", key)


@pytest.mark.parametrize("key", ["../../..", "2026-11-20/../../x", "2026-1-5"])
def test_a_malformed_partition_key_serves_nothing(store, key):
    with pytest.raises(outputs.ArtifactNotFound):
        outputs.resolve(store, DAG, RUN, "video/render.mp4", key)
    out = outputs.collect(store, DAG, RUN, key)
    assert out.files == {} and "malformed" in out.problems[0]
