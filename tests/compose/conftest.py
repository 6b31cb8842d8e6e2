"""Compose tests need a Docker engine and build the images (images/build.sh): marker ``docker``,
run by ``make test-images``, not by ``make test``."""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if Path(item.fspath).parent == Path(__file__).parent:
            item.add_marker(pytest.mark.docker)
