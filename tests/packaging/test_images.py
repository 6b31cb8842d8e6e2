"""images/: hadolint-clean Dockerfiles on the official Airflow base, a context that holds what they copy."""

from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.packaging.helmkit import ROOT

DOCKERFILES = sorted((ROOT / "images").glob("*/Dockerfile"))
HADOLINT = Path(sys.executable).parent / "hadolint"


def test_there_is_an_airflow_and_a_gpu_worker_image():
    assert {path.parent.name for path in DOCKERFILES} == {"airflow", "gpu-worker"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_is_hadolint_clean(dockerfile):
    result = subprocess.run([str(HADOLINT), str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_image_builds_on_the_official_airflow_release_and_pins_requirements(dockerfile):
    text = dockerfile.read_text()
    assert re.search(r"^FROM apache/airflow:3\.3\.2-python3\.11$", text, re.MULTILINE)
    assert '"apache-airflow==3.3.2"' in text
    assert "-c /opt/fanout/constraints.txt" in text
    assert "COPY --chown=airflow:0 dags/ /opt/airflow/dags/" in text


def _excluded(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore leaves ``path`` out of the build context (last matching pattern wins)."""
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
            excluded = not negate
    return excluded


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_build_context_holds_every_copied_file(dockerfile):
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    copied = [
        source
        for line in dockerfile.read_text().splitlines()
        if line.startswith("COPY ")
        for source in [word for word in line.split()[1:] if not word.startswith("--")][:-1]
    ]
    assert copied
    for source in copied:
        assert (ROOT / source).exists(), source
        assert not _excluded(source.rstrip("/"), patterns), f"{source} is excluded by .dockerignore"
    for local_only in (".venv", ".git", ".tools", "artifacts", "tests"):
        assert _excluded(local_only, patterns), f"{local_only} would be sent to the Docker daemon"
