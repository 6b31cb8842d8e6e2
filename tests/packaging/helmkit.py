"""Helpers of the packaging tests: render helm/fanout (and the official chart) and find the files.

``render_chart(values, show_only)`` runs ``helm template`` (helm from helm/get-helm.sh, fetched
once per machine into .tools/) and returns the rendered objects; a test then asserts one
behaviour with a jmespath query, as the official Airflow chart's helm-tests do.
``render_official_chart(chart_dir)`` renders the official Apache Airflow chart from a directory
exactly as the README installs it (helm/airflow-values.yaml, --set-file podTemplate=...).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "fanout"
POD_TEMPLATE = ROOT / "helm" / "pod-template.yaml"
AIRFLOW_VALUES = ROOT / "helm" / "airflow-values.yaml"
NAMESPACES = ROOT / "helm" / "namespaces.yaml"
PGBOUNCER_INI = ROOT / "helm" / "pgbouncer.ini"
RELEASE, NAMESPACE = "fanout", "fanout-workers"
AIRFLOW_RELEASE, AIRFLOW_NAMESPACE = "airflow", "airflow"
# Kubernetes versions whose OpenAPI schemas objects are validated against (kubernetes-validate):
# the oldest the charts support (Chart.yaml kubeVersion) and a current one.
KUBE_VERSIONS = ("1.30", "1.35")
KUBE_VERSION = KUBE_VERSIONS[-1]


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


def render_official_chart(chart_dir: Path, values: dict | None = None) -> list[dict]:
    """Render the official Airflow chart in ``chart_dir`` as the README installs it, plus ``values``.

    A source checkout has no charts/ subcharts (its only one, the bundled PostgreSQL, is disabled
    here); helm refuses to render without them, so such a chart is rendered from a copy without
    the dependency. A released chart (helm pull) renders as it is.
    """
    chart_dir = Path(chart_dir)
    chart = yaml.safe_load((chart_dir / "Chart.yaml").read_text())
    missing = [
        dep["name"]
        for dep in chart.get("dependencies") or []
        if not any((chart_dir / "charts").glob(f"{dep['name']}*"))
    ]
    with tempfile.TemporaryDirectory(prefix="fanout-official-chart-") as tmp:
        if missing:
            copy = Path(tmp) / "airflow"
            shutil.copytree(chart_dir, copy, ignore=shutil.ignore_patterns("tests", "docs", "newsfragments"))
            chart["dependencies"] = [d for d in chart["dependencies"] if d["name"] not in missing]
            (copy / "Chart.yaml").write_text(yaml.safe_dump(chart))
            (copy / "Chart.lock").unlink(missing_ok=True)
            chart_dir = copy
        args = ["template", AIRFLOW_RELEASE, str(chart_dir), "--namespace", AIRFLOW_NAMESPACE]
        args += ["--values", str(AIRFLOW_VALUES), "--set-file", f"podTemplate={POD_TEMPLATE}"]
        result = run_helm(*args, values=values)
    if result.returncode:
        raise HelmError(result.stderr)
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]
