"""DAG parse time per DAG file, beyond Airflow's own import, with the heaviest import named.

Each file is parsed in a fresh interpreter (``python -X importtime``) that first imports what
the dag-processor has loaded anyway (``airflow``, ``airflow.sdk``, the DagBag) and parses the
anchor, ``bench/dags/bench_noop.py``: a plain Airflow DAG with the same decorators, so the
modules Airflow imports on a DAG file's first ``@task`` are paid too. It then times a ``DagBag``
of the one file twice: cold (what the file adds: fanout's imports, its DAG objects) and warm
(modules cached: what the dag-processor pays once its ``parsing_pre_import_modules`` has imported
them). ``-X importtime`` output after the baseline names the heaviest import chain. The anchor
itself is parsed the same way without the warm-up: what any such DAG file costs Airflow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import BENCH_DIR, PROJECT_ROOT, rnd

TARGET_MS = 50.0
ANCHOR = BENCH_DIR / "dags" / "bench_noop.py"
MARKER = "fanout-bench: baseline imported"

_PROBE = rf"""
import json, sys, time
t0 = time.perf_counter()
import airflow, airflow.sdk
from airflow.dag_processing.dagbag import DagBag
if sys.argv[2]:
    DagBag(dag_folder=sys.argv[2], safe_mode=False)
