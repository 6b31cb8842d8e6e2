"""Helpers of the packaging tests: render helm/fanout and find the project files.

``render_chart(values, show_only)`` runs ``helm template`` (helm from helm/get-helm.sh, fetched
once per machine into .tools/) and returns the rendered objects; a test then asserts one
behaviour with a jmespath query, as the official Airflow chart's helm-tests do.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "fanout"
POD_TEMPLATE = ROOT / "helm" / "pod-template.yaml"
AIRFLOW_VALUES = ROOT / "helm" / "airflow-values.yaml"
RELEASE, NAMESPACE = "fanout", "fanout-workers"
# Kubernetes version whose OpenAPI schema every object is validated against (kubernetes-validate).
KUBE_VERSION = "1.35"


@functools.cache
def helm() -> tuple[str, dict[str, str]]:
    """The helm binary (installed on first use) and an environment with private XDG dirs."""
    out = subprocess.run(
        [str(ROOT / "helm" / "get-helm.sh")], check=True, capture_output=True, text=True, timeout=300
    )
    xdg = Path(tempfile.mkdtemp(prefix="fanout-helm-"))
    env = {
        **os.environ,
        "XDG_CACHE_HOME": str(xdg / "cache"),
        "XDG_CONFIG_HOME": str(xdg / "config"),
        "XDG_DATA_HOME": str(xdg / "data"),
    }
    return out.stdout.strip().splitlines()[-1], env


def run_helm(*args: str, values: dict | None = None) -> subprocess.CompletedProcess:
    binary, env = helm()
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as fh:
        yaml.safe_dump(values or {}, fh)
        fh.flush()
        return subprocess.run(
            [binary, *args, "--values", fh.name], capture_output=True, text=True, env=env, timeout=120
        )


@functools.cache
def _render(values_json: str, show_only: tuple[str, ...]) -> str:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    for template in show_only:
        args += ["--show-only", template]
    result = run_helm(*args, values=json.loads(values_json))
    if result.returncode:
        raise HelmError(result.stderr)
    return result.stdout


class HelmError(Exception):
    """helm template failed; the message is helm's stderr."""


def render_chart(values: dict | None = None, show_only: list[str] | None = None) -> list[dict]:
    """Render helm/fanout with ``values`` (only ``show_only`` templates, if given): the objects."""
    text = _render(json.dumps(values or {}, sort_keys=True), tuple(show_only or ()))
    return [doc for doc in yaml.safe_load_all(text) if doc]
