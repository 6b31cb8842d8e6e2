"""Unit tests for the rendering workload (fanout.render); tiny frames keep the file fast on CPU."""

from __future__ import annotations

import hashlib
import io

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

from fanout.errors import BadInputError
from fanout.render import encode_video, plan_chunks, render_chunk, render_frame
from fanout.storage import ArtifactStore

# The pixels of render_frame(5, n_frames=24, width=32, height=18, samples=2, seed=7) on CPU.
# Update it only for an intended change of the kernel or the scene, and say so in the commit.
PINNED_FRAME_SHA256 = "5a25a57e728f9c7ba3d81c30cb13d90460d0918ea95f877c889688039a9c8086"

SMALL = {"n_frames": 24, "width": 48, "height": 27, "samples": 1, "seed": 7, "device": "cpu"}


def _sha256(image: torch.Tensor) -> str:
    return hashlib.sha256(image.numpy().tobytes()).hexdigest()


def _ripple_texture(size: int = 32) -> np.ndarray:
    axis = np.linspace(0.0, 6.0, size)
    return 0.5 + 0.5 * np.sin(axis)[:, None] * np.cos(axis)[None, :]


# -- render_frame ------------------------------------------------------------------------------
def test_tiny_frame_is_deterministic_and_matches_pinned_hash():
    kwargs = {"n_frames": 24, "width": 32, "height": 18, "samples": 2, "seed": 7, "device": "cpu"}
    first = render_frame(5, **kwargs)
    second = render_frame(5, **kwargs)
    assert first.shape == (18, 32, 3)
    assert first.dtype == torch.uint8
    assert first.device.type == "cpu"
    assert torch.equal(first, second)
    assert _sha256(first) == PINNED_FRAME_SHA256


def test_frames_differ_along_the_camera_path_and_are_not_flat():
    start = render_frame(0, **SMALL)
    later = render_frame(6, **SMALL)
    assert start.float().std() > 20  # sky, ground, spheres: far from a flat image
    assert (start.float() - later.float()).abs().mean() > 5


def test_seed_and_texture_change_the_image():
    plain = render_frame(3, **SMALL)
    textured = render_frame(3, **SMALL, texture=_ripple_texture())
    other_seed = render_frame(3, **{**SMALL, "seed": 8})
    assert (plain.float() - textured.float()).abs().mean() > 2
    assert not torch.equal(plain, other_seed)


