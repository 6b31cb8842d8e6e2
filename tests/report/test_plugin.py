"""The plugin as Airflow loads it: in every component and task process, so it must stay light."""

from __future__ import annotations

import json
import subprocess
import sys

from fanout.localstack import PROJECT_ROOT

_PROBE = """
import json, sys
import airflow.sdk  # what every task process has imported anyway
before = set(sys.modules)
from airflow.sdk._shared.plugins_manager import _load_plugins_from_plugin_directory
plugins, errors = _load_plugins_from_plugin_directory(plugins_folder=sys.argv[1], load_examples=False)
print(json.dumps({
    "plugins": [p.name for p in plugins],
    "errors": errors,
    "sources": [str(p.source) for p in plugins],
    "new_modules": sorted(set(sys.modules) - before),
}))
"""


def load_plugins_as_a_task_process_does() -> dict:
    env = {
        "PYTHONPATH": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW_HOME": str(PROJECT_ROOT / ".pytest_cache" / "airflow-probe"),
        "PATH": "/usr/bin:/bin",
    }
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(PROJECT_ROOT / "plugins")],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_airflow_loads_the_registration_module_and_nothing_else_of_the_package():
    loaded = load_plugins_as_a_task_process_does()
    assert loaded["errors"] == {}
    assert loaded["plugins"] == ["fanout"]
    assert [s.rsplit("/", 1)[-1] for s in loaded["sources"]] == ["fanout_plugin.py"]
    # Without plugins/.airflowignore Airflow would execute every module of the package as a
    # plugin file of its own, under bare names ("train", "storage", "executors", ...).
    assert not {"train", "storage", "executors", "settings", "render"} & set(loaded["new_modules"])


def test_loading_the_plugin_imports_neither_the_app_nor_its_libraries():
    new = set(load_plugins_as_a_task_process_does()["new_modules"])
    heavy = {
        "matplotlib",
        "fastapi",
        "jinja2",
        "fanout.report.app",
        "fanout.report.charts",
        "kubernetes",
        "numpy",
    }
    assert not heavy & {m if m.startswith("fanout.") else m.split(".")[0] for m in new}
