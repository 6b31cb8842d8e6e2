"""Fixtures for the harness's own tests: a running cluster and a client for it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.kubesim import Cluster


@pytest.fixture
def cluster(tmp_path) -> Iterator[Cluster]:
    with Cluster(workdir=tmp_path / "cluster") as running:
        yield running
    assert not running.pod_processes(), "pod processes outlived the cluster"


@pytest.fixture
def v1(cluster: Cluster) -> Any:
    return cluster.core_v1()
