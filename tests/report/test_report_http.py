"""The report's endpoints on a real api-server: who may see them, what they serve, and that the
figures are Airflow's own."""

from __future__ import annotations

import json
import os

import pytest

from tests.e2e.conftest import SMALL_PARAMS
from tests.report.conftest import DENIED_DAG, OUTSIDER
from tests.report.reportkit import fetch, report_path, rest_figures, rest_tries


def endpoints(report) -> list[str]:
    dag_id, run_id = "fanout_render", report.runs["fanout_render"]
    return [
        report_path(dag_id, run_id),
        report_path(dag_id, run_id, "data.json"),
        report_path(dag_id, run_id, "artifacts", "video", "render.mp4"),
    ]


def test_anonymous_requests_are_refused_with_401(report):
    for path in endpoints(report):
        status, _, body = fetch(report.base_url, path)
        assert status == 401, (path, status)
        assert b"timeline" not in body and not body.startswith(b"\x00")
    # No API docs or schema is served: every route of the app needs a user.
    for path in ("/fanout/docs", "/fanout/openapi.json", "/fanout/redoc"):
        assert fetch(report.base_url, path)[0] == 404, path


def test_an_invalid_token_is_refused_with_403(report):
    token = report.client.token()
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    for path in endpoints(report):
        assert fetch(report.base_url, path, token=forged)[0] == 403, path
        assert fetch(report.base_url, path, Cookie=f"_token={forged}")[0] == 403, path


def test_a_user_who_may_not_read_the_dag_is_refused_with_403(report):
    outsider = report.client_for(OUTSIDER).token()
    for path in endpoints(report):
        assert fetch(report.base_url, path, token=outsider)[0] == 403, path


def test_a_user_who_may_read_the_dag_sees_its_report_without_the_runs_they_may_not_read(report):
    outsider = report.client_for(OUTSIDER).token()
    status, _, body = fetch(
        report.base_url, report_path("fanout_train", report.runs["fanout_train"], "data.json"), token=outsider
    )
    assert status == 200
    chained = [run["dag_id"] for run in json.loads(body)["pipeline"]]
    assert chained == ["fanout_preprocess", "fanout_train"], f"{DENIED_DAG} must be left out for {OUTSIDER}"
    admin = report.client.token()
    status, _, body = fetch(
        report.base_url, report_path("fanout_train", report.runs["fanout_train"], "data.json"), token=admin
    )
    assert [run["dag_id"] for run in json.loads(body)["pipeline"]] == [
        "fanout_preprocess",
        "fanout_train",
        "fanout_render",
    ]


def test_the_ui_login_cookie_is_accepted(report):
    token = report.client.token()
    status, headers, body = fetch(report.base_url, endpoints(report)[0], Cookie=f"_token={token}")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'id="timeline"' in body


def test_paths_outside_the_runs_artifacts_are_404(report):
    token = report.client.token()
    dag_id, run_id = "fanout_render", report.runs["fanout_render"]
    train_prefix = report.prefix("fanout_train")
    # A link inside the run's folder that leads out of it, and a file next to the runs.
    render_dir = report.artifact_root / report.prefix(dag_id)  # render/partitions/<key>/<run>
    os.symlink("/etc/passwd", render_dir / "passwd")
    (report.artifact_root / "secret.txt").write_text("not an artifact of any run")
    base = report_path(dag_id, run_id, "artifacts")
    for rel in [
        "../../secret.txt",
        "../../../../secret.txt",
        "%2E%2E/%2E%2E/%2E%2E/%2E%2E/secret.txt",
        "%2E%2E/%2E%2E/secret.txt",
        "..%2F..%2Fsecret.txt",
        f"../../../../{train_prefix}/best/metrics.json",
        "passwd",
        "video/..%2F..%2F..%2Fsecret.txt",
        "%2Fetc%2Fpasswd",
        "video",
        "video/does-not-exist.mp4",
    ]:
        status, _, body = fetch(report.base_url, f"{base}/{rel}", token=token)
        assert status == 404, (rel, status, body[:200])
        assert b"root:" not in body and b"not an artifact" not in body
    # A run that does not exist has no artifacts, even where a folder of that name exists.
    assert (
        fetch(
            report.base_url,
            report_path(dag_id, "no-such-run", "artifacts", "video", "render.mp4"),
            token=token,
        )[0]
        == 404
    )
    assert fetch(report.base_url, report_path(dag_id, "no-such-run"), token=token)[0] == 404


