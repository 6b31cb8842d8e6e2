"""One Airflow stack with the fanout plugin, one small pipeline run, shared by the report's
end-to-end tests (HTTP and browser).

Users: ``admin``, and ``outsider`` (a viewer who may not read ``fanout_render``: see
``authmanager.py``). The pipeline runs at the sizes of ``tests/e2e`` (3 shards, 2 trials, 12
frames in 3 chunks).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from fanout.localstack import PROJECT_ROOT, AirflowClient, AirflowStack
from tests.e2e.conftest import SMALL_PARAMS
from tests.report.authmanager import DENIALS

OUTSIDER = "outsider"
DENIED_DAG = "fanout_render"
E2E_FILES = {"test_report_http.py", "test_report_browser.py"}


@dataclass
class ReportStack:
    stack: AirflowStack
    client: AirflowClient
    artifact_root: Path
    runs: dict[str, str]
    """dag_id -> run id of the pipeline run."""
    passwords: dict[str, str]
    prefixes: dict[str, str]
    """dag_id -> where its run wrote: its generation of the partition it covers."""

    def prefix(self, dag_id: str) -> str:
        return self.prefixes[dag_id]

    @property
    def base_url(self) -> str:
        return self.stack.base_url

    def client_for(self, user: str) -> AirflowClient:
        return AirflowClient(self.base_url, user, self.passwords[user])


@pytest.fixture(scope="package")
def report(tmp_path_factory) -> ReportStack:
    from fanout.demo import prepare, run_pipeline

    artifact_root = tmp_path_factory.mktemp("report-artifacts")
    stack = AirflowStack(
        home=tmp_path_factory.mktemp("report-airflow-home"),
        parallelism=2,
        extra_env={
            "FANOUT_ARTIFACT_ROOT": str(artifact_root),
            "FANOUT_PARAMS": json.dumps(SMALL_PARAMS),
            "FANOUT_RETRY_DELAY_SECONDS": "1",
            "FANOUT_DEVICE": "cpu",
            "AIRFLOW__CORE__AUTH_MANAGER": "tests.report.authmanager.DagDenyingAuthManager",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"admin:admin,{OUTSIDER}:viewer",
            DENIALS: json.dumps({OUTSIDER: [DENIED_DAG]}),
            # The api-server imports the test auth manager from the repository root.
            "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT / "plugins"), str(PROJECT_ROOT)]),
        },
    )
    client = stack.start()
    try:
        prepare(client, stack)
        reports = run_pipeline(client, timeout=600)
        assert [(r.dag_id, r.state) for r in reports] == [
            ("fanout_preprocess", "success"),
            ("fanout_train", "success"),
            ("fanout_render", "success"),
        ]
        passwords = json.loads(stack.password_file.read_text())
        yield ReportStack(
            stack,
            client,
            artifact_root,
            {r.dag_id: r.run_id for r in reports},
            passwords,
            {r.dag_id: r.prefix for r in reports},
        )
    finally:
        stack.stop()


def pytest_collection_modifyitems(items):
    for item in items:
        if Path(item.fspath).name in E2E_FILES:
            item.add_marker(pytest.mark.e2e)
