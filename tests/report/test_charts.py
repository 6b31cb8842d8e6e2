"""The charts are matplotlib SVG with one addressable, titled element per bar, line or reason."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from xml.etree import ElementTree

from fanout.report import charts
from fanout.report.model import Limits, Pod, Run, Task, TaskInstance, Try
from fanout.report.timeline import summarise

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
SVG = "{http://www.w3.org/2000/svg}"


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def parse(svg: str) -> ElementTree.Element:
    return ElementTree.fromstring(svg)


def ids(svg: str) -> list[str]:
    return [e.get("id") for e in parse(svg).iter() if e.get("id")]


def run_with_a_retry() -> Run:
    plan = Try("plan", -1, 1, "success", queued=at(0), start=at(0.1), end=at(1))
    oom = Try(
        "work",
        0,
        1,
        "failed",
        queued=at(1),
        start=at(2),
        end=at(3),
        reason="OOMKilled",
        pod=Pod("fanout-work-abc", node="cpu-node-2", pool="cpu"),
    )
    again = Try("work", 0, 2, "success", queued=at(4), start=at(5), end=at(8))
    other = Try("work", 1, 1, "success", queued=at(1), start=at(1.5), end=at(6))
    tis = (
        TaskInstance("plan", -1, "success", "", (plan,)),
        TaskInstance("work", 0, "success", "shard-00000", (oom, again)),
        TaskInstance("work", 1, "success", "shard-00001", (other,)),
    )
    tasks = {"plan": Task("plan"), "work": Task("work", ("plan",), mapped=True)}
    return Run(
        "fanout_preprocess", "r", "success", "manual", at(0), at(0), at(9), tis, tasks, Limits(parallelism=2)
    )


def test_timeline_has_one_titled_run_bar_per_try():
    run = run_with_a_retry()
    svg = charts.timeline(run, summarise(run))
    bars = sorted(i for i in ids(svg) if i.startswith("timeline-run-"))
    assert bars == [
        "timeline-run-plan--1-1",
        "timeline-run-work-0-1",
        "timeline-run-work-0-2",
        "timeline-run-work-1-1",
    ]
    titles = {
        g.get("id"): g.find(f"{SVG}title").text for g in parse(svg).iter(f"{SVG}g") if g.get("id") in bars
    }
    assert "work [shard-00000], try 1: failed" in titles["timeline-run-work-0-1"]
    assert "OOMKilled" in titles["timeline-run-work-0-1"] and "cpu-node-2" in titles["timeline-run-work-0-1"]
    assert any(i.startswith("timeline-queued-work-0-2") for i in ids(svg))


def test_every_id_of_every_chart_on_a_page_is_unique():
    run = run_with_a_retry()
    page = [
        charts.timeline(run, summarise(run)),
        charts.loss_curves([{"trial": 0, "val_loss": [2.0, 1.0], "train_loss": [3.0, 1.5]}], 0),
        charts.drops({"duplicate": 3, "missing_value": 5}, 100),
    ]
    all_ids = [i for svg in page for i in ids(svg)]
    assert len(all_ids) == len(set(all_ids))
    for svg in page:  # every reference points at an id of the same chart
        own = set(ids(svg))
        assert set(re.findall(r"url\(#([^)]+)\)", svg)) <= own
    assert all(svg.startswith("<svg") and 'class="chart"' in svg[:300] for svg in page)


def test_loss_curves_draw_every_trial_and_mark_the_best_in_red():
    ranking = [
        {
            "trial": 2,
            "val_rmse": 2.1,
            "best_epoch": 3,
            "val_loss": [0.5, 0.3, 0.2],
            "train_loss": [0.6, 0.4, 0.3],
            "hyperparameters": {"lr": 0.007, "depth": 2, "hidden": 128},
        },
        {
            "trial": 0,
            "val_rmse": 3.0,
            "best_epoch": 2,
            "val_loss": [0.9, 0.8, 0.85],
            "train_loss": [1.0, 0.9, 0.8],
            "hyperparameters": {"lr": 0.003, "depth": 2, "hidden": 128},
        },
        {
            "trial": 1,
            "val_rmse": None,
            "best_epoch": 0,
            "val_loss": [None, None],
            "train_loss": [float("nan")],
            "hyperparameters": {"lr": 0.01, "depth": 3, "hidden": 64},
        },
    ]
    svg = charts.loss_curves(ranking, best_trial=2)
    root = parse(svg)
    lines = {g.get("id"): g for g in root.iter(f"{SVG}g") if (g.get("id") or "").startswith("loss-")}
    assert {"loss-val-trial-2", "loss-train-trial-2", "loss-val-trial-0", "loss-train-trial-0"} <= set(lines)
    assert not any("trial-1" in i for i in lines), "a diverged trial has no finite point to draw"
    best_path = lines["loss-val-trial-2"].find(f"{SVG}path")
    assert "#d62728" in best_path.get("style")
    assert "(best)" in lines["loss-val-trial-2"].find(f"{SVG}title").text
    assert "#d62728" not in lines["loss-val-trial-0"].find(f"{SVG}path").get("style")


def test_drops_has_a_bar_per_reason_most_first_with_its_share():
    svg = charts.drops({"duplicate": 30, "missing_value": 50, "unknown_zone": 0}, 1000)
    bars = [i for i in ids(svg) if i.startswith("drops-reason-")]
    assert bars == ["drops-reason-missing_value", "drops-reason-duplicate", "drops-reason-unknown_zone"]
    assert "missing value: 50 rows (5.00% of rows)" in svg


def test_pipeline_has_a_bar_per_chained_run():
    from fanout.report.runs import ChainedRun

    chain = [
        ChainedRun("fanout_preprocess", "m", "success", "manual", at(0), at(1), at(10), via=""),
        ChainedRun(
            "fanout_train", "a", "success", "asset_triggered", at(11), at(12), at(30), via="fanout_features"
        ),
        ChainedRun(
            "fanout_render", "b", "running", "asset_triggered", at(31), at(32), None, via="fanout_model"
        ),
    ]
    svg = charts.pipeline(chain)
    assert [i for i in ids(svg) if i.startswith("pipeline-run-")] == [
        "pipeline-run-fanout_preprocess",
        "pipeline-run-fanout_train",
        "pipeline-run-fanout_render",
    ]
    assert "triggered by fanout_features" in svg