def test_the_video_streams_whole_and_in_ranges(report):
    token = report.client.token()
    dag_id, run_id = "fanout_render", report.runs["fanout_render"]
    video = (report.artifact_root / report.prefix(dag_id) / "video" / "render.mp4").read_bytes()
    path = report_path(dag_id, run_id, "artifacts", "video", "render.mp4")
    status, headers, body = fetch(report.base_url, path, token=token)
    assert status == 200 and body == video and headers["Content-Type"] == "video/mp4"
    status, headers, body = fetch(report.base_url, path, token=token, Range="bytes=100-299")
    assert status == 206 and body == video[100:300]
    assert headers["Content-Range"] == f"bytes 100-299/{len(video)}"
    assert fetch(report.base_url, path, token=token, Range=f"bytes={len(video)}-")[0] == 416


@pytest.mark.parametrize("dag_id", ["fanout_preprocess", "fanout_train", "fanout_render"])
def test_the_reports_figures_are_the_rest_apis(report, dag_id):
    run_id = report.runs[dag_id]
    status, _, body = fetch(
        report.base_url, report_path(dag_id, run_id, "data.json"), token=report.client.token()
    )
    assert status == 200
    data = json.loads(body)
    tries = rest_tries(report.client, dag_id, run_id)
    names = {
        (ti["task_id"], ti["map_index"]): ti["rendered_map_index"]
        for ti in report.client.task_instances(dag_id, run_id)
    }
    shown = {(ti["task_id"], ti["map_index"]): ti for ti in data["task_instances"]}
    assert set(shown) == set(tries)
    for key, rest in tries.items():
        ti = shown[key]
        assert ti["state"] == rest[-1]["state"]
        assert [t["try_number"] for t in ti["tries"]] == [t["try_number"] for t in rest]
        for mine, theirs in zip(ti["tries"], rest, strict=True):
            for field, rest_field in (
                ("start", "start_date"),
                ("end", "end_date"),
                ("queued", "queued_when"),
            ):
                assert (mine[field] or "")[:26] == (theirs[rest_field] or "").replace("Z", "+00:00")[:26], (
                    key,
                    field,
                )
        if key[1] >= 0:
            assert ti["label"] == names[key]
    figures = rest_figures(report.client, dag_id, run_id)
    summary = data["summary"]
    assert summary["tries"] == figures["tries"]
    assert summary["run_seconds"] == pytest.approx(figures["run_seconds"], abs=1e-3)
    assert summary["wall_seconds"] == pytest.approx(figures["wall_seconds"], abs=1e-3)
    assert summary["achieved_parallelism"] == pytest.approx(figures["achieved_parallelism"], rel=1e-3)


def test_mapped_task_instances_are_named_by_shard_trial_and_frames(report):
    names = {}
    for dag_id, run_id in report.runs.items():
        for ti in report.client.task_instances(dag_id, run_id):
            if ti["map_index"] >= 0:
                names.setdefault(ti["task_id"], []).append(ti["rendered_map_index"])
    n_shards = SMALL_PARAMS["fanout_preprocess"]["n_shards"]
    assert sorted(names["featurise_shard"]) == [f"shard-{i:05d}" for i in range(n_shards)]
    assert len(names["train_trial"]) == SMALL_PARAMS["fanout_train"]["n_trials"]
    assert all(name.startswith(f"trial {i}: lr ") for i, name in enumerate(sorted(names["train_trial"])))
    assert sorted(names["render_chunk"]) == ["frames 0-3", "frames 4-7", "frames 8-11"]


def test_the_plugin_is_listed_with_its_run_view(report):
    plugins = report.client.get("/plugins")["plugins"]
    (fanout,) = [p for p in plugins if p["name"] == "fanout"]
    assert [a["url_prefix"] for a in fanout["fastapi_apps"]] == ["/fanout"]
    (view,) = fanout["external_views"]
    assert view["destination"] == "dag_run" and view["href"] == "/fanout/runs/{DAG_ID}/{RUN_ID}"
