"""fanout's LocalExecutor: a task's size is a memory budget for its processes, and a task stopped for
passing it is retried with more -- the OOM rule of ``fanout.retries``, on one machine.

What ``FanoutLocalExecutor`` adds to Airflow's LocalExecutor:

- **Each sized task gets a memory budget**: its size's memory (``fanout.pools``, with
  ``FANOUT_TASK_SIZES``), the same number a pod gets as its memory limit. A thread samples every
  running task's process tree (the task process, which Airflow titles ``airflow worker -- <task
  instance id>``, and everything it started) every ``SAMPLE_S`` seconds; past its budget, the tree's
  largest process is SIGKILLed (``fanout.memory_budget``), as a node's kernel would in a pod.
  Unsized tasks are not watched.
- **The try fails, explained**: the note and audit log say "OOMKilled: the task's processes held
  1.1Gi, past its memory budget 768Mi ...", and what follows (as on Kubernetes).
- **Its retry gets more**: budget x ``FANOUT_OOM_MEMORY_FACTOR``, at most the size's ``max_memory``
  and this machine's memory; an OOM kill at that most fails the task without spending retries.

The budget counts the task's own processes, not Airflow's supervisor (the LocalExecutor worker that
forked it, whose pages it mostly shares with the scheduler); a pod's limit counts both. Failed tries
are remembered in this process only: after a scheduler restart, a retry starts from the size's memory.

It also keeps a scheduler crash from costing retries. When a scheduler dies, the next one resets
every task instance the dead one had queued or running (``adopt_or_reset_orphaned_tasks``): state
None, rescheduled with the next try number. Airflow's LocalExecutor adopts nothing, so each
scheduler crash cost every running and queued task a try, even those whose process was alive and
about to succeed (apache/airflow#16023, #59639). Here a task outlives its scheduler: the
LocalExecutor worker that runs it is a child of the dead scheduler but keeps supervising it (the
task reports to the api-server, not to the scheduler), and ``fanout.supervise`` lets such workers
finish before it ends them. So this executor adopts every orphaned task instance instead:

- a running task whose process lives on finishes and reports its own state: no try is lost;
- a running task whose process died stops heartbeating and is failed by the scheduler's
  heartbeat timeout (``[scheduler] task_instance_heartbeat_timeout``) into its next try: it
  costs the try that died, nothing more;
- a queued task is run by a worker the dead scheduler left (they read the same queue), or, if
  none is left, waits out ``[scheduler] task_queued_timeout`` and is requeued with the same
  try number (this executor accepts the revocation the LocalExecutor refuses).

The local stack sets those timeouts to local-machine scale (``fanout.localstack``). An adopted
task runs under the dead scheduler's worker, so no memory budget watches it.

Its workers' supervisors notice a task process's exit the moment it happens (``fanout.exit_watch``),
instead of a ``select`` timeout later with the task's slot held meanwhile.

And it imports, before it forks its workers, what every task process would otherwise import anew
after the fork: Airflow's ``@task`` machinery (imported on a DAG file's first decorator) and
fanout's DAG-time modules (``fanout.dagkit`` and what it uses). Each task process is forked from a
worker, so it starts with them (``bench/README.md``, task start).

Configure it by module path (``[core] executor = fanout.local_executor.FanoutLocalExecutor``);
``fanout.localstack`` does for the embedded default.
"""

from __future__ import annotations

import importlib
import re
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psutil
from airflow.executors.local_executor import LocalExecutor
from airflow.models.log import Log
from airflow.utils.session import create_session
from airflow.utils.state import TaskInstanceState

from fanout import exit_watch
from fanout.failures import OOM_KILLED, TASK_PROCESS, TryFailure
from fanout.memory_budget import Breach, over_budget
from fanout.notes import note_try, task_instance
from fanout.pools import SIZE_KEY, size_of
from fanout.retries import RetryPlan, after_oom, memory_ceiling, raised_memory
from fanout.settings import format_bytes, parse_quantity, settings

if TYPE_CHECKING:
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.taskinstancekey import TaskInstanceKey

SAMPLE_S = 0.25
TASK_TITLE = re.compile(r"airflow worker -- ([0-9a-f-]{36})")
"""The title Airflow's task runner gives the task process (task_runner.py), naming the TI's id."""
BUDGET_EXCEEDED_EVENT = "memory budget exceeded"
RETRY_CHANGED_EVENT = "retry budget changed"


@dataclass(frozen=True)
class Budget:
    key: TaskInstanceKey
    size: str
    limit: int  # bytes


