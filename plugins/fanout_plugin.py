"""The fanout Airflow plugin: what fanout adds to the api-server and its UI.

- ``ConfGuard`` (``fanout.confguard``): a trigger naming an unknown conf key is refused;
- the run report (``fanout.report``): a FastAPI app under ``/fanout`` and a "Fanout report" tab on
  every DAG run's page (timeline, parallelism, retries, pipeline, video, loss curves, drops).

Airflow loads every plugin module in every component, task processes included, so this module
imports only what registering needs (the report's app is built on its first request); the fanout
package itself is ignored as plugin files (``plugins/.airflowignore``) and imported by name.
"""

from __future__ import annotations

from typing import ClassVar

from airflow.plugins_manager import AirflowPlugin

from fanout.confguard import ConfGuard
from fanout.report.mount import fastapi_app, run_tab


class FanoutPlugin(AirflowPlugin):
    name = "fanout"
    fastapi_root_middlewares: ClassVar[list[dict]] = [
        {"middleware": ConfGuard, "args": [], "kwargs": {}, "name": "fanout: refuse unknown conf keys"}
    ]
    fastapi_apps: ClassVar[list[dict]] = [fastapi_app()]
    external_views: ClassVar[list[dict]] = [run_tab()]
