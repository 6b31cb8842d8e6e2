"""``make cluster-demo``: the whole pipeline with the KubernetesExecutor on the local harness.

    PYTHONPATH=plugins:. .venv/bin/python -m tests.cluster.demo [--params JSON] [--workdir DIR]

Starts a kubesim cluster (two CPU nodes, one GPU node with one GPU), or uses the cluster of
``FANOUT_TEST_KUBECONFIG`` (tests/cluster/target.py), and fanout's Airflow on it, set up as the
Helm deployment is (tests/cluster/stack.py); triggers preprocessing and follows the
training and rendering runs its assets trigger; then prints, per task, the pod that ran it, its
node and pool, how long the pod waited to start and how long it ran, and the pipeline summary.
Everything stops at the end; Airflow's logs and the artifacts stay in the work directory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from fanout.demo import print_summary
from tests.cluster.pods import pod_rows, print_pod_table
from tests.cluster.stack import cluster_pipeline, run_pipeline_on
from tests.cluster.target import Target
from tests.e2e.conftest import SMALL_PARAMS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster.demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--params",
        default=json.dumps(SMALL_PARAMS),
        help="DAG params as FANOUT_PARAMS takes them (default: the end-to-end tests' small sizes)",
    )
    parser.add_argument("--workdir", help="Airflow home, cluster and artifacts (default: a new temp dir)")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="fanout-cluster-demo-"))
    print(f"fanout cluster demo: work directory {workdir}", flush=True)

    started = time.monotonic()
    with cluster_pipeline(workdir, params=json.loads(args.params), target=Target.from_env()) as cp:
        print(f"cluster and Airflow up after {time.monotonic() - started:.1f}s", flush=True)
        t0 = time.monotonic()
        reports = run_pipeline_on(cp, timeout=1800)
        wall = time.monotonic() - t0
        pods = {r.dag_id: cp.pods_of(r.dag_id, r.run_id) for r in reports}
        # The last pods exit a moment after their tasks reported success.
        for record in (record for records in pods.values() for record in records):
            cp.pods.wait_for(lambda record=record: record.finished_at or record.deleted_at, timeout=30)

        print("\nwhich pod ran where (wait: pod created -> container started; run: container lifetime)")
        rows = {}
        for report in reports:
            rows[report.dag_id] = pod_rows(cp, pods[report.dag_id])
            print(f"\n{report.dag_id}  run {report.run_id}")
            print_pod_table(rows[report.dag_id])
        waits = {}
        for row in (row for dag_rows in rows.values() for row in dag_rows):
            if row.waited_s is not None:
                waits.setdefault(row.pool, []).append(row.waited_s)
        print(
            "\npod start waits by pool: "
            + "; ".join(
                f"{pool} median {statistics.median(w):.1f}s, max {max(w):.1f}s ({len(w)} pods)"
                for pool, w in sorted(waits.items())
            )
        )
        summary = print_summary(reports, wall, str(cp.artifact_root))
    summary["pods"] = {dag_id: [asdict(row) for row in dag_rows] for dag_id, dag_rows in rows.items()}
    summary_path = workdir / "cluster-demo-summary.json"
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"\nsummary JSON: {summary_path}; Airflow's component logs: {workdir / 'airflow-home' / 'logs'} "
        "(task logs went to the harness's in-memory S3 server, gone with it)"
    )
    print(f"whole demo {time.monotonic() - started:.0f}s")
    return 0 if len(reports) == 3 and all(r.state == "success" for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
