"""Healthcheck of the dag-processor and triggerer containers (docker-compose.yml).

Is a job of this type running, with a recent heartbeat in Airflow's metadata database? What
``airflow jobs check --job-type X`` answers, without the CLI's seconds of CPU for imports, which
on 2 busy cores made the check time out and the services look unhealthy.

    python /opt/fanout/jobcheck.py DagProcessorJob [max_age_seconds]   # exit 0: alive
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime, timedelta

import sqlalchemy

QUERY = sqlalchemy.text(
    "SELECT count(*) FROM job WHERE job_type = :job_type AND state = 'running' AND latest_heartbeat > :since"
)


def main(argv: list[str]) -> int:
    job_type = argv[1]
    max_age = float(argv[2]) if len(argv) > 2 else 60.0
    engine = sqlalchemy.create_engine(os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    since = datetime.now(UTC) - timedelta(seconds=max_age)
    with engine.connect() as connection:
        alive = connection.execute(QUERY, {"job_type": job_type, "since": since}).scalar()
    if not alive:
        print(f"no running {job_type} with a heartbeat in the last {max_age:.0f} s")
        return 1
    print(f"{alive} running {job_type}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
