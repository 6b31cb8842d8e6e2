"""Bad input through the real api-server and scheduler: refused at trigger, failed once at planning,
or failed once by the task that meets it.

Each case asserts the error text a user sees, that no retry was spent and that what was written
before is intact. The cases, by issue 13's items and the bad inputs that already held:

* trigger (HTTP 400, no run created): a misspelt conf key (item 3), a traversing, absolute or
  other-bucket path (item 1), a data quality threshold out of range (item 2);
* planning (the planner fails once, no mapped task starts): a corrupt or missing model, a corrupt
  or incomplete features manifest (item 6); an empty dataset, a tampered dataset `_SUCCESS.json`;
* a shard's own task (it fails once, its earlier commit stands): the data quality gates (item 2:
  text in a numeric column, an all-NaN fare, too few rows kept, no row), a truncated Parquet file,
  a missing column;
* parsing (item 7): bad `FANOUT_*` settings make every DAG file fail to import, naming each variable;
* our own outputs damaged (not bad input: recovered without a retry): a cut checkpoint and a tampered
  `_SUCCESS.json` of a trial; its re-run starts afresh and writes the same bytes (item 5).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fanout.localstack import AirflowError
from fanout.storage import safe_key


def _tis(client, dag_id, run_id):
    return {(ti["task_id"], ti["map_index"]): ti for ti in client.task_instances(dag_id, run_id)}


def _failure(client, dag_id, run_id, task_id, try_number, map_index=-1) -> str:
    """The exception a failed try ended with, as its log shows it (the line users read)."""
    log = client.task_log(dag_id, run_id, task_id, try_number, map_index=map_index)
    lines = [line for line in log.splitlines() if line.startswith("AirflowFailException: ")]
    assert lines, f"{task_id}[{map_index}] try {try_number} did not fail fast:\n{log[-2000:]}"
    return lines[-1]


@pytest.mark.parametrize(
    ("dag_id", "conf", "expected"),
    [
        ("fanout_preprocess", {"n_shard": 3}, "unknown conf key(s) 'n_shard' (did you mean 'n_shards'?)"),
        ("fanout_train", {"epoch": 2}, "'epoch' (did you mean 'epochs'?)"),
        ("fanout_preprocess", {"dataset_prefix": "../outside/ds"}, "dataset_prefix"),
        ("fanout_train", {"features_manifest": "/etc/passwd"}, "features_manifest"),
        ("fanout_render", {"model": "s3://elsewhere/model.pt"}, "model"),
        (
            "fanout_preprocess",
            {"min_rows_kept": 1.5},
            "param min_rows_kept: 1.5 is greater than the maximum of 1",
        ),
    ],
    ids=["misspelt-key", "misspelt-key-train", "traversal", "absolute-path", "other-bucket", "threshold"],
)
def test_bad_conf_is_refused_at_trigger_naming_it(airflow, record_property, dag_id, conf, expected):
    _, client = airflow
    before = len(client.dag_runs(dag_id))
    with pytest.raises(AirflowError, match="HTTP 400") as err:
        client.trigger(dag_id, conf)
    record_property("error", str(err.value))
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
    airflow, store, record_property, dag_id, planner, mapped, conf_key, content, expected
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
    failure = _failure(client, dag_id, run_id, planner, 1)
    record_property("error", failure)
    assert expected in failure
    assert not [
        key for key, ti in tis.items() if key[0] == mapped and ti["state"] not in (None, "upstream_failed")
    ]


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"README.txt": b"the export failed"}, "no Parquet shards under"),
        (
            {"_SUCCESS.json": b'{"files": {"shard-00000.parq', "shard-00000.parquet": b"PAR1"},
            "is not valid JSON",
        ),
    ],
    ids=["empty-dataset", "tampered-success-json"],
)
def test_a_dataset_with_nothing_to_featurise_fails_listing_once(
    airflow, store, request, record_property, files, expected
):
    _, client = airflow
    client.unpause("fanout_preprocess")
    prefix = f"user-inputs/datasets/{request.node.callspec.id}"
    for name, content in files.items():
        store.write_bytes(f"{prefix}/{name}", content)
    run_id = client.trigger("fanout_preprocess", {"dataset_prefix": prefix})
    assert client.wait_run("fanout_preprocess", run_id, timeout=180)["state"] == "failed"
    tis = _tis(client, "fanout_preprocess", run_id)
    listing = tis["commit_dataset", -1]
    assert (listing["state"], listing["try_number"]) == ("failed", 1), "bad input must not spend retries"
    failure = _failure(client, "fanout_preprocess", run_id, "commit_dataset", 1)
    record_property("error", failure)
    assert expected in failure
    assert not [
        key
        for key, ti in tis.items()
        if key[0] == "featurise_shard" and ti["state"] not in (None, "upstream_failed")
    ]
    assert {name: store.read_bytes(f"{prefix}/{name}") for name in files} == files, "the input is untouched"


# -- bad shards: each fails its own task once and keeps what it committed before ------------------------
GOOD_ROWS = 4_000


def _shard_variants(good: bytes) -> dict[str, tuple[bytes | None, str]]:
    """{shard name: (its content in the second round or None if unchanged, expected error text)}."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(good))

    def parquet(changed: pa.Table) -> bytes:
        sink = io.BytesIO()
        pq.write_table(changed, sink, row_group_size=2_000)
        return sink.getvalue()

    def column(name: str, values: list) -> bytes:
        return parquet(table.set_column(table.schema.get_field_index(name), name, pa.array(values)))

    rows = table.num_rows
    return {
        "part-0": (None, ""),
        "part-1": (
            column("fare", ["twelve"] * rows),
            f"required column 'fare' has no usable value in any of its {rows} rows (0 missing, {rows} malformed)",
        ),
        "part-2": (
            column("fare", [float("nan")] * rows),
            f"required column 'fare' has no usable value in any of its {rows} rows ({rows} missing, 0 malformed)",
        ),
        "part-3": (
            parquet(pa.concat_tables([table] * 3)),
            "below min_rows_kept=0.5; rows dropped by reason: duplicate=",
        ),
        "part-4": (parquet(table.slice(0, 0)), "fails the data quality gates: the shard has no rows"),
        "part-5": (good[: len(good) // 2], "part-5.parquet is not a readable Parquet file"),
        "part-6": (
            parquet(table.drop_columns(["duration_min"])),
            "part-6.parquet is missing required column(s) duration_min",
        ),
    }


def _unit_files(store, unit: str) -> dict[str, bytes]:
    return {path: store.read_bytes(f"{unit}/{path}") for path in sorted(store.files(unit))}


def test_bad_shards_fail_their_own_task_once_and_keep_their_earlier_commit(airflow, store, record_property):
    """A user dataset of good shards is featurised; then most shards are replaced by bad ones and their
    tasks cleared: each fails once, with its problem named, and its earlier commit stays as it was.

    The first run also holds a truncated shard from the start, so it fails too and emits no asset
    event (a successful merge_stats would start training).
    """
    from fanout import datasets

    _, client = airflow
    client.unpause("fanout_preprocess")
    source = datasets.SyntheticSpec(n_shards=1, rows_per_shard=GOOD_ROWS, seed=13, row_group_rows=2_000)
    (raw,) = datasets.generate_dataset(store, "user-inputs/gates-source", source)
    good = store.read_bytes(raw)
    variants = _shard_variants(good)
    prefix = "user-inputs/gates"
    for name in variants:
        store.write_bytes(f"{prefix}/{name}.parquet", good)
    store.write_bytes(f"{prefix}/part-7.parquet", good[: len(good) // 3])

    run_id = client.trigger("fanout_preprocess", {"dataset_prefix": prefix})
    assert client.wait_run("fanout_preprocess", run_id, timeout=300)["state"] == "failed"
    tis = _tis(client, "fanout_preprocess", run_id)
    index = {name: i for i, name in enumerate([*variants, "part-7"])}
    assert (
        tis["featurise_shard", index["part-7"]]["state"],
        tis["featurise_shard", index["part-7"]]["try_number"],
    ) == ("failed", 1)
    failure = _failure(client, "fanout_preprocess", run_id, "featurise_shard", 1, index["part-7"])
    record_property("part-7", failure)
    assert "part-7.parquet is not a readable Parquet file" in failure
    units = {name: f"preprocess/{safe_key(run_id)}/shards/{name}" for name in variants}
    assert all(tis["featurise_shard", index[name]]["state"] == "success" for name in variants)
    committed = {name: _unit_files(store, unit) for name, unit in units.items()}
    assert all(store.verified(unit) is not None for unit in units.values())

    bad = [name for name, (content, _) in variants.items() if content is not None]
    for name in bad:
        store.write_bytes(f"{prefix}/{name}.parquet", variants[name][0])
    client.post(
        "/dags/fanout_preprocess/clearTaskInstances",
        {
            "dry_run": False,
            "dag_run_id": run_id,
            "task_ids": [["featurise_shard", index[name]] for name in bad] + ["merge_stats"],
            "only_failed": False,
            "reset_dag_runs": True,
        },
    )
    assert client.wait_run("fanout_preprocess", run_id, timeout=300)["state"] == "failed"

    tis = _tis(client, "fanout_preprocess", run_id)
    for name in bad:
        ti = tis["featurise_shard", index[name]]
        assert (ti["state"], ti["try_number"]) == ("failed", 2), f"{name}: one try after the clear, no retry"
        failure = _failure(client, "fanout_preprocess", run_id, "featurise_shard", 2, index[name])
        record_property(name, failure)
        assert variants[name][1] in failure, name
    assert tis["featurise_shard", index["part-0"]]["try_number"] == 1, "a shard not cleared did not run again"
    assert tis["merge_stats", -1]["state"] == "upstream_failed"
    for name, unit in units.items():
        assert _unit_files(store, unit) == committed[name], f"{name}: its earlier commit is intact"
        assert store.verified(unit) is not None, name


BAD_SETTINGS = {
    "FANOUT_RETRIES": ("two", "FANOUT_RETRIES='two' is invalid: expected a whole number >= 0"),
    "FANOUT_RETRY_DELAY_SECONDS": (
        "-5",
        "FANOUT_RETRY_DELAY_SECONDS='-5' is invalid: expected a number of seconds >= 0",
    ),
    "FANOUT_PARAMS": (
        '{"fanout_train": 3}',
        "FANOUT_PARAMS='{\"fanout_train\": 3}' is invalid: expected a JSON object of DAG id",
    ),
}


def _json_list(output: str) -> list[dict]:
    """The JSON list an Airflow CLI command printed among its log lines."""
    decoder = json.JSONDecoder()
    for start in (i for i, char in enumerate(output) if char == "["):
        try:
            value, _ = decoder.raw_decode(output, start)
        except ValueError:
            continue
        if isinstance(value, list) and all(isinstance(item, dict) for item in value):
            return value
    raise AssertionError(f"no JSON list in the command's output:\n{output[-2000:]}")


def test_bad_settings_fail_every_dag_file_naming_each_variable(airflow, record_property):
    """Airflow's own DAG parsing (the DagBag the dag-processor runs, here through ``airflow dags
    list-import-errors --local`` so the running stack keeps its good settings) with bad settings."""
    stack, client = airflow
    env = {**stack.env(), **{name: value for name, (value, _) in BAD_SETTINGS.items()}}
    done = subprocess.run(
        [sys.executable, "-m", "airflow", "dags", "list-import-errors", "--local", "-o", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 1, done.stderr[-2000:]
    errors = {Path(e["filepath"]).name: e["error"] for e in _json_list(done.stdout)}
    assert sorted(errors) == ["preprocess.py", "render.py", "train.py"]
    for dag_file, error in errors.items():
        failure = error.strip().splitlines()[-1]
        record_property(dag_file, failure)
        assert failure.startswith("fanout.settings.SettingsError: "), failure
        for _, expected in BAD_SETTINGS.values():
            assert expected in error, (dag_file, expected)
    assert client.get("/importErrors")["import_errors"] == [], "the running stack still parses its DAGs"


def test_a_cut_checkpoint_and_tampered_commit_are_redone_to_the_same_bytes(airflow, store, record_property):
    """A trial's commit is tampered with and its checkpoint cut (a try that died mid-write); the cleared
    trial says so, starts afresh on its one try and writes the model and metrics byte for byte again."""
    from fanout import daskrun, datasets, featureset

    _, client = airflow
    spec = datasets.SyntheticSpec(n_shards=1, rows_per_shard=GOOD_ROWS, seed=17, row_group_rows=2_000)
    (raw,) = datasets.generate_dataset(store, "user-inputs/checkpoint/raw", spec)
    daskrun.featurise_shard(store, raw, "user-inputs/checkpoint/shard", scheduler_address=None)
    featureset.merge_stats(store, ["user-inputs/checkpoint/shard"], "user-inputs/checkpoint/features")
    conf = {"features_manifest": "user-inputs/checkpoint/features/manifest.json", "n_trials": 1, "epochs": 2}

    client.patch("/dags/fanout_render", {"is_paused": True})  # no render run from this model's asset event
    try:
        client.unpause("fanout_train")
        run_id = client.trigger("fanout_train", conf)
        assert client.wait_run("fanout_train", run_id, timeout=300)["state"] == "success"
        trial = f"train/{safe_key(run_id)}/trials/trial-000"
        outputs = {name: store.read_bytes(f"{trial}/{name}") for name in ("model.pt", "metrics.json")}
        checkpoint = store.read_bytes(f"{trial}/checkpoint.pt")
        store.write_bytes(f"{trial}/checkpoint.pt", checkpoint[: len(checkpoint) // 2])
        record = store.read_json(f"{trial}/_SUCCESS.json")
        store.write_json(
            f"{trial}/_SUCCESS.json", {**record, "files": dict.fromkeys(record["files"], "0" * 64)}
        )
        assert store.verified(trial) is None

        client.post(
            "/dags/fanout_train/clearTaskInstances",
            {
                "dry_run": False,
                "dag_run_id": run_id,
                "task_ids": [["train_trial", 0], "select_best"],
                "only_failed": False,
                "reset_dag_runs": True,
            },
        )
        assert client.wait_run("fanout_train", run_id, timeout=300)["state"] == "success"
    finally:
        client.unpause("fanout_render")
    ti = _tis(client, "fanout_train", run_id)["train_trial", 0]
    assert (ti["state"], ti["try_number"]) == ("success", 2), "one try after the clear, no retry"
    log = client.task_log("fanout_train", run_id, "train_trial", 2, map_index=0)
    warning = next(line for line in log.splitlines() if "ignoring unreadable checkpoint" in line)
    record_property("warning", warning)
    assert f"{trial}/checkpoint.pt" in warning
    assert store.verified(trial) is not None
    assert {name: store.read_bytes(f"{trial}/{name}") for name in outputs} == outputs
