"""Peak memory of every Airflow and Dask process together while a small demo-like pipeline runs.

``fanout.demo.run_pipeline`` runs preprocessing, then the asset-triggered training and rendering,
as ``make demo`` does (smaller sizes). The stack's process monitor sums the RSS of every process
in the components' sessions (api-server, scheduler and its workers and task processes,
dag-processor, the Dask scheduler and its worker processes) every 0.25 s; RSS counts pages shared
after fork() once per process, so the peak is an upper bound.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time

from bench.common import rnd
from bench.stack import BenchStack

TARGET_MIB = 4096


def run_pipeline(bench: BenchStack, params: dict) -> dict:
    from fanout.demo import run_pipeline as demo_pipeline

    began = time.monotonic()
    with contextlib.redirect_stdout(sys.stderr):  # the demo's progress lines stay off the table
        reports = demo_pipeline(bench.client, params["fanout_preprocess"], timeout=600)
    ended = time.monotonic()
    # Later benchmarks trigger preprocessing alone; a live training DAG would follow each run.
    bench.client.patch("/dags/fanout_train", {"is_paused": True})
    failed = [r.dag_id for r in reports if r.state != "success"]
    if failed or len(reports) < 3:
        raise RuntimeError(f"demo-like pipeline did not finish: {[(r.dag_id, r.state) for r in reports]}")
    return {
        "scope": "demo-like pipeline (preprocess -> train -> render)",
        "params": params,
        "runs": [
            {"dag_id": r.dag_id, "wall_s": rnd(r.wall_s), "parallelism": rnd(r.parallelism)} for r in reports
        ],
        "wall_s": rnd(ended - began),
        **bench.monitor.window(began, ended),
    }


def over_session(bench: BenchStack, scope: str) -> dict:
    """The peak over everything the stack ran so far (quick mode has no pipeline run)."""
    return {"scope": scope, **bench.monitor.window(0, math.inf)}


def targets(section: dict) -> list[dict]:
    peak = section.get("peak_rss_mib")
    return [
        {
            "id": "peak_memory",
            "benchmark": "memory",
            "figure": f"peak RSS of all Airflow and Dask processes, {section['scope']}",
            "value": peak,
            "unit": "MiB",
            "target": f"<= {TARGET_MIB} MiB",
            "met": peak is not None and peak <= TARGET_MIB,
            "blocker": f"{section.get('peak_processes')} processes at the peak",
            "note": f"{section.get('peak_processes')} processes at the peak; whole stack session peak "
            f"{section.get('session_peak_rss_mib')} MiB",
        }
    ]