def test_more_samples_change_the_image_but_not_its_shape():
    one = render_frame(2, **SMALL)
    four = render_frame(2, **{**SMALL, "samples": 4})
    assert one.shape == four.shape
    assert not torch.equal(one, four)


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        ({"width": 0}, "width"),
        ({"height": 10_000}, "height"),
        ({"samples": 0}, "samples"),
        ({"n_frames": 0}, "n_frames"),
        ({"seed": -1}, "seed"),
        ({"width": 32.5}, "width"),
        ({"samples": True}, "samples"),
        ({"frame_index": 24}, "frame_index"),
        ({"texture": np.zeros((4, 4, 3))}, "texture"),
        ({"texture": np.full((4, 4), np.nan)}, "texture"),
        ({"texture": np.full((4, 4), 2.0)}, "texture"),
    ],
)
def test_render_frame_rejects_bad_parameters(overrides, name):
    kwargs = {"frame_index": 0, **SMALL, **overrides}
    with pytest.raises(BadInputError, match=name):
        render_frame(kwargs.pop("frame_index"), **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_frame_is_close_to_the_cpu_frame():
    cpu = render_frame(4, **{**SMALL, "samples": 2})
    cuda = render_frame(4, **{**SMALL, "samples": 2, "device": "cuda"})
    assert cuda.device.type == "cpu"
    # Same random numbers; only float rounding differs, so few pixels may move by much.
    assert (cpu.float() - cuda.float()).abs().mean() < 1.0


# -- plan_chunks -------------------------------------------------------------------------------
@pytest.mark.parametrize(("n_frames", "chunk_size"), [(10, 3), (10, 10), (10, 25), (1, 1), (12, 4)])
def test_plan_chunks_covers_every_frame_once(n_frames, chunk_size):
    chunks = plan_chunks(n_frames, chunk_size)
    assert [c["chunk"] for c in chunks] == list(range(len(chunks)))
    covered = [frame for c in chunks for frame in range(c["start"], c["stop"])]
    assert covered == list(range(n_frames))
    assert all(0 < c["stop"] - c["start"] <= chunk_size for c in chunks)


@pytest.mark.parametrize(
    ("n_frames", "chunk_size", "name"),
    [
        (0, 3, "n_frames"),
        (-5, 3, "n_frames"),
        (10, 0, "chunk_size"),
        (10, "4", "chunk_size"),
        (1.5, 1, "n_frames"),
    ],
)
def test_plan_chunks_rejects_bad_parameters(n_frames, chunk_size, name):
    with pytest.raises(BadInputError, match=name):
        plan_chunks(n_frames, chunk_size)


# -- render_chunk ------------------------------------------------------------------------------
CHUNK = {"n_frames": 6, "width": 32, "height": 18, "samples": 1, "seed": 3, "device": "cpu"}


def test_render_chunk_commits_skips_and_repairs(tmp_path):
    store = ArtifactStore(str(tmp_path))
    first = render_chunk(store, "chunks/c1", start=2, stop=5, **CHUNK)
    names = ["frame-00002.png", "frame-00003.png", "frame-00004.png"]
    manifest = store.verified("chunks/c1")
    assert manifest is not None
    assert sorted(manifest["files"]) == names
    assert first["skipped"] is False
    assert (first["out_unit"], first["frames"], first["device"]) == ("chunks/c1", 3, "cpu")
    frame = Image.open(io.BytesIO(store.read_bytes("chunks/c1/frame-00003.png")))
    assert frame.size == (32, 18)
    # The PNG holds exactly what render_frame returns for that global frame index.
    assert np.array_equal(np.asarray(frame.convert("RGB")), render_frame(3, **CHUNK).numpy())

    second = render_chunk(store, "chunks/c1", start=2, stop=5, **CHUNK)
    assert second["skipped"] is True
    assert second["checksum"] == first["checksum"]

    original = store.read_bytes("chunks/c1/frame-00003.png")
    store.write_bytes("chunks/c1/frame-00003.png", b"not a png")
    assert store.verified("chunks/c1") is None
    repaired = render_chunk(store, "chunks/c1", start=2, stop=5, **CHUNK)
    assert repaired["skipped"] is False
    assert store.read_bytes("chunks/c1/frame-00003.png") == original
    assert repaired["checksum"] == first["checksum"]


def test_render_chunk_rerenders_when_parameters_change(tmp_path):
    store = ArtifactStore(str(tmp_path))
    first = render_chunk(store, "c", start=0, stop=1, **CHUNK)
    textured = render_chunk(store, "c", start=0, stop=1, **CHUNK, texture=_ripple_texture())
    assert textured["skipped"] is False
    assert textured["checksum"] != first["checksum"]
    assert store.verified("c")["params"]["texture_sha256"] is not None


@pytest.mark.parametrize(
    ("start", "stop", "name"),
    [(-1, 2, "start"), (6, 7, "start"), (3, 3, "stop"), (4, 2, "stop"), (0, 7, "stop")],
)
def test_render_chunk_rejects_bad_ranges(tmp_path, start, stop, name):
    with pytest.raises(BadInputError, match=name):
        render_chunk(ArtifactStore(str(tmp_path)), "c", start=start, stop=stop, **CHUNK)


# -- encode_video ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """Six frames rendered as chunks of four and two."""
    store = ArtifactStore(str(tmp_path_factory.mktemp("render")))
    units = []
    for chunk in plan_chunks(CHUNK["n_frames"], 4):
        unit = f"chunks/{chunk['chunk']:03d}"
        render_chunk(store, unit, start=chunk["start"], stop=chunk["stop"], **CHUNK)
        units.append(unit)
    return store, units


def test_encode_video_writes_a_readable_mp4_and_contact_sheet(rendered):
    store, units = rendered
    summary = encode_video(store, units, "video", fps=12)
    assert store.verified("video") is not None
    assert summary["frames"] == 6
    assert summary["duration_seconds"] == pytest.approx(0.5)
    assert summary["bytes"] > 0
    with store.local_copy(summary["video"]) as path:
        frames = iio.imread(path, plugin="FFMPEG")
    assert frames.shape == (6, 18, 32, 3)
    sheet = Image.open(io.BytesIO(store.read_bytes(summary["contact_sheet"])))
    assert sheet.format == "PNG"
    assert sheet.width > 32 and sheet.height > 18

    again = encode_video(store, units, "video", fps=12)
    assert again["skipped"] is True


def test_encode_video_pads_odd_frame_sizes(tmp_path):
    store = ArtifactStore(str(tmp_path))
    render_chunk(store, "odd", start=0, stop=2, **{**CHUNK, "n_frames": 2, "width": 21, "height": 11})
    summary = encode_video(store, ["odd"], "video")
    assert (summary["width"], summary["height"]) == (22, 12)
    with store.local_copy(summary["video"]) as path:
        assert iio.imread(path, plugin="FFMPEG").shape == (2, 12, 22, 3)


def test_encode_video_rejects_missing_unverified_or_duplicate_chunks(rendered, tmp_path):
    store, units = rendered
    with pytest.raises(BadInputError, match="4-5"):  # the last chunk left out
        encode_video(store, units[:1], "broken")
    with pytest.raises(BadInputError, match="chunks/404"):
        encode_video(store, [*units, "chunks/404"], "broken")
    with pytest.raises(BadInputError, match="two chunks"):
        encode_video(store, [*units, units[0]], "broken")
    with pytest.raises(BadInputError, match="fps"):
        encode_video(store, units, "broken", fps=0)
    # A chunk whose frame was altered after its commit no longer counts.
    copy = ArtifactStore(str(tmp_path))
    for unit in units:
        for name in [*store.verified(unit)["files"], "_SUCCESS.json"]:
            copy.write_bytes(f"{unit}/{name}", store.read_bytes(f"{unit}/{name}"))
    copy.write_bytes(f"{units[1]}/frame-00004.png", b"tampered")
    with pytest.raises(BadInputError, match=units[1]):
        encode_video(copy, units, "broken")
