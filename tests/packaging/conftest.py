"""Packaging tests: the fanout chart, worker pods, images and docker-compose.yml."""

from __future__ import annotations

import pytest
import yaml

from tests.packaging.helmkit import CHART


@pytest.fixture(scope="session")
def chart_values() -> dict:
    """helm/fanout/values.yaml."""
    return yaml.safe_load((CHART / "values.yaml").read_text())
