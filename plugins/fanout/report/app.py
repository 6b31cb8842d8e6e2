"""The report's routes, mounted by the api-server under ``/fanout`` (``plugins/fanout_plugin.py``).

* ``GET /fanout/runs/{dag_id}/{run_id}`` -- the report page (the "Fanout report" tab of a run);
* ``GET /fanout/runs/{dag_id}/{run_id}/data.json`` -- the same figures as JSON;
* ``GET /fanout/runs/{dag_id}/{run_id}/artifacts/{path}`` -- a file of the run's artifacts,
  streamed from the artifact root (range requests answered: the video seeks).

Every route needs an Airflow user who may read that DAG's runs (``fanout.report.auth``); the app
has no OpenAPI or docs routes, so nothing here answers anonymously.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from airflow.api_fastapi.common.db.common import SessionDep
from fastapi import APIRouter, FastAPI, Header, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse

from fanout.report import auth, charts, kube, outputs, runs, streaming, timeline
from fanout.storage import ArtifactStore

TEMPLATES = Path(__file__).with_name("templates")
_PAGE_HEADERS = {
    "Cache-Control": "private, no-cache",
    "X-Content-Type-Options": "nosniff",
    # The page is self-contained: inline SVG charts and style, media from this app only.
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; media-src 'self'; "
        "frame-ancestors 'self'; base-uri 'none'; form-action 'none'"
    ),
}


def _store() -> ArtifactStore:
    return ArtifactStore()


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value


class Report:
    """Everything one page shows, gathered once per request."""

    def __init__(self, request: Request, session, dag_id: str, run_id: str, user: Any):
        self.problems: list[str] = []

        def pods(dag: str, run: str, hostnames: dict) -> dict:
            return kube.pods_of_run(dag, run, hostnames, self.problems)

        try:
            self.run = runs.load_run(session, dag_id, run_id, pods=pods)
            chain = runs.pipeline(session, dag_id, run_id)
        except runs.RunNotFound:
            raise HTTPException(404, f"No run {run_id!r} of DAG {dag_id!r}") from None
        # A chained run of a DAG this user may not read is left out, not shown.
        self.chain = [c for c in chain if (c.dag_id == dag_id) or auth.may_read(user, c.dag_id)]
        self.summary = timeline.summarise(self.run)
        self.outputs = outputs.collect(_store(), dag_id, run_id, self.run.partition_key)
        self.problems += self.outputs.problems
        self.base = request.scope.get("root_path", "").rstrip("/")

    def url(self, dag_id: str, run_id: str, *rest: str) -> str:
        parts = [quote(dag_id, safe=""), quote(run_id, safe=""), *rest]
        return f"{self.base}/runs/" + "/".join(parts)

    def artifact_url(self, rel: str) -> str:
        return self.url(self.run.dag_id, self.run.run_id, "artifacts", quote(rel))

    def data(self) -> dict[str, Any]:
        out = self.outputs
        return _jsonable(
            {
                "dag_id": self.run.dag_id,
                "run_id": self.run.run_id,
                "state": self.run.state,
                "run_type": self.run.run_type,
                "queued": self.run.queued,
                "start": self.run.start,
                "end": self.run.end,
                "summary": self.summary,
                "task_instances": [
                    {
                        "task_id": ti.task_id,
                        "map_index": ti.map_index,
                        "label": ti.label,
                        "state": ti.state,
                        "size": ti.size,
                        "node_pool": ti.node_pool,
                        "airflow_pool": ti.airflow_pool,
                        "run_seconds": ti.run_seconds,
                        "tries": ti.tries,
                    }
                    for ti in self.run.task_instances
                ],
                "pipeline": self.chain,
                "artifacts": {
                    "prefix": out.prefix,
                    "files": out.files,
                    "units": out.units,
                    "video": out.video and self.artifact_url(out.video),
                    "contact_sheet": out.contact_sheet and self.artifact_url(out.contact_sheet),
                },
                "problems": self.problems,
            }
        )


def _render_page(report: Report) -> str:
    from jinja2 import Environment, FileSystemLoader, select_autoescape
    from markupsafe import Markup

    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]))
    env.filters["duration"] = charts.duration
    env.filters["seconds"] = lambda s: "-" if s is None else f"{s:.1f}"
    env.filters["times"] = lambda x: "-" if x is None else f"{x:.2f}x"
    env.filters["percent"] = lambda x: "-" if x is None else f"{x:.0%}"
    env.filters["utc"] = lambda d: "-" if d is None else d.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    env.filters["bytes"] = _bytes
    run, out = report.run, report.outputs
    svg = {"timeline": Markup(charts.timeline(run, report.summary, now=datetime.now(UTC)))}
    if len(report.chain) > 1:
        svg["pipeline"] = Markup(charts.pipeline(report.chain))
    training = out.training
    if training and training.get("ranking"):
        best = (training.get("best") or {}).get("trial")
        svg["loss"] = Markup(charts.loss_curves(training["ranking"], best))
    pre = out.preprocessing
    if pre and isinstance(pre.get("dropped"), dict):
        svg["drops"] = Markup(charts.drops(pre["dropped"], pre.get("rows_in") or 0))
    files, more = outputs.listing(out.files)
    return env.get_template("report.html").render(
        r=report,
        run=run,
        s=report.summary,
        out=out,
        svg=svg,
        files=files,
        more_files=more,
        k8s=any(t.on_kubernetes for ti in run.task_instances for t in ti.tries),
        failed=[(ti, t) for ti in run.task_instances for t in ti.failed_tries],
        generated=datetime.now(UTC),
    )


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def create_app() -> FastAPI:
    app = FastAPI(title="fanout report", docs_url=None, redoc_url=None, openapi_url=None)
    router = APIRouter(dependencies=auth.READ_RUN)

    @router.get("/runs/{dag_id}/{run_id}", response_class=HTMLResponse)
    def page(
        request: Request, dag_id: str, run_id: str, session: SessionDep, user: auth.User
    ) -> HTMLResponse:
        report = Report(request, session, dag_id, run_id, user)
        return HTMLResponse(_render_page(report), headers=_PAGE_HEADERS)

    @router.get("/runs/{dag_id}/{run_id}/data.json")
    def data(
        request: Request, dag_id: str, run_id: str, session: SessionDep, user: auth.User
    ) -> JSONResponse:
        return JSONResponse(Report(request, session, dag_id, run_id, user).data(), headers=_PAGE_HEADERS)

    @router.get("/runs/{dag_id}/{run_id}/artifacts/{path:path}")
    def artifact(
        dag_id: str,
        run_id: str,
        path: str,
        session: SessionDep,
        range_header: Annotated[str | None, Header(alias="Range")] = None,
    ):
        from airflow.models.dagrun import DagRun
        from sqlalchemy import select

        found = session.execute(
            select(DagRun.id, DagRun.partition_key).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id)
        ).first()
        store = _store()
        try:
            if found is None:
                raise outputs.ArtifactNotFound(path)
            full = outputs.resolve(store, dag_id, run_id, path, found.partition_key)
        except outputs.ArtifactNotFound:
            raise HTTPException(404, "Not found") from None
        media_type, inline = outputs.media_type(full)
        return streaming.response(store, full, media_type, inline, range_header)

    app.include_router(router)
    return app