baseline = time.perf_counter() - t0
print("{MARKER}", file=sys.stderr, flush=True)
path = sys.argv[1]
t1 = time.perf_counter()
bag = DagBag(dag_folder=path, safe_mode=False)
cold = time.perf_counter() - t1
print("{MARKER} END", file=sys.stderr, flush=True)
t2 = time.perf_counter()
DagBag(dag_folder=path, safe_mode=False)
warm = time.perf_counter() - t2
print(json.dumps({{
    "baseline_s": baseline, "cold_s": cold, "warm_s": warm,
    "dag_ids": sorted(bag.dag_ids), "import_errors": {{k: v[-300:] for k, v in bag.import_errors.items()}},
}}))
"""


def parse_file(path: Path, home: Path) -> dict:
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(path.parent),
        # As in tests/conftest.py: DAGs may name the KubernetesExecutor for some tasks.
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor,KubernetesExecutor",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "True",
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(PROJECT_ROOT / "plugins"), os.environ.get("PYTHONPATH")) if p
        ),
    }
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", _PROBE, str(path), "" if path == ANCHOR else str(ANCHOR)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    if done.returncode:
        raise RuntimeError(f"parsing {path.name} failed: {done.stderr[-800:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    stderr = done.stderr
    during = stderr.split(MARKER + "\n", 1)[-1].split(MARKER + " END", 1)[0]
    chain, total_import_s = heaviest_chain(during)
    return {
        "file": path.name,
        "dag_ids": result["dag_ids"],
        "import_errors": result["import_errors"],
        "airflow_import_s": rnd(result["baseline_s"]),
        "cold_ms": rnd(result["cold_s"] * 1000, 1),
        "warm_ms": rnd(result["warm_s"] * 1000, 1),
        "imports_ms": rnd(total_import_s * 1000, 1),
        "heaviest_import": chain,
    }


def import_tree(importtime: str) -> list[dict]:
    """The import tree ``-X importtime`` printed: top-level imports, each with its children.

    It prints each module after its children (post-order) with its nesting as indentation;
    rebuilding the tree gives cumulative milliseconds per import chain.
    """
    pending: list[tuple[int, dict]] = []
    for line in importtime.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        try:
            _, cumulative, name = line[len("import time:") :].split("|", 2)
            cumulative_us = int(cumulative)
        except ValueError:
            continue  # the header line
        depth = (len(name) - len(name.lstrip(" "))) // 2
        node = {"module": name.strip(), "ms": cumulative_us / 1000, "children": []}
        while pending and pending[-1][0] > depth:
            node["children"].insert(0, pending.pop()[1])
        pending.append((depth, node))
    return [node for _, node in pending]


def heaviest_chain(importtime: str, min_share: float = 0.7) -> tuple[list[dict], float]:
    """The heaviest top-level import and, within it, the heaviest child while it holds most of it."""
    roots = import_tree(importtime)
    if not roots:
        return [], 0.0
    chain = []
    node = max(roots, key=lambda n: n["ms"])
    while True:
        chain.append({"module": node["module"], "ms": round(node["ms"], 1)})
        heaviest = max(node["children"], key=lambda n: n["ms"], default=None)
        if heaviest is None or heaviest["ms"] < min_share * node["ms"]:
            break
        node = heaviest
    return chain, sum(n["ms"] for n in roots) / 1000


def run(repeats: int) -> dict:
    """Every file in ``dags/``, and the anchor (``bench/dags/bench_noop.py``: plain Airflow, the
    same decorators, no fanout import); the best of ``repeats`` fresh interpreters per file."""
    files = [*sorted((PROJECT_ROOT / "dags").glob("*.py")), ANCHOR]
    results = []
    with tempfile.TemporaryDirectory(prefix="fanout-bench-parse-") as home:
        for path in files:
            samples = [parse_file(path, Path(home)) for _ in range(max(1, repeats))]
            best = min(samples, key=lambda s: s["cold_ms"])
            best["cold_ms_samples"] = [s["cold_ms"] for s in samples]
            best["anchor"] = path == ANCHOR
            results.append(best)
    heaviest = max(
        (c for r in results if not r["anchor"] for c in r["heaviest_import"][:1]),
        key=lambda c: c["ms"],
        default=None,
    )
    return {"target_ms": TARGET_MS, "files": results, "heaviest_import": heaviest}


def targets(section: dict) -> list[dict]:
    rows = []
    anchor = next((e for e in section["files"] if e.get("anchor")), None)
    for entry in section["files"]:
        if entry.get("anchor"):
            continue
        chain = describe_chain(entry["heaviest_import"])
        rows.append(
            {
                "id": f"parse_{Path(entry['file']).stem}",
                "benchmark": "parse",
                "figure": f"parse {entry['file']} beyond Airflow's import (cold)",
                "value": entry["cold_ms"],
                "unit": "ms",
                "target": f"<= {TARGET_MS:.0f} ms",
                "met": entry["cold_ms"] <= TARGET_MS and not entry["import_errors"],
                "blocker": f"heaviest import: {chain}" if chain else "",
                "note": f"warm (modules cached) {entry['warm_ms']} ms"
                + (f"; plain Airflow's {anchor['file']} {anchor['cold_ms']} ms" if anchor else ""),
            }
        )
    return rows


def describe_chain(chain: list[dict]) -> str:
    """'fanout.pools 191 ms, mostly kubernetes.client.models 132 ms': the import and its culprit."""
    if not chain:
        return ""
    top, leaf = chain[0], chain[-1]
    text = f"{top['module']} {top['ms']:.0f} ms"
    return text if leaf is top else f"{text}, mostly {leaf['module']} {leaf['ms']:.0f} ms"


def figures(section: dict) -> list[tuple[str, str]]:
    rows = []
    if section["files"]:
        rows.append(
            (
                "Airflow's own import and a plain DAG's first parse (baseline)",
                f"{section['files'][0]['airflow_import_s']} s",
            )
        )
    for entry in section["files"]:
        processor = entry.get("dag_processor_s")
        rows.append(
            (
                f"parse {entry['file']}" + (" (plain Airflow, the anchor)" if entry.get("anchor") else ""),
                f"cold {entry['cold_ms']} ms (imports {entry['imports_ms']} ms), warm {entry['warm_ms']} ms"
                + (f", dag-processor last {processor * 1000:.0f} ms" if processor is not None else ""),
            )
        )
    return rows
