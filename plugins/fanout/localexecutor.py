"""The local stack's executor: Airflow's LocalExecutor that adopts the tasks of a crashed scheduler.

When a scheduler dies, the next one resets every task instance the dead one had queued or
running (``adopt_or_reset_orphaned_tasks``): state None, rescheduled with the next try number.
The LocalExecutor adopts nothing, so each scheduler crash costs every running and every queued
task a try, even those whose process is alive and about to succeed (apache/airflow#16023,
#59639). Here a task outlives its scheduler: the LocalExecutor worker that runs it is a child of
the dead scheduler but keeps supervising it (the task reports to the api-server, not to the
scheduler), and ``fanout.supervise`` lets such workers finish before it ends them.

So this executor adopts every orphaned task instance instead:

- a running task whose process lives on finishes and reports its own state: no try is lost;
- a running task whose process died stops heartbeating and is failed by the scheduler's
  heartbeat timeout (``[scheduler] task_instance_heartbeat_timeout``) into its next try: it
  costs the try that died, nothing more;
- a queued task is run by a worker the dead scheduler left (they read the same queue), or, if
  none is left, waits out ``[scheduler] task_queued_timeout`` and is requeued with the same
  try number (this executor accepts the revocation the LocalExecutor refuses).

The local stack sets those timeouts to local-machine scale (``fanout.localstack``).

It also imports, before it forks its workers, what every task process would otherwise import
anew after the fork: Airflow's ``@task`` machinery (imported on a DAG file's first decorator)
and fanout's DAG-time modules (``fanout.dagkit`` and what it uses). Each task process is forked
from a worker, so it starts with them (``bench/README.md``, task start).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from airflow.executors.local_executor import LocalExecutor

if TYPE_CHECKING:
    from airflow.models.taskinstance import TaskInstance


class FanoutLocalExecutor(LocalExecutor):
    """LocalExecutor + adoption of a dead scheduler's task instances + revoking stuck ones."""

    preload: tuple[str, ...] = (
        "airflow.providers.standard.decorators.python",
        "airflow.sdk.definitions.decorators.setup_teardown",
        "fanout.dagkit",
        "fanout.pools",
        "fanout.keys",
        "fanout.storage",
    )
    """Light modules every task's DAG parse imports; never workload libraries (torch, pandas)."""

    def start(self) -> None:
        for module in self.preload:
            try:
                importlib.import_module(module)
            except Exception as exc:  # a task will meet the same error and report it; we must run
                self.log.warning("Could not preload %s for task processes: %s", module, exc)
        super().start()

    def try_adopt_task_instances(self, tis: Sequence[TaskInstance]) -> Sequence[TaskInstance]:
        for ti in tis:
            self.log.info("Adopting %s (%s) from a scheduler that stopped", ti, ti.state)
        return []

    def revoke_task(self, *, ti: TaskInstance) -> None:
        """Forget a task stuck in queued, so the scheduler can requeue it (same try number).

        A workload already handed to the workers' queue cannot be taken back; with
        ``task_queued_timeout`` far above a worker's start-up that only happens to workloads
        that were lost with a dead scheduler.
        """
        self.queued_tasks.pop(ti.key, None)
        self.running.discard(ti.key)
