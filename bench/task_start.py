"""Task start: what a task process imports before its workload runs, and fanout's share of it.

A fresh interpreter (``python -X importtime``) does what Airflow's task runner does before it
calls the task's function, phase by phase:

1. ``runtime``: import the Task SDK's task runner (what a Kubernetes pod's interpreter pays; a
   LocalExecutor task is forked from a worker that has most of it already);
2. ``plugins``: load the plugins (the listener manager and the macros, as ``startup()`` and the
   template context do) — the fanout plugin and ``fanout.confguard``;
3. ``dag``: parse the task's DAG file (``BundleDagBag``, as ``parse()`` does);
4. ``workload``: the imports at the top of the task's function (``from fanout import train`` ...)
   — and, run on its own, the third-party libraries they lead to when the work starts.

Each phase's wall time is measured, and ``-X importtime`` splits it into import chains rooted in
``fanout`` (fanout's share) and the rest (Airflow's and the libraries'). The same probe on
``bench/dags/bench_noop.py`` with the plugins folder empty is plain Airflow: the anchor.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import BENCH_DIR, PROJECT_ROOT, rnd
from bench.parse_time import import_tree

MARKER = "fanout-bench-phase"

# The heaviest task of each product DAG file, and the imports at the top of its function.
TASKS = {
    "preprocess.py": (
        "featurise_shard",
        ["fanout.preprocess", "fanout.storage"],
        ["pandas", "pyarrow.parquet"],
    ),
    "train.py": ("train_trial", ["fanout.train", "fanout.storage"], ["torch", "pandas", "pyarrow.parquet"]),
    "render.py": ("render_chunk", ["fanout.render", "fanout.storage"], ["torch", "PIL.Image"]),
}

_PROBE = rf"""
import sys, time, json, importlib
marks = {{}}
def phase(name, fn):
    print("{MARKER} " + name, file=sys.stderr, flush=True)
    t = time.perf_counter()
    fn()
    marks[name] = time.perf_counter() - t
dag_file, modules, libraries = sys.argv[1], sys.argv[2].split(",") if sys.argv[2] else [], sys.argv[3].split(",") if sys.argv[3] else []
phase("runtime", lambda: importlib.import_module("airflow.sdk.execution_time.task_runner"))
def plugins():
    from airflow.sdk.listener import get_listener_manager
    from airflow.sdk.plugins_manager import integrate_macros_plugins
    get_listener_manager()
    integrate_macros_plugins()
phase("plugins", plugins)
def dag():
    from airflow.dag_processing.dagbag import BundleDagBag
    import os
    bag = BundleDagBag(dag_folder=dag_file, safe_mode=False, load_op_links=False,
                       bundle_path=os.path.dirname(dag_file), bundle_name="dags-folder")
    assert bag.dags and not bag.import_errors, bag.import_errors
phase("dag", dag)
phase("workload", lambda: [importlib.import_module(m) for m in modules])
phase("libraries", lambda: [importlib.import_module(m) for m in libraries])
print("{MARKER} end", file=sys.stderr, flush=True)
print(json.dumps(marks))
"""


def probe(dag_file: Path, modules: list[str], libraries: list[str], plugins: Path, home: Path) -> dict:
    """One fresh interpreter through the phases; wall and fanout's import share per phase."""
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(dag_file.parent),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(plugins),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor,KubernetesExecutor",
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(PROJECT_ROOT / "plugins"), os.environ.get("PYTHONPATH")) if p
        ),
    }
    done = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-c",
            _PROBE,
            str(dag_file),
            ",".join(modules),
            ",".join(libraries),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode:
        raise RuntimeError(f"task start probe of {dag_file.name} failed: {done.stderr[-1500:]}")
    walls = json.loads(done.stdout.strip().splitlines()[-1])
    phases = {}
    chunks = done.stderr.split(f"{MARKER} ")
    for chunk in chunks[1:]:
        name, _, body = chunk.partition("\n")
        if name == "end":
            continue
        phases[name] = {"wall_ms": rnd(walls[name] * 1000, 1), **import_shares(import_tree(body))}
    return phases


