"""Who may see a run's report: an authenticated Airflow user who may read that DAG's runs and
task instances, decided by Airflow's own auth manager.

Plugin FastAPI apps are mounted by the api-server without any protection, so every route of
the report depends on ``READ_RUN``: Airflow's core API security dependencies, the same ones its
REST routes use. They take the JWT from ``Authorization: Bearer`` or from the ``_token`` cookie
the UI's login sets (so the report works inside the UI's iframe), answer 401 without one and
403 for an invalid token or a user the auth manager does not allow to read the DAG named in
the path.
"""

from __future__ import annotations

from typing import Any

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_dag
from fastapi import Depends

READ_RUN = [
    Depends(requires_access_dag("GET", DagAccessEntity.RUN)),
    Depends(requires_access_dag("GET", DagAccessEntity.TASK_INSTANCE)),
]
"""Route dependencies: the caller may read the runs and task instances of ``{dag_id}``."""

User = GetUserDep


def may_read(user: Any, dag_id: str) -> bool:
    """Whether ``user`` may read runs of another DAG (a run chained to the one in the path)."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.models.dag import DagModel

    details = DagDetails(id=dag_id, team_name=DagModel.get_team_name(dag_id))
    manager = get_auth_manager()
    return all(
        manager.is_authorized_dag(method="GET", access_entity=entity, details=details, user=user)
        for entity in (DagAccessEntity.RUN, DagAccessEntity.TASK_INSTANCE)
    )
