"""Session-wide test setup.

Airflow reads its configuration when first imported, so the environment for parsing DAGs is
set here, before any test module imports Airflow: a private AIRFLOW_HOME, no example DAGs,
and both executors listed (tasks may name the KubernetesExecutor; parsing fails unless it
is configured).
"""

from __future__ import annotations

import os
import signal
import tempfile
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DAGS_FOLDER = PROJECT_ROOT / "dags"

_home = tempfile.mkdtemp(prefix="fanout-test-airflow-")
os.environ.update(
    {
        "AIRFLOW_HOME": _home,
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor,KubernetesExecutor",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "True",
    }
)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"pytest received {signal.Signals(signum).name}")


# pytest tears fixtures down (stopping every Airflow stack) on Ctrl-C, but a SIGTERM (a CI timeout,
# `kill`) would end it on the spot: make SIGTERM unwind the same way. A SIGKILL runs no code at
# all; each stack's reaper process (fanout.supervise) ends its processes then.
signal.signal(signal.SIGTERM, _interrupt)


@pytest.fixture(scope="session")
def dagbag():
    """Every DAG in dags/, parsed once per session."""
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS_FOLDER))


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto) on loopback for the session; see tests/s3.py."""
    from tests.s3 import S3Server

    with S3Server() as server:
        yield server
