"""images/ as files: hadolint-clean Dockerfiles, the official base as default, a context that holds
what they copy. Building and running them is tests/images (make test-images)."""

from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.packaging.helmkit import ROOT

ALL_DOCKERFILES = sorted((ROOT / "images").glob("*/Dockerfile"))
# What users deploy; the others are local stand-ins of the official base images (test aids).
DOCKERFILES = [path for path in ALL_DOCKERFILES if path.parent.name in {"airflow", "gpu-worker"}]
HADOLINT = Path(sys.executable).parent / "hadolint"


def test_there_is_an_airflow_and_a_gpu_worker_image_and_two_stand_ins():
    assert {path.parent.name for path in ALL_DOCKERFILES} == {
        "airflow",
        "gpu-worker",
        "airflow-base",
        "postgres-standin",
    }


@pytest.mark.parametrize("dockerfile", ALL_DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_is_hadolint_clean(dockerfile):
    result = subprocess.run([str(HADOLINT), str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_defaults_to_the_official_base_and_installs_under_the_constraints(dockerfile):
    text = dockerfile.read_text()
    assert re.search(r"^ARG AIRFLOW_BASE=apache/airflow:3\.3\.2-python3\.11$", text, re.MULTILINE)
    assert re.search(r"^FROM \$\{AIRFLOW_BASE\}$", text, re.MULTILINE)
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