class FanoutLocalExecutor(LocalExecutor):
    """The LocalExecutor, plus memory budgets per task size and retries with more after a breach,
    adoption of a dead scheduler's task instances, and workers that preload what tasks import."""

    preload: tuple[str, ...] = (
        "airflow.providers.standard.decorators.python",
        "airflow.sdk.definitions.decorators.setup_teardown",
        "fanout.dagkit",
        "fanout.pools",
        "fanout.keys",
        "fanout.storage",
    )
    """Light modules every task's DAG parse imports; never workload libraries (torch, pandas)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._budgets: dict[str, Budget] = {}  # by task instance id (the task process's title)
        self._breaches: dict[TaskInstanceKey, tuple[Budget, Breach]] = {}
        self.failed_tries: dict[tuple, list[TryFailure]] = {}
        self._lock = threading.Lock()
        self._stop_watching = threading.Event()
        self._watcher: threading.Thread | None = None
        self._machine = (
            psutil.virtual_memory().total,
            f"the memory of this machine ({socket.gethostname()})",
        )

    # --- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        # Each worker's supervisor notices its task's exit at once, not a select timeout later.
        exit_watch.install()
        for module in self.preload:  # before the workers fork: every task process inherits them
            try:
                importlib.import_module(module)
            except Exception as exc:  # a task will meet the same error and report it; we must run
                self.log.warning("Could not preload %s for task processes: %s", module, exc)
        super().start()  # forks the workers first: they must not inherit the watcher thread
        self._stop_watching.clear()
        self._watcher = threading.Thread(target=self._watch, name="fanout-memory-budgets", daemon=True)
        self._watcher.start()

    def end(self) -> None:
        self._stop_watching.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        super().end()

    # --- a dead scheduler's tasks --------------------------------------------------------------------------

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

    # --- budgets -----------------------------------------------------------------------------------------

    def _process_workloads(self, workload_list) -> None:
        from airflow.executors.workloads import ExecuteTask

        for workload in workload_list:
            if isinstance(workload, ExecuteTask):
                size = (workload.ti.executor_config or {}).get(SIZE_KEY)
                if size:
                    self._set_budget(str(workload.ti.id), workload.ti.key, size)
        super()._process_workloads(workload_list)

    def _set_budget(self, ti_id: str, key: TaskInstanceKey, size: str) -> None:
        try:
            own = int(parse_quantity(size_of(size).memory))
            ceiling, by = memory_ceiling(size, None, machine=self._machine)
        except ValueError as err:  # an unknown size: the task runs unwatched, and says why in the log
            self.log.warning("Task %s: no memory budget: %s", key, err)
            return
        failures = [f for f in self.failed_tries.get(_ti_of(key), []) if f.try_number < key.try_number]
        raised, oom = raised_memory(size, failures, ceiling)
        with self._lock:
            self._budgets[ti_id] = Budget(key, size, raised or own)
        if raised is not None:
            plan = RetryPlan(
                key.try_number,
                memory=format_bytes(raised),
                oom=oom,
                factor=settings().oom_memory_factor,
                ceiling=format_bytes(ceiling),
                ceiling_by=by,
            )
            note = plan.note().replace("of memory", "of memory budget", 1)
            self.log.info("Task %s: %s", key, note)
            with create_session() as session:
                note_try(key, f"Try {key.try_number}: {note}", session)
                session.add(Log(event=RETRY_CHANGED_EVENT, task_instance=key, extra=note))

    def _watch(self) -> None:
        while not self._stop_watching.wait(SAMPLE_S):
            try:
                self._check_budgets()
            except Exception:  # a vanished worker, a /proc race: the next sample looks again
                self.log.debug("memory budget check failed", exc_info=True)

    def _check_budgets(self) -> None:
        for worker_pid in list(self.workers):
            try:
                children = psutil.Process(worker_pid).children()
            except psutil.Error:
                continue
            for child in children:  # the task process: the supervisor's (worker's) child
                try:
                    title = " ".join(child.cmdline())
                except psutil.Error:
                    continue
                match = TASK_TITLE.search(title)
                with self._lock:
                    budget = self._budgets.get(match.group(1)) if match else None
                if budget is None:
                    continue
                breach = over_budget(child, budget.limit)
                if breach is not None:
                    with self._lock:
                        self._budgets.pop(match.group(1), None)
                        self._breaches[budget.key] = (budget, breach)

    # --- tries that ended --------------------------------------------------------------------------------

    def change_state(self, key, state, info=None, remove_running=True) -> None:
        terminal = state in (TaskInstanceState.SUCCESS, TaskInstanceState.FAILED)
        with self._lock:
            stopped = self._breaches.pop(key, None) if terminal else None
            if terminal:  # the try is over: forget its budget
                self._budgets = {k: b for k, b in self._budgets.items() if b.key != key}
        if stopped is not None:
            # The supervisor saw its task process die and returned: the worker reports "success",
            # which the scheduler would only call a state mismatch. Say what happened instead.
            state, info = TaskInstanceState.FAILED, self._explain(key, *stopped)
        super().change_state(key, state, info, remove_running)

    def _explain(self, key: TaskInstanceKey, budget: Budget, breach: Breach) -> str:
        limit = format_bytes(budget.limit)
        failure = TryFailure(
            OOM_KILLED,
            pod=f"local task process {breach.killed_pid}",
            node=socket.gethostname(),
            process=TASK_PROCESS,
            signal="SIGKILL",
            memory_limit=limit,
            try_number=key.try_number,
        )
        self.failed_tries.setdefault(_ti_of(key), []).append(failure)
        explanation = (
            f"OOMKilled: the task's processes held {_mib(breach.held)}, past its memory budget {limit} "
            f"(its {budget.size!r} size's memory), so fanout stopped the largest (pid {breach.killed_pid}, "
            f"{_mib(breach.killed_held)}) with SIGKILL, as a node's kernel would in a pod."
        )
        with create_session() as session:
            ti = task_instance(key, session)
            retries_left = ti is not None and ti.try_number <= ti.max_tries
            consequence, final = after_oom(
                budget.size, failure, None, retries_left=retries_left, machine=self._machine
            )
            explanation = f"{explanation} {consequence}".strip()
            note_try(key, f"Try {key.try_number}: {explanation}", session, final=final)
            session.add(Log(event=BUDGET_EXCEEDED_EVENT, task_instance=key, extra=explanation))
        self.log.warning("Task %s: %s", key, explanation)
        return explanation


def _ti_of(key: TaskInstanceKey) -> tuple:
    return (key.dag_id, key.task_id, key.run_id, key.map_index)


def _mib(amount: int) -> str:
    return f"{amount / (1 << 20):.0f}Mi"
