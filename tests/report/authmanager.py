"""An auth manager with per-DAG read permissions, for testing that the report asks for them.

Airflow's simple auth manager lets every user read every DAG; real deployments restrict DAGs per
user or role (the FAB or Keycloak auth managers). This one is the simple auth manager except that
``FANOUT_TEST_DAG_DENIALS`` (JSON: user name -> DAG ids) takes some DAGs away from some users, so
the api-server's own authorization path (``is_authorized_dag``) decides, as in production.
"""

from __future__ import annotations

import json
import os

from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

DENIALS = "FANOUT_TEST_DAG_DENIALS"


class DagDenyingAuthManager(SimpleAuthManager):
    def is_authorized_dag(self, *, method, user, access_entity=None, details=None) -> bool:
        denied = json.loads(os.environ.get(DENIALS) or "{}").get(user.get_name(), [])
        if details is not None and details.id in denied:
            return False
        return super().is_authorized_dag(
            method=method, user=user, access_entity=access_entity, details=details
        )
