"""The report page renders for every state a run can be in, not only for finished pipelines."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser

from fanout.report import app, outputs
from fanout.report.model import Limits, Pod, Run, Task, TaskInstance, Try
from fanout.report.timeline import summarise

T0 = datetime.now(UTC) - timedelta(seconds=30)


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


class _Page:
    """What the page template reads of a ``Report``, without a database behind it."""

    def __init__(self, run: Run, out: outputs.Outputs, problems: list[str] | None = None):
        self.run, self.outputs, self.chain, self.problems = run, out, [], problems or []
        self.summary = summarise(run)

    def url(self, dag_id, run_id, *rest):
        return "/fanout/runs/" + "/".join([dag_id, run_id, *rest])

    def artifact_url(self, rel):
        return self.url(self.run.dag_id, self.run.run_id, "artifacts", rel)


class _Ids(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids = []

    def handle_starttag(self, tag, attrs):
        self.ids += [v for k, v in attrs if k == "id"]


def ids_of(html: str) -> list[str]:
    parser = _Ids()
    parser.feed(html)
    return parser.ids


def test_a_run_still_running_with_a_retry_on_kubernetes_and_no_outputs_yet():
    oom = Try(
        "work",
        0,
        1,
        "failed",
        queued=at(1),
        start=at(5),
        end=at(9),
        executor="KubernetesExecutor",
        reason="The worker pod ran out of memory (OOMKilled).",
        pod=Pod("fanout-work-x", node="cpu-node-1", pool="cpu"),
    )
    tis = (
        TaskInstance(
            "plan",
            -1,
            "success",
            "",
            (Try("plan", -1, 1, "success", queued=at(0), start=at(0.5), end=at(1)),),
        ),
        TaskInstance(
            "work",
            0,
            "running",
            "shard-00000",
            (oom, Try("work", 0, 2, "running", queued=at(11), start=at(14), executor="KubernetesExecutor")),
        ),
        TaskInstance("work", 1, "queued", "#1", (Try("work", 1, 1, "queued", queued=at(1)),)),
        TaskInstance("merge", -1, None, "", ()),
    )
    tasks = {
        "plan": Task("plan"),
        "work": Task("work", ("plan",), mapped=True),
        "merge": Task("merge", ("work",)),
    }
    run = Run(
        "fanout_preprocess", "r", "running", "manual", at(0), at(0), None, tis, tasks, Limits(parallelism=2)
    )
    html = app._render_page(
        _Page(run, outputs.Outputs(prefix="preprocess/r"), ["No pod details (Forbidden)"])
    )
    found = ids_of(html)
    assert {"timeline-run-work-0-1", "timeline-run-work-0-2", "retries", "problems"} <= set(found)
    assert len(found) == len(set(found)), "ids on the page are unique"
    assert "OOMKilled" in html and "cpu-node-1" in html and "pod start" in html
    assert "No artifacts under" in html


def test_a_finished_run_shows_its_outputs():
    done = Try("encode", -1, 1, "success", queued=at(0), start=at(1), end=at(2))
    run = Run(
        "fanout_render",
        "r",
        "success",
        "manual",
        at(0),
        at(0),
        at(3),
        (TaskInstance("encode", -1, "success", "", (done,)),),
        {"encode": Task("encode")},
    )
    out = outputs.Outputs(
        prefix="render/r",
        files={"video/render.mp4": 10, "video/contact_sheet.png": 5},
        video="video/render.mp4",
        contact_sheet="video/contact_sheet.png",
    )
    html = app._render_page(_Page(run, out))
    assert '<source src="/fanout/runs/fanout_render/r/artifacts/video/render.mp4" type="video/mp4">' in html
    assert 'id="contact-sheet"' in html and 'id="no-retries"' in html


def test_a_sweep_that_lost_a_trial_names_it_under_the_ranking():
    done = Try("select_best", -1, 1, "success", queued=at(0), start=at(1), end=at(2))
    run = Run(
        "fanout_train",
        "r",
        "success",
        "manual",
        at(0),
        at(0),
        at(3),
        (TaskInstance("select_best", -1, "success", "", (done,)),),
        {"select_best": Task("select_best")},
    )
    hp = {"lr": 0.003, "depth": 2, "hidden": 64, "activation": "relu", "batch_size": 256}
    training = {  # as fanout.train.select_best writes metrics.json
        "best": {"trial": 0, "val_rmse": 2.5, "best_epoch": 3},
        "n_trials": 1,
        "n_planned": 2,
        "min_success_ratio": 0.5,
        "ranking": [{"rank": 1, "trial": 0, "val_rmse": 2.5, "best_epoch": 3, "hyperparameters": hp}],
        "failed_trials": [
            {
                "unit": "train/r/trials/trial-001",
                "trial": 1,
                "name": "trial 1 (lr 0.02, 3x64 gelu, batch 256)",
            }
        ],
    }
    html = app._render_page(_Page(run, outputs.Outputs(prefix="train/r", training=training)))
    assert "1 of 2 trials failed and are not ranked (the sweep went on with at least 50% of them)" in html
    assert '<li data-trial="1"><code>trial 1 (lr 0.02, 3x64 gelu, batch 256)</code></li>' in html
