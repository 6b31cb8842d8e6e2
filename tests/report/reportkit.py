"""What the report's end-to-end tests share: report URLs, plain HTTP, and figures from the REST API."""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime
from email.message import Message


def report_path(dag_id: str, run_id: str, *rest: str) -> str:
    parts = [urllib.parse.quote(dag_id, safe=""), urllib.parse.quote(run_id, safe=""), *rest]
    return "/fanout/runs/" + "/".join(parts)


def fetch(base_url: str, path: str, token: str | None = None, **headers: str) -> tuple[int, Message, bytes]:
    """(status, headers, body) of a GET, whatever the status."""
    request = urllib.request.Request(base_url + path)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    for name, value in headers.items():
        request.add_header(name.replace("_", "-"), value)
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, answer.headers, answer.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def _ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def rest_tries(client, dag_id: str, run_id: str) -> dict[tuple[str, int], list[dict]]:
    """Every try of every task instance of a run, from the REST API's tries endpoint."""
    quoted = urllib.parse.quote(run_id, safe="")
    out = {}
    for ti in client.task_instances(dag_id, run_id):
        path = f"/dags/{dag_id}/dagRuns/{quoted}/taskInstances/{ti['task_id']}/{ti['map_index']}/tries"
        if ti["map_index"] < 0:
            path = f"/dags/{dag_id}/dagRuns/{quoted}/taskInstances/{ti['task_id']}/tries"
        out[ti["task_id"], ti["map_index"]] = sorted(
            client.get(path)["task_instances"], key=lambda t: t["try_number"]
        )
    return out


def rest_figures(client, dag_id: str, run_id: str) -> dict:
    """Task time, wall time and achieved parallelism computed from the REST API alone."""
    run = client.dag_run(dag_id, run_id)
    tries = [t for group in rest_tries(client, dag_id, run_id).values() for t in group]
    task_seconds = sum(
        (_ts(t["end_date"]) - _ts(t["start_date"])).total_seconds()
        for t in tries
        if t["start_date"] and t["end_date"]
    )
    wall = (_ts(run["end_date"]) - _ts(run["start_date"])).total_seconds()
    return {
        "run_seconds": task_seconds,
        "wall_seconds": wall,
        "achieved_parallelism": task_seconds / wall,
        "tries": len(tries),
    }
