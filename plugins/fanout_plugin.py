"""The fanout Airflow plugin: what fanout adds to the api-server.

Airflow loads every plugin module in every component, task processes included, so this module
imports only what registering needs; the fanout package itself is ignored as plugin files
(``plugins/.airflowignore``) and imported by name.
"""

from __future__ import annotations

from typing import ClassVar

from airflow.plugins_manager import AirflowPlugin

from fanout.confguard import ConfGuard


class FanoutPlugin(AirflowPlugin):
    name = "fanout"
    fastapi_root_middlewares: ClassVar[list[dict]] = [
        {"middleware": ConfGuard, "args": [], "kwargs": {}, "name": "fanout: refuse unknown conf keys"}
    ]
