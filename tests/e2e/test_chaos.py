"""Chaos through the real scheduler: ``kill -9`` of the scheduler and api-server mid-run, and of
task processes.

One pipeline trigger of the session's undisturbed ``pipeline``'s partition, with the same params (a
re-run of that partition), while this test kills, with SIGKILL: a running preprocessing shard's
task process; the scheduler, while the training trials run; a running render chunk's task process,
then the api-server while the other chunks run. Nobody clears or retries anything. Every DAG run
must end in success, each killed task process must cost its task exactly one try, the components'
deaths no try at all, the partition's pointers must move to the re-run, and every output file must
equal the undisturbed run's, byte for byte, once each run's own id is set aside where a file names
its own run's paths.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import time
from datetime import UTC, datetime

from fanout.demo import PIPELINE
from fanout.localstack import AirflowError
from fanout.partitions import run_prefix
from fanout.supervise import cmdline
from tests.e2e.test_local_pipeline import _process_of

# DAG id -> the mapped task whose running process is killed (None: the scheduler is killed instead).
VICTIMS = {"fanout_preprocess": "featurise_shard", "fanout_train": None, "fanout_render": "render_chunk"}
# A run's directory name: safe_key of a manual or asset-triggered run id.
_RUN_KEY = re.compile(r"(manual|asset_triggered)__[^/\s\"]+")
OUTPUT_PREFIX = {"fanout_preprocess": "preprocess", "fanout_train": "train", "fanout_render": "render"}


class Chaos:
    """Called on every poll of a run: kills once per DAG run, and remembers what it killed."""

    def __init__(self, stack, rng: random.Random):
        self.stack, self.rng = stack, rng
        self.killed_tasks: dict[str, tuple[str, int]] = {}  # dag_id -> (task_id, map_index)
        self.running_at_scheduler_kill: set[tuple[str, int]] = set()
        self.scheduler_killed = False
        self.api_server_killed = False

    def __call__(self, dag_id: str, tis: list[dict]) -> None:
        running = [ti for ti in tis if ti["state"] == "running" and ti["map_index"] >= 0]
        victim_task = VICTIMS[dag_id]
        if dag_id == "fanout_render" and dag_id in self.killed_tasks:
            if not self.api_server_killed:
                self._kill_api_server_if_chunks_run(tis)
            return
        if victim_task is None:
            if not self.scheduler_killed and running:
                self.running_at_scheduler_kill = {(ti["task_id"], ti["map_index"]) for ti in running}
                os.kill(self.stack.supervisor.pid("scheduler"), signal.SIGKILL)
                self.scheduler_killed = True
            return
        if dag_id in self.killed_tasks:
            return
        candidates = [ti for ti in running if ti["task_id"] == victim_task and ti["try_number"] == 1]
        if not candidates:
            return
        if dag_id == "fanout_render" and len([ti for ti in running if ti["task_id"] == victim_task]) < 2:
            return  # the api-server dies with this kill: another chunk must be running through it
        ti = self.rng.choice(candidates)
        pid = _process_of(ti["id"])
        if pid is None:
            return  # between the TI turning running and its process taking its title: next poll
        os.kill(pid, signal.SIGKILL)
        self.killed_tasks[dag_id] = (ti["task_id"], ti["map_index"])
        if dag_id == "fanout_render":  # at once: the other chunks may be done by the next poll
            self._kill_api_server_if_chunks_run(tis)

    def _kill_api_server_if_chunks_run(self, tis: list[dict]) -> None:
        """Kill the api-server while a render chunk other than the killed one runs: it must ride
        out the restart (heartbeat and finish through it)."""
        killed = self.killed_tasks["fanout_render"]
        survivors = [
            ti
            for ti in tis
            if ti["task_id"] == "render_chunk"
            and (ti["task_id"], ti["map_index"]) != killed
            and ti["state"] == "running"
        ]
        if survivors:
            os.kill(self.stack.supervisor.pid("api-server"), signal.SIGKILL)
            self.api_server_killed = True


def _run_pipeline_with(client, chaos: Chaos, partition_key: str, timeout: float = 900) -> dict[str, str]:
    from fanout.demo import wait_partition_run

    for dag_id in PIPELINE:
        client.unpause(dag_id)
    started = datetime.now(UTC).isoformat()
    runs = {}
    run_id = client.trigger(PIPELINE[0], {}, partition_key=partition_key)
    for index, dag_id in enumerate(PIPELINE):
        if index:
            run_id = _patiently(
                lambda d=dag_id: wait_partition_run(client, d, partition_key, after=started, timeout=600)
            )
        deadline = time.monotonic() + timeout
        while True:
            run = _patiently(lambda d=dag_id, r=run_id: client.dag_run(d, r))
            chaos(dag_id, _patiently(lambda d=dag_id, r=run_id: client.task_instances(d, r)))
            if run["state"] in ("success", "failed"):
                break
            assert time.monotonic() < deadline, (dag_id, run_id, run["state"])
            time.sleep(0.3)
        runs[dag_id] = run_id
        assert run["state"] == "success", (dag_id, run_id, run["state"])
    return runs


def _patiently(call, outage: float = 180):
    """``call()``, retried while the api-server is down (it is restarted by the stack's supervisor)."""
    deadline = time.monotonic() + outage
    while True:
        try:
            return call()
        except (OSError, AirflowError) as exc:  # refused, reset, timed out, or 5xx while starting
            if time.monotonic() > deadline or (isinstance(exc, AirflowError) and "HTTP 4" in str(exc)):
                raise
            time.sleep(1)


def _outputs(store, dag_id: str, run_id: str, partition_key: str) -> dict[str, object]:
    """Every file a run wrote, by its path below the run's directory (its generation of the partition).

    Data files (Parquet, PNG, MP4) are their bytes. JSON manifests and torch archives name their
    own run's paths and record wall times, so they are compared as their content with those set
    aside (``_canonical``): every tensor's bytes, every other value.
    """
    base = run_prefix(OUTPUT_PREFIX[dag_id], run_id, partition_key)
    root = store.path(base).rstrip("/")
    files: dict[str, object] = {}
    for path in store.fs.find(root):
        rel = path[len(root) + 1 :]
        data = store.read_bytes(f"{base}/{rel}")
        if rel.endswith(".json"):
            files[rel] = _canonical(json.loads(data))
        elif rel.endswith(".pt"):
            # torch's archive records a random serialisation id (issue #13 point 5): its bytes
            # differ between identical saves, its tensors must not.
            files[rel] = _canonical(torch_load(data))
        else:
            files[rel] = data
    return files


def torch_load(data: bytes):
    import io

    import torch

    return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")


def _canonical(obj, key: str = "", siblings: dict | None = None):
    """``obj`` with run keys neutral, wall times and Dask worker addresses dropped, and digests of
    run-naming files neutral."""
    if isinstance(obj, dict):
        return {
            _RUN_KEY.sub("<run>", str(k)): _canonical(v, str(k), obj)
            for k, v in obj.items()
            # Wall times, and which Dask worker wrote a part (the cluster's scheduling, not content).
            if not str(k).endswith("seconds") and k != "worker"
        }
    if isinstance(obj, list | tuple):
        return [_canonical(v) for v in obj]
    if hasattr(obj, "numpy"):  # a tensor: its exact bytes
        return ("tensor", str(obj.dtype), tuple(obj.shape), obj.contiguous().numpy().tobytes())
    if isinstance(obj, str):
        siblings = siblings or {}
        # The digest of a file compared by content above differs with the run id or the archive's
        # id: "features_sha256" beside "features_manifest", a unit's "files" entry for one.
        if key.endswith("_sha256") and str(
            siblings.get(key.removesuffix("_sha256") + "_manifest", "")
        ).endswith(".json"):
            return "<digest of a run-naming file>"
        if key.endswith((".json", ".pt")) and len(obj) == 64:
            return "<digest of a run-naming file>"
        return _RUN_KEY.sub("<run>", obj)
    return obj


def test_killing_scheduler_api_server_and_tasks_costs_no_extra_try_and_changes_no_output(
    airflow, pipeline, published, store
):
    stack, client = airflow
    restarts_before = len(stack.supervisor.restarts)
    chaos = Chaos(stack, random.Random(13))
    # The undisturbed run's partition, run again: the same raw data, so the same outputs.
    partition = client.dag_run(PIPELINE[0], pipeline[PIPELINE[0]])["partition_key"]

    runs = _run_pipeline_with(client, chaos, partition)

    assert chaos.scheduler_killed, "the training trials never ran while this test watched"
    assert chaos.api_server_killed, "no other render chunk ran when one was killed"
    assert chaos.killed_tasks.keys() == {"fanout_preprocess", "fanout_render"}, chaos.killed_tasks
    assert [r[:2] for r in stack.supervisor.restarts[restarts_before:]] == [
        ("scheduler", -signal.SIGKILL),
        ("api-server", -signal.SIGKILL),
    ]

    for dag_id, run_id in runs.items():
        for ti in client.task_instances(dag_id, run_id):
            key = (ti["task_id"], ti["map_index"])
            if key == ("generate_shard", -1):  # the undisturbed run generated the same dataset
                assert (ti["state"], ti["try_number"]) == ("skipped", 0), "nothing left to generate"
                continue
            expected = 2 if chaos.killed_tasks.get(dag_id) == key else 1
            assert (ti["state"], ti["try_number"]) == ("success", expected), (
                dag_id,
                key,
                "was running when the scheduler was killed" if key in chaos.running_at_scheduler_kill else "",
                ti["state"],
                ti["try_number"],
            )

    # The re-run replaced the partition: each pointer names it now, and the undisturbed generation
    # it replaced is still there (superseded once) for the comparison below.
    for dag_id, kind in OUTPUT_PREFIX.items():
        pointer = store.read_json(f"{kind}/partitions/{partition}/current.json")
        assert (pointer["run_id"], pointer["replaced"]) == (runs[dag_id], published[dag_id]["prefix"])

    for dag_id in PIPELINE:
        undisturbed, disturbed = (
            _outputs(store, dag_id, pipeline[dag_id], partition),
            _outputs(store, dag_id, runs[dag_id], partition),
        )
        assert sorted(disturbed) == sorted(undisturbed), dag_id
        differing = [name for name in undisturbed if undisturbed[name] != disturbed[name]]
        assert not differing, f"{dag_id}: outputs differ from the undisturbed run's: {differing}"

    # The LocalExecutor workers the killed scheduler left finished their tasks and were ended.
    deadline = time.monotonic() + 60
    while strays := _left_by_dead_components(stack):
        assert time.monotonic() < deadline, [cmdline(pid) for pid in strays]
        time.sleep(0.5)


def _left_by_dead_components(stack) -> list[int]:
    """Processes of the stack outside the sessions of its live components."""
    live = {pid for name in stack.supervisor.names() if (pid := stack.supervisor.pid(name))}
    strays = []
    for pid in stack.processes():
        try:
            if os.getsid(pid) not in live:
                strays.append(pid)
        except ProcessLookupError:
            continue
    return strays
