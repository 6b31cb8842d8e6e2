"""fanout.settings: one typed model of every FANOUT_* variable; errors name the variable and the form."""

from __future__ import annotations

import pytest

from fanout.settings import PROJECT_ROOT, SettingsError, Taint, settings


def test_defaults_without_any_variable():
    current = settings({})
    assert current.artifact_root == str(PROJECT_ROOT / "artifacts")
    assert (current.retries, current.retry_delay_seconds, current.device) == (2, 20.0, "auto")
    assert current.gpu_taint == (Taint("nvidia.com/gpu", "present", "NoSchedule"),)
    assert current.params == {}
    assert current.dask_scheduler_address is None


def test_values_are_parsed_into_their_types():
    current = settings(
        {
            "FANOUT_RETRIES": "5",
            "FANOUT_RETRY_DELAY_SECONDS": "0.5",
            "FANOUT_PARAMS": '{"fanout_train": {"epochs": 2}}',
            "FANOUT_CPU_POOL_SELECTOR": "a=b, c.io/d=e",
            "FANOUT_CPU_TAINT": "k=v:NoSchedule,dedicated:NoExecute",
            "FANOUT_RENDER_POOL": "CPU",
            "FANOUT_TASK_CPUS": "1.5",
            "FANOUT_LIGHT_TASK_EXECUTOR": "  ",  # blank means unset
        }
    )
    assert (current.retries, current.retry_delay_seconds) == (5, 0.5)
    assert current.params == {"fanout_train": {"epochs": 2}}
    assert current.cpu_pool_selector == {"a": "b", "c.io/d": "e"}
    assert current.cpu_taint == (Taint("k", "v", "NoSchedule"), Taint("dedicated", None, "NoExecute"))
    assert current.render_pool == "cpu"
    assert current.task_cpus == pytest.approx(1.5)
    assert current.light_task_executor is None


@pytest.mark.parametrize(
    ("name", "value", "form"),
    [
        ("FANOUT_RETRIES", "two", "a whole number >= 0"),
        ("FANOUT_RETRIES", "-1", "a whole number >= 0"),
        ("FANOUT_RETRY_DELAY_SECONDS", "-5", "a number of seconds >= 0"),
        ("FANOUT_PARAMS", "{not json", "a JSON object of DAG id"),
        ("FANOUT_PARAMS", "[1, 2]", "a JSON object of DAG id"),
        ("FANOUT_PARAMS", '{"fanout_train": 3}', "a JSON object of DAG id"),
        ("FANOUT_DEVICE", "tpu", "auto, cpu or cuda"),
        ("FANOUT_SCHEDULE", "every day", "a five-field cron expression"),
        ("FANOUT_SCHEDULE", "@daily", "a five-field cron expression"),
        ("FANOUT_SCHEDULE", "0 25 * * *", "a five-field cron expression"),
        ("FANOUT_TASK_CPUS", "0", "a number of CPUs > 0"),
        ("DASK_SCHEDULER_ADDRESS", "dask-scheduler", "tcp://dask-scheduler:8786"),
        ("FANOUT_GPU_POOL_SELECTOR", "fanout.io/pool", "node labels key=value"),
        ("FANOUT_GPU_TAINT", "nvidia.com/gpu=present:Sometimes", "taints key[=value]:Effect"),
        ("FANOUT_GPU_RESOURCE", "gpu", "an extended resource name"),
        ("FANOUT_RENDER_POOL", "tpu", "gpu or cpu"),
        ("FANOUT_GPU_AIRFLOW_POOL_SLOTS", "0", "a whole number >= 1"),
        ("FANOUT_WORKER_SERVICE_ACCOUNT", "Fanout_Worker", "a Kubernetes object name"),
    ],
)
def test_a_bad_value_names_the_variable_the_value_and_the_accepted_form(name, value, form):
    with pytest.raises(SettingsError) as err:
        settings({name: value})
    message = str(err.value)
    assert message.startswith(f"{name}={value!r} is invalid: expected ")
    assert form in message


def test_a_pvc_needs_an_absolute_artifact_root():
    with pytest.raises(
        SettingsError, match=r"FANOUT_ARTIFACT_ROOT='s3://b/p' is invalid: expected an absolute path"
    ):
        settings({"FANOUT_ARTIFACT_PVC": "claim", "FANOUT_ARTIFACT_ROOT": "s3://b/p"})


def test_every_bad_variable_is_reported_at_once():
    with pytest.raises(SettingsError) as err:
        settings({"FANOUT_RETRIES": "x", "FANOUT_DEVICE": "y"})
    assert "FANOUT_RETRIES" in str(err.value)
    assert "FANOUT_DEVICE" in str(err.value)


def test_settings_follow_the_environment(monkeypatch):
    monkeypatch.setenv("FANOUT_RETRIES", "3")
    assert settings().retries == 3
    monkeypatch.setenv("FANOUT_RETRIES", "4")
    assert settings().retries == 4


def test_the_schedule_is_daily_by_default_and_takes_a_demo_cadence():
    assert settings({}).schedule == "0 0 * * *"
    assert settings({"FANOUT_SCHEDULE": " */2  * * * * "}).schedule == "*/2 * * * *"
