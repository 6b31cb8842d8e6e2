"""docker-compose.yml as a file: the compose spec, the components, healthchecks, the chart's names.
Bringing it up and running the pipeline on it is tests/compose (make test-images)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.packaging.helmkit import ROOT, render_chart

COMPOSE = ROOT / "docker-compose.yml"
YAML_FILES = [COMPOSE, ROOT / "helm" / "airflow-values.yaml", ROOT / "helm" / "pod-template.yaml"]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_file_matches_the_compose_spec():
    check = Path(sys.executable).parent / "check-jsonschema"
    result = subprocess.run(
        [str(check), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: p.name)
def test_yaml_is_yamllint_clean(path):
    from yamllint import linter
    from yamllint.config import YamlLintConfig

    config = YamlLintConfig("{extends: default, rules: {line-length: {max: 110}}}")
    problems = list(linter.run(path.read_text(), config, str(path)))
    assert not problems, [str(p) for p in problems]


def test_local_stack_has_every_component(compose):
    assert set(compose["services"]) == {
        "postgres",
        "airflow-init",
        "api-server",
        "scheduler",
        "dag-processor",
        "triggerer",
        "dask-scheduler",
        "dask-worker-1",
        "dask-worker-2",
    }


def test_long_running_services_have_healthchecks(compose):
    for name, service in compose["services"].items():
        if name != "airflow-init":
            assert "test" in service.get("healthcheck", {}), name


def test_airflow_services_share_one_common_block_and_wait_for_init(compose):
    common = compose["x-airflow-common"]
    assert common["environment"]["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    for name in ("api-server", "scheduler", "dag-processor", "triggerer"):
        service = compose["services"][name]
        assert service["image"] == common["image"]
        assert service["environment"] == common["environment"]
        assert service["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"


def test_init_migrates_creates_the_user_and_the_gpu_pool(compose):
    script = "\n".join(compose["services"]["airflow-init"]["command"])
    for step in ("airflow db migrate", "airflow users create", "airflow pools set"):
        assert step in script


def test_no_secret_has_a_default(compose):
    text = COMPOSE.read_text()
    for name in ("POSTGRES_PASSWORD", "AIRFLOW_FERNET_KEY", "AIRFLOW_API_SECRET_KEY", "AIRFLOW_JWT_SECRET"):
        assert f"${{{name}:?" in text, name
    assert "${AIRFLOW_ADMIN_PASSWORD:?" in text


def test_fanout_settings_use_the_chart_names(compose):
    configmap, _ = render_chart(show_only=["templates/settings/settings-configmap.yaml"])
    # FANOUT_PARAMS sizes DAG runs; the chart has no value for it (set it with extraEnv).
    fanout_names = {
        name
        for name in compose["x-airflow-common"]["environment"]
        if not name.startswith("AIRFLOW_") and name != "FANOUT_PARAMS"
    }
    assert fanout_names <= set(configmap["data"]), fanout_names - set(configmap["data"])
