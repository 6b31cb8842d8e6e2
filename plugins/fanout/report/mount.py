"""How the report joins Airflow: its app, built on the first request, and its tab on run pages.

``plugins/fanout_plugin.py`` registers both. Airflow loads plugin modules in every component and
task process, so this module imports nothing but Airflow's configuration: FastAPI, matplotlib
and the report itself are imported when the api-server first routes a request to ``/fanout``.
"""

from __future__ import annotations

import threading
from urllib.parse import urlsplit

from airflow.configuration import conf

URL_PREFIX = "/fanout"
TAB = "Fanout report"


class AppOnFirstRequest:
    """An ASGI app that imports and builds the report's FastAPI app when first called."""

    def __init__(self) -> None:
        self._app = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return "fanout.report.app:create_app()"

    async def __call__(self, scope, receive, send) -> None:
        if self._app is None:
            with self._lock:
                if self._app is None:
                    from fanout.report.app import create_app

                    self._app = create_app()
        await self._app(scope, receive, send)


def _ui_path() -> str:
    """The path the browser reaches the api-server under (``[api] base_url``), e.g. ``/airflow``."""
    return urlsplit(conf.get("api", "base_url", fallback="") or "").path.rstrip("/")


def fastapi_app() -> dict:
    """The plugin's ``fastapi_apps`` entry: the report under ``/fanout``."""
    return {"app": AppOnFirstRequest(), "url_prefix": URL_PREFIX, "name": "fanout report"}


def run_tab() -> dict:
    """The plugin's ``external_views`` entry: a tab on every DAG run's page showing its report."""
    return {
        "name": TAB,
        "href": f"{_ui_path()}{URL_PREFIX}/runs/{{DAG_ID}}/{{RUN_ID}}",
        "destination": "dag_run",
        "url_route": "fanout-report",
    }
