"""fanout.memory_budget: a process tree past its budget loses its largest process, as in a pod."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil
import pytest

from fanout.memory_budget import over_budget, tree_usage

# A parent that starts a child; each holds the given MiB of touched memory until killed.
HOLDER = """
import subprocess, sys, time
mib = int(sys.argv[1])
held = [b"x" * (1 << 20) for _ in range(mib)]
if len(sys.argv) > 2:
    child = subprocess.Popen([sys.executable, "-c", sys.argv[2], sys.argv[3]])
print("ready", flush=True)
time.sleep(120)
"""
CHILD = "import sys, time; held = [b'x' * (1 << 20) for _ in range(int(sys.argv[1]))]; time.sleep(120)"


@pytest.fixture
def tree():
    started = []

    def start(parent_mib: int, child_mib: int) -> psutil.Process:
        process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(parent_mib), CHILD, str(child_mib)],
            stdout=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        assert process.stdout.readline().strip() == "ready"
        root = psutil.Process(process.pid)
        deadline = time.monotonic() + 30
        while sum(tree_usage(root).values()) < (parent_mib + child_mib) << 20:  # the child allocating
            assert time.monotonic() < deadline, "the tree never held what it should"
            time.sleep(0.05)
        return root

    yield start
    for process in started:
        for child in psutil.Process(process.pid).children(recursive=True) if process.poll() is None else []:
            child.kill()
        process.kill()
        process.wait()


def test_a_tree_within_its_budget_is_left_alone(tree):
    root = tree(60, 120)
    assert over_budget(root, 400 << 20) is None
    assert root.is_running() and len(root.children()) == 1


def test_a_tree_past_its_budget_loses_its_largest_process_not_its_root(tree):
    root = tree(60, 120)
    (child,) = root.children()
    breach = over_budget(root, 150 << 20)
    assert breach is not None and breach.killed_pid == child.pid
    assert breach.held > 180 << 20 and breach.budget == 150 << 20 and breach.killed_held > 120 << 20
    deadline = time.monotonic() + 10
    while child.status() != psutil.STATUS_ZOMBIE:  # killed, not yet reaped by its parent
        assert time.monotonic() < deadline, "the child survived"
        time.sleep(0.05)
    assert root.is_running(), "the root lives on, as the supervisor does when the kernel kills its task"
