"""Artifacts over HTTP: whole files, single ranges (how browsers fetch and seek video), bad ranges."""

from __future__ import annotations

import warnings

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

with warnings.catch_warnings():  # starlette asks for httpx2, which Airflow's pins do not include
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from fanout.report.streaming import ByteRange, RangeNotSatisfiable, parse_range, response
from fanout.storage import ArtifactStore

DATA = bytes(range(256)) * 5000  # 1.28 MB: more than one block of the store's reader


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-", ByteRange(0, 1000)),
        ("bytes=0-99", ByteRange(0, 100)),
        ("bytes=900-5000", ByteRange(900, 1000)),
        ("bytes=-100", ByteRange(900, 1000)),
        ("bytes=-5000", ByteRange(0, 1000)),
        ("bytes=0-1,5-6", None),  # several ranges: the whole file, as HTTP allows
        ("items=0-1", None),
        ("bytes=abc", None),
    ],
)
def test_range_headers(header, expected):
    assert parse_range(header, 1000) == expected


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=5000-6000", "bytes=-0", "bytes=10-5"])
def test_unsatisfiable_ranges(header):
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, 1000)


@pytest.fixture
def client(tmp_path):
    store = ArtifactStore(str(tmp_path))
    store.write_bytes("run/video.mp4", DATA)

    def serve(request: Request):
        return response(store, "run/video.mp4", "video/mp4", True, request.headers.get("range"))

    return TestClient(Starlette(routes=[Route("/video", serve)]))


def test_the_whole_file_streams_with_its_length_and_accepts_ranges(client):
    answer = client.get("/video")
    assert answer.status_code == 200 and answer.content == DATA
    assert answer.headers["content-length"] == str(len(DATA))
    assert answer.headers["accept-ranges"] == "bytes"
    assert answer.headers["content-type"] == "video/mp4"
    assert answer.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    ("header", "start", "stop"),
    [
        ("bytes=0-1", 0, 2),
        ("bytes=1048570-1048585", 1048570, 1048586),
        ("bytes=-7", len(DATA) - 7, len(DATA)),
        ("bytes=1000000-", 1000000, len(DATA)),
    ],
)
def test_a_range_answers_206_with_exactly_those_bytes(client, header, start, stop):
    answer = client.get("/video", headers={"Range": header})
    assert answer.status_code == 206
    assert answer.content == DATA[start:stop]
    assert answer.headers["content-range"] == f"bytes {start}-{stop - 1}/{len(DATA)}"
    assert answer.headers["content-length"] == str(stop - start)


def test_a_range_past_the_end_answers_416_with_the_size(client):
    answer = client.get("/video", headers={"Range": f"bytes={len(DATA)}-"})
    assert answer.status_code == 416
    assert answer.headers["content-range"] == f"bytes */{len(DATA)}"
