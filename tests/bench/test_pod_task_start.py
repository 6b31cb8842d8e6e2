"""Task start in a harness pod (bench/kubernetes.py): reading a pod's import profile, and its section.

The parsing tests feed ``pod_start_imports`` a container's output laid out as a real pod's is
(the supervisor's raw ``-X importtime`` lines, then Airflow's JSON log lines with the task
process's imports as ``task.stderr``); the last two read the ``make bench-quick`` run that
tests/bench shares (conftest.py), where both probes ran in real harness pods.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from bench import kubernetes, report

T0 = datetime(2026, 11, 26, 23, 0, 0, tzinfo=UTC).timestamp()


def raw(us: int, depth: int, module: str) -> str:
    """One line as ``-X importtime`` prints it, cumulative = self (only the roots' are summed)."""
    return f"import time: {us:>9} | {us:>10} | {'  ' * depth}{module}"


def event(at: float, message: str, logger: str = "task") -> str:
    stamp = datetime.fromtimestamp(T0 + at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return json.dumps({"timestamp": stamp, "level": "info", "event": message, "logger": logger})


def stderr(at: float, us: int, depth: int, module: str) -> str:
    return event(at, raw(us, depth, module), logger="task.stderr")


CONTAINER_LOG = "\n".join(
    [
        "import time: self [us] | cumulative | imported package",
        # the supervisor (the container's main process): fanout.taskpod's package, Airflow's runtime
        raw(100, 0, "fanout"),
        raw(800_000, 1, "airflow.configuration"),
        raw(1_000_000, 0, "airflow.sdk.execution_time.supervisor"),
        event(0.2, "Executing workload", logger="__main__"),
        event(0.5, "::group::Pre Execute"),
        # the task process: the plugin, the DAG file's imports; a fanout module imported by
        # Airflow's code is Airflow's chain, not fanout's
        stderr(0.6, 1_000, 0, "fanout.confguard"),
        stderr(0.7, 6_000, 1, "fanout.settings"),
        stderr(0.7, 8_000, 0, "fanout.dagkit"),
        stderr(0.8, 300, 1, "fanout.keys"),
        stderr(0.8, 90_000, 0, "airflow.dag_processing.dagbag"),
        event(1.0, "::endgroup::"),
        # forwarded after the mark's line but stamped before it: still the task process's start
        stderr(0.95, 2_000, 0, "airflow.timetables.trigger"),
        # the function: its fanout module, then the library its work needs
        stderr(1.1, 4_000, 0, "fanout.render"),
        stderr(1.3, 1_600_000, 0, "torch"),
        # the supervisor after the function started (e.g. uploading the log): not the start's
        raw(200_000, 0, "boto3"),
        event(2.0, "::group::Post Execute"),
        event(2.1, "::endgroup::"),
    ]
)


def test_a_pods_imports_are_split_at_the_call_of_the_task_function():
    probe = kubernetes.pod_start_imports(CONTAINER_LOG, container_started=T0, task_started=T0 + 0.4)
    assert probe["container_start_to_task_start_s"] == pytest.approx(0.4)
    assert probe["container_start_to_function_s"] == pytest.approx(1.0)  # the first ::endgroup::
    by = probe["by_process"]
    # import chains are counted by their roots: boto3, imported after the call, is left out
    assert by["supervisor"]["imports_ms"] == pytest.approx(1000.1)
    assert by["task_process"]["imports_ms"] == pytest.approx(101.0)
    # confguard 1 + dagkit 8 (with fanout.settings); fanout.keys, imported by dagbag, is Airflow's
    assert by["task_process"]["fanout_ms"] == pytest.approx(9.0)
    assert by["task_process"]["fanout_heaviest"] == {"module": "fanout.dagkit", "ms": 8.0}
    assert by["task_function"]["heaviest"][0] == {"module": "torch", "ms": 1600.0}
    assert by["task_function"]["fanout_ms"] == pytest.approx(4.0)
    assert probe["imports_ms"] == pytest.approx(1101.1)
    # the supervisor's fanout 0.1 + the task process's 9 + the function's fanout.render 4
    assert probe["fanout_ms"] == pytest.approx(13.1)
    assert probe["heaviest"][0] == {"module": "airflow.sdk.execution_time.supervisor", "ms": 1000.0}


def test_a_pod_whose_function_never_ran_is_an_error_not_a_figure():
    before_the_call = CONTAINER_LOG.split(event(1.0, "::endgroup::"))[0]
    with pytest.raises(ValueError, match="function never ran"):
        kubernetes.pod_start_imports(before_the_call, container_started=T0, task_started=None)


def test_a_pod_without_import_profiling_is_an_error_not_zero():
    unprofiled = "\n".join(line for line in CONTAINER_LOG.splitlines() if "import time:" not in line)
    with pytest.raises(ValueError, match="PYTHONPROFILEIMPORTTIME"):
        kubernetes.pod_start_imports(unprofiled, container_started=T0, task_started=T0 + 0.4)


@pytest.mark.e2e
@pytest.mark.timeout(660)  # the shared quick run starts real Airflow stacks and harness pods
def test_both_probes_ran_in_real_pods_with_their_imports_profiled(quick_run):
    result, _ = quick_run
    section = result["sections"]["kubernetes"]
    assert section["status"] == "ok", (section.get("reason"), section.get("traceback"))
    probes = section["task_start_in_pod"]
    fanout, anchor = probes["fanout"], probes["anchor"]
    assert (fanout["dag_id"], fanout["task_id"]) == ("fanout_render", "render_chunk")
    assert (anchor["dag_id"], anchor["task_id"]) == ("bench_noop", "noop")
    for probe in (fanout, anchor):
        assert 0 < probe["container_start_to_task_start_s"] < probe["container_start_to_function_s"]
        for process in ("supervisor", "task_process"):
            assert probe["by_process"][process]["imports_ms"] > 0, (probe["pod"], process)
    # plain Airflow imports nothing of fanout's; fanout's pod runs fanout.taskpod, imports fanout
    # modules before the function (the DAG file's, the plugin's), and the function fanout.render
    # and then torch
    assert anchor["fanout_ms"] == 0
    assert fanout["by_process"]["supervisor"]["fanout_ms"] > 0
    assert fanout["by_process"]["task_process"]["fanout_ms"] > 0
    assert fanout["by_process"]["task_function"]["fanout_heaviest"]["module"].startswith("fanout.")
    assert "torch" in [h["module"] for h in fanout["by_process"]["task_function"]["heaviest"]]


@pytest.mark.e2e
@pytest.mark.timeout(660)
def test_the_pod_task_start_target_shows_plain_airflow_beside_it(quick_run):
    result, stdout = quick_run
    (row,) = [row for row in result["targets"] if row["id"] == "task_start_in_pod"]
    fanout = result["sections"]["kubernetes"]["task_start_in_pod"]["fanout"]
    assert row["value"] == fanout["fanout_ms"] and row["target"] == "<= 50 ms"
    assert row["met"] is (fanout["fanout_ms"] <= 50)
    assert "bench_noop.noop" in row["note"]
    assert row in report.collect_targets(result)
    assert "task start in a pod, bench_noop.noop (plain Airflow)" in stdout
