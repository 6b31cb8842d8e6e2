"""Unknown DAG run conf keys are refused when the run is triggered, naming the key and the valid ones.

Airflow merges a trigger's ``conf`` into the DAG's params and validates only the params the DAG
declares: a misspelt key (``{"n_shard": 3}``) is silently ignored and the run takes the default.
For DAGs tagged ``fanout``:

- ``ConfGuard``, an ASGI middleware the fanout plugin adds to the api-server, answers 400 to
  ``POST /api/v2/dags/{dag_id}/dagRuns`` (the UI's trigger form uses it too) and to backfill
  creation when the conf names a key the DAG has no param for; no run is created;
- ``fanout.dagkit.refuse_unknown_conf`` fails the planning task without retries for runs
  created another way (``airflow dags trigger`` writes to the database directly).

Standard library only: every Airflow component, task processes included, loads plugins.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

FANOUT_TAG = "fanout"
_TRIGGER = re.compile(r"^/api/v2/dags/(?P<dag_id>[^/]+)/dagRuns/?$")
_BACKFILL = re.compile(r"^/api/v2/backfills(/dry_run)?/?$")


def unknown_conf_keys(dag_id: str, conf: Any, params: Iterable[str]) -> str | None:
    """Why ``conf`` cannot be a run of ``dag_id`` whose params are ``params``, or None if it can."""
    if not conf:
        return None
    if not isinstance(conf, Mapping):
        return f"{dag_id}: conf must be a JSON object of param names to values, got {type(conf).__name__}"
    valid = sorted(params)
    unknown = sorted(set(conf) - set(valid))
    if not unknown:
        return None
    import difflib  # only for a refusal: every task process loads this module with the plugin

    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, valid, n=1)
        hints.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
    return f"{dag_id}: unknown conf key(s) {', '.join(hints)}; valid keys: {', '.join(valid)}"


def _declared_params(dag_id: str) -> tuple[list[str], list[str]] | None:
    """The DAG's tags and declared params, from its serialized version; None if unknown."""
    from airflow.models.serialized_dag import SerializedDagModel

    dag = SerializedDagModel.get_dag(dag_id)
    if dag is None:
        return None
    return sorted(dag.tags or []), list(dag.params.keys())


class ConfGuard:
    """ASGI middleware: 400 for a trigger of a fanout DAG whose conf names an unknown key."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        path = scope["path"]
        trigger, backfill = _TRIGGER.match(path), _BACKFILL.match(path)
        if not trigger and not backfill:
            return await self.app(scope, receive, send)

        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return await self.app(scope, _replay([message], receive), send)
            chunks.append(message)
            more = message.get("more_body", False)
        problem = await self._problem(trigger, b"".join(m.get("body", b"") for m in chunks))
        if problem is None:
            return await self.app(scope, _replay(chunks, receive), send)
        body = json.dumps({"detail": problem}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 400,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _problem(self, trigger: re.Match | None, raw: bytes) -> str | None:
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            return None  # Airflow answers malformed JSON itself
        if not isinstance(body, dict):
            return None
        if trigger:
            from urllib.parse import unquote

            dag_id, conf = unquote(trigger["dag_id"]), body.get("conf")
        else:
            dag_id, conf = body.get("dag_id"), body.get("dag_run_conf")
        if not conf or not isinstance(dag_id, str):
            return None
        import anyio.to_thread

        declared = await anyio.to_thread.run_sync(_declared_params, dag_id)
        if declared is None or FANOUT_TAG not in declared[0]:
            return None  # unknown DAGs get Airflow's own 404; other DAGs keep Airflow's behaviour
        return unknown_conf_keys(dag_id, conf, declared[1])


def _replay(messages: list[dict], receive: Any) -> Any:
    """A ``receive`` that hands back the messages already read, then reads on."""
    pending = list(messages)

    async def replay() -> dict:
        return pending.pop(0) if pending else await receive()

    return replay
