"""Bad input through the real api-server and scheduler: refused at trigger, or failed once at planning.

Each case asserts the error text a user sees, that no retry was spent and that no mapped task started.
"""

from __future__ import annotations

import pytest

from fanout.localstack import AirflowError


def _tis(client, dag_id, run_id):
    return {(ti["task_id"], ti["map_index"]): ti for ti in client.task_instances(dag_id, run_id)}


@pytest.mark.parametrize(
    ("dag_id", "conf", "expected"),
    [
        ("fanout_preprocess", {"n_shard": 3}, "unknown conf key(s) 'n_shard' (did you mean 'n_shards'?)"),
        ("fanout_train", {"epoch": 2}, "'epoch' (did you mean 'epochs'?)"),
        ("fanout_preprocess", {"dataset_prefix": "../outside/ds"}, "dataset_prefix"),
        ("fanout_train", {"features_manifest": "/etc/passwd"}, "features_manifest"),
        ("fanout_render", {"model": "s3://elsewhere/model.pt"}, "model"),
    ],
    ids=["misspelt-key", "misspelt-key-train", "traversal", "absolute-path", "other-bucket"],
)
def test_bad_conf_is_refused_at_trigger_naming_it(airflow, dag_id, conf, expected):
    _, client = airflow
    before = len(client.dag_runs(dag_id))
    with pytest.raises(AirflowError, match="HTTP 400") as err:
        client.trigger(dag_id, conf)
    assert expected in str(err.value)
    assert len(client.dag_runs(dag_id)) == before, "no run was created"


@pytest.mark.parametrize(
    ("dag_id", "planner", "mapped", "conf_key", "content", "expected"),
    [
        ("fanout_render", "plan_chunks", "render_chunk", "model", b"not a torch archive", "not a readable"),
        ("fanout_render", "plan_chunks", "render_chunk", "model", None, "model not found"),
        (
            "fanout_train",
            "plan_trials",
            "train_trial",
            "features_manifest",
            b"{not json",
            "is not valid JSON",
        ),
        (
            "fanout_train",
            "plan_trials",
            "train_trial",
            "features_manifest",
            b'{"stats": {}}',
            "feature_columns",
        ),
    ],
    ids=["corrupt-model", "missing-model", "corrupt-manifest", "incomplete-manifest"],
)
def test_a_bad_input_file_fails_planning_once_and_no_mapped_task_starts(
    airflow, store, dag_id, planner, mapped, conf_key, content, expected
):
    _, client = airflow
    client.unpause(dag_id)
    rel = f"user-inputs/{dag_id}/{conf_key}-{len(content or b'')}"
    if content is not None:
        store.write_bytes(rel, content)
    run_id = client.trigger(dag_id, {conf_key: rel})
    run = client.wait_run(dag_id, run_id, timeout=180)
    assert run["state"] == "failed"
    tis = _tis(client, dag_id, run_id)
    plan = tis[planner, -1]
    assert plan["state"] == "failed"
    assert plan["try_number"] == 1, "bad input must not spend retries"
    assert expected in client.task_log(dag_id, run_id, planner, 1)
    assert not [
        key for key, ti in tis.items() if key[0] == mapped and ti["state"] not in (None, "upstream_failed")
    ]
