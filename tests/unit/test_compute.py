"""fanout.compute: a pod's CPU limit read from cgroup v2 and v1 trees (fake trees here)."""

from __future__ import annotations

import os

import pytest

from fanout.compute import available_cpus, cgroup_cpu_limit


@pytest.fixture(autouse=True)
def _no_explicit_cpus(monkeypatch):
    monkeypatch.delenv("FANOUT_TASK_CPUS", raising=False)


def write(root, files: dict[str, str]):
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


@pytest.mark.parametrize(
    ("files", "limit"),
    [
        ({"cpu.max": "150000 100000\n"}, 1.5),  # v2, 1.5 CPUs
        ({"cpu.max": "max 100000\n"}, None),  # v2, no limit
        ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1.0),  # v1
        ({"cpu,cpuacct/cpu.cfs_quota_us": "250000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, 2.5),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),  # v1, no limit
        ({}, None),  # no cgroup filesystem at all
    ],
)
def test_cgroup_cpu_limit_reads_v2_and_v1(tmp_path, files, limit):
    assert cgroup_cpu_limit(write(tmp_path, files)) == limit


def test_a_v1_limit_of_one_cpu_caps_available_cpus(tmp_path):
    root = write(tmp_path, {"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"})
    assert available_cpus(root) == 1


def test_no_limit_means_the_affinity_mask(tmp_path):
    assert available_cpus(tmp_path) == len(os.sched_getaffinity(0))


def test_explicit_setting_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("FANOUT_TASK_CPUS", "3")
    root = write(tmp_path, {"cpu.max": "100000 100000\n"})
    assert available_cpus(root) == 3