def import_shares(roots: list[dict], top: int = 3) -> dict:
    """Import chains (``parse_time.import_tree``'s roots) summed: all of them, fanout's, the heaviest.

    A chain counts as fanout's when its root is a fanout module: what fanout's code chose to import,
    with everything that import pulled in.
    """
    ours = sorted((r for r in roots if is_fanout(r["module"])), key=lambda r: -r["ms"])
    return {
        "imports_ms": rnd(sum(r["ms"] for r in roots), 1),
        "fanout_ms": rnd(sum(r["ms"] for r in ours), 1),
        "heaviest": [
            {"module": r["module"], "ms": rnd(r["ms"], 1)}
            for r in sorted(roots, key=lambda r: -r["ms"])[:top]
        ],
        "fanout_heaviest": {"module": ours[0]["module"], "ms": rnd(ours[0]["ms"], 1)} if ours else None,
    }


def is_fanout(module: str) -> bool:
    return module == "fanout" or module.startswith(("fanout.", "fanout_plugin"))


def run(repeats: int) -> dict:
    """Each product DAG's heaviest task, and the plain-Airflow anchor; best of ``repeats`` runs."""
    cases = {
        name: (PROJECT_ROOT / "dags" / name, PROJECT_ROOT / "plugins", *TASKS[name][1:]) for name in TASKS
    }
    results = []
    with tempfile.TemporaryDirectory(prefix="fanout-bench-start-") as tmp:
        empty_plugins = Path(tmp) / "no-plugins"
        empty_plugins.mkdir()
        cases["anchor: bench_noop.py, no plugins"] = (
            BENCH_DIR / "dags" / "bench_noop.py",
            empty_plugins,
            [],
            [],
        )
        for name, (dag_file, plugins, modules, libraries) in cases.items():
            samples = [
                probe(dag_file, modules, libraries, plugins, Path(tmp)) for _ in range(max(1, repeats))
            ]
            best = min(samples, key=lambda s: sum(p["wall_ms"] for k, p in s.items() if k != "runtime"))
            results.append({"case": name, "task": TASKS.get(name, ("noop",))[0], "phases": best})
    return {"cases": results}


def _to_workload(phases: dict) -> float:
    """Milliseconds from a started interpreter to the workload's own code: every phase but runtime."""
    return sum(phases[k]["wall_ms"] for k in ("plugins", "dag", "workload"))


def _fanout_share(phases: dict) -> float:
    return sum(phases[k]["fanout_ms"] for k in ("plugins", "dag", "workload"))


def targets(section: dict) -> list[dict]:
    """fanout's own share of a task's start (plugins, DAG parse, workload modules) <= 50 ms."""
    rows = []
    anchor = next(c for c in section["cases"] if c["case"].startswith("anchor"))
    for case in section["cases"]:
        if case is anchor:
            continue
        share = _fanout_share(case["phases"])
        rows.append(
            {
                "id": f"task_start_{Path(case['case']).stem}",
                "benchmark": "task start",
                "figure": f"{case['case']} {case['task']}: fanout's imports before the workload runs",
                "value": rnd(share, 1),
                "unit": "ms",
                "target": "<= 50 ms",
                "met": share <= 50,
                "note": (
                    f"plugins + DAG parse + workload modules {_to_workload(case['phases']):.0f} ms, "
                    f"plain Airflow's {_to_workload(anchor['phases']):.0f} ms"
                ),
                "blocker": "fanout's heaviest: "
                + ", ".join(
                    f"{phase} {h['module']} {h['ms']:.0f} ms"
                    for phase in ("plugins", "dag", "workload")
                    if (h := case["phases"][phase].get("fanout_heaviest"))
                ),
            }
        )
    return rows


def figures(section: dict) -> list[tuple[str, str]]:
    rows = []
    for case in section["cases"]:
        p = case["phases"]
        rows.append(
            (
                f"{case['case']} ({case['task']}): cold start by phase",
                f"runtime {p['runtime']['wall_ms']:.0f} ms, plugins {p['plugins']['wall_ms']:.0f} "
                f"(fanout {p['plugins']['fanout_ms']:.0f}), DAG parse {p['dag']['wall_ms']:.0f} "
                f"(fanout {p['dag']['fanout_ms']:.0f}), workload modules {p['workload']['wall_ms']:.0f} "
                f"(fanout {p['workload']['fanout_ms']:.0f}); then its libraries "
                f"{p['libraries']['wall_ms']:.0f} ms ({', '.join(h['module'] for h in p['libraries']['heaviest'])})",
            )
        )
    return rows
