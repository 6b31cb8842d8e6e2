"""Unit tests for the training workload (fanout.train), on small synthetic data, on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from fanout import train
from fanout.errors import BadInputError
from fanout.storage import ArtifactStore, sha256_file

# The columns preprocessing writes for the fare model, a subset of its FEATURE_COLUMNS.
FEATURES = [
    "distance_km",
    "log_distance_km",
    "hour_sin",
    "hour_cos",
    "is_rush_hour",
    "is_weekend",
    "passengers",
]
TARGET = "fare"
MANIFEST = "features/manifest.json"


def write_synthetic_features(
    store: ArtifactStore,
    *,
    n_rows: int = 2000,
    n_shards: int = 2,
    seed: int = 0,
    drop_column: str | None = None,
) -> str:
    """Parquet shards + a preprocessing-style manifest with a nonlinear fare target; returns the manifest path."""
    rng = np.random.default_rng(seed)
    distance = np.clip(rng.gamma(2.0, 2.5, n_rows), 0.2, 40.0)
    hour = rng.integers(0, 24, n_rows)
    is_weekend = rng.random(n_rows) < 2 / 7
    passengers = rng.integers(1, 7, n_rows)
    is_rush_hour = ~is_weekend & (((hour >= 7) & (hour < 10)) | ((hour >= 16) & (hour < 19)))
    fare = (
        3.0
        + 1.8 * np.minimum(distance, 12.0)
        + 1.2 * np.clip(distance - 12.0, 0.0, None)
        + 2.5 * np.sin(2 * np.pi * hour / 24)
        + 3.0 * is_rush_hour * np.sqrt(distance)
        + 0.3 * passengers
        + 1.0 * is_weekend
        + rng.normal(0.0, 0.5, n_rows)
    )
    columns = {
        "distance_km": distance,
        "log_distance_km": np.log1p(distance),
        "hour_sin": np.sin(2 * np.pi * hour / 24),
        "hour_cos": np.cos(2 * np.pi * hour / 24),
        "is_rush_hour": is_rush_hour.astype(np.int8),
        "is_weekend": is_weekend.astype(np.int8),
        "passengers": passengers,
        TARGET: fare,
    }
    shards = []
    for index, rows in enumerate(np.array_split(np.arange(n_rows), n_shards)):
        rel = f"features/shard-{index:05d}/features.parquet"
        table = pa.table({name: values[rows] for name, values in columns.items() if name != drop_column})
        with store.staged(rel) as tmp:
            pq.write_table(table, tmp)
        shards.append({"path": rel, "rows_out": len(rows), "sha256": sha256_file(store.path(rel))})
    stats = {
        name: {
            "count": n_rows,
            "mean": float(np.mean(v)),
            "std": float(np.std(v)),
            "min": float(np.min(v)),
            "max": float(np.max(v)),
        }
        for name, v in columns.items()
    }
    store.write_json(
        MANIFEST,
        {"feature_columns": FEATURES, "target": TARGET, "stats": stats, "shards": shards, "rows_out": n_rows},
    )
    return MANIFEST


def small_trial(**overrides) -> dict:
    return {
        "trial": 0,
        "epochs": 6,
        "seed": 3,
        "split_seed": 11,
        "batch_size": 128,
        "hidden": 64,
        **overrides,
    }


@pytest.fixture
def store(tmp_path) -> ArtifactStore:
    return ArtifactStore(str(tmp_path / "artifacts"))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Three trained trials (two from plan_trials, one with dropout) sharing one store."""
    store = ArtifactStore(str(tmp_path_factory.mktemp("sweep") / "artifacts"))
    manifest = write_synthetic_features(store)
    trials = train.plan_trials(2, epochs=8, seed=11)
    trials.append({**trials[0], "trial": 2, "lr": 1e-2, "dropout": 0.1, "activation": "relu"})
    results = {}
    for trial in trials:
        unit = f"train/trial-{trial['trial']:03d}"
        results[unit] = train.train_trial(store, manifest, trial, unit, device="cpu")
    return store, manifest, trials, results


def test_importing_the_module_does_not_import_torch():
    """DAG files import fanout.train at parse time; torch must load only in the task."""
    plugins = str(Path(train.__file__).resolve().parents[1])
    code = "import sys, fanout.train; sys.exit('torch' in sys.modules or 'pyarrow' in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": plugins})


# -- plan_trials ---------------------------------------------------------------------------------


def test_plan_trials_is_deterministic_valid_and_stable_as_the_sweep_grows():
    trials = train.plan_trials(6, epochs=5, seed=42)
    assert trials == train.plan_trials(6, epochs=5, seed=42)
    assert train.plan_trials(3, epochs=5, seed=42) == trials[:3]
    assert [t["trial"] for t in trials] == list(range(6))
    assert json.loads(json.dumps(trials)) == trials
    assert all(train.validate_trial(t) == t for t in trials)
    # One validation split for the whole sweep, a different init/shuffle seed per trial.
    assert {t["split_seed"] for t in trials} == {42}
    assert len({t["seed"] for t in trials}) == 6
    assert len({(t["lr"], t["hidden"], t["depth"]) for t in trials}) > 1
    assert train.plan_trials(6, epochs=5, seed=43) != trials


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"n_trials": 0, "epochs": 5, "seed": 1}, "n_trials"),
        ({"n_trials": 2, "epochs": 0, "seed": 1}, "epochs"),
        ({"n_trials": 2, "epochs": 5, "seed": -1}, "seed"),
        ({"n_trials": 2.5, "epochs": 5, "seed": 1}, "n_trials"),
    ],
)
def test_plan_trials_rejects_bad_arguments(kwargs, named):
    n_trials = kwargs.pop("n_trials")
    with pytest.raises(BadInputError, match=named):
        train.plan_trials(n_trials, **kwargs)


def test_longest_first_starts_the_costliest_trials_first_and_keeps_every_trial():
    trials = train.plan_trials(6, epochs=6, seed=11)  # the demo's sweep
    ordered = train.longest_first(trials)
    assert sorted(ordered, key=lambda t: t["trial"]) == trials, "a permutation of the same trials"
    costs = [train.relative_cost(t) for t in ordered]
    assert costs == sorted(costs, reverse=True)
    # Batch 128 at depth 3 (trial 3) is the demo sweep's longest, batch 1024 (trial 1) its shortest.
    assert (ordered[0]["trial"], ordered[-1]["trial"]) == (3, 1)
    assert train.longest_first(reversed(trials)) == ordered, "the order depends on the trials only"
    same = [{**trials[0], "trial": 5}, {**trials[0], "trial": 2}]
    assert [t["trial"] for t in train.longest_first(same)] == [2, 5], "ties go by trial number"


def test_relative_cost_grows_with_steps_and_layers():
    base = train.validate_trial({"trial": 0, "epochs": 4})
    assert train.relative_cost({**base, "epochs": 8}) == 2 * train.relative_cost(base)
    assert train.relative_cost({**base, "batch_size": 128}) > train.relative_cost(base)
    assert train.relative_cost({**base, "depth": 3}) > train.relative_cost(base)
    assert train.relative_cost({**base, "hidden": 256}) > train.relative_cost(base)


# -- train_trial ---------------------------------------------------------------------------------


def test_training_loss_falls_and_the_model_predicts_the_target(sweep):
    store, manifest, _, results = sweep
    metrics = store.read_json("train/trial-000/metrics.json")
    assert metrics["epochs"] == 8 and len(metrics["train_loss"]) == len(metrics["val_loss"]) == 8
    assert metrics["train_loss"][-1] < 0.3 * metrics["train_loss"][0]
    assert metrics["val_loss"][-1] < metrics["val_loss"][0]
    fare_std = store.read_json(manifest)["stats"][TARGET]["std"]
    assert metrics["val_rmse"] < 0.5 * fare_std  # far better than predicting the mean (about 1 std)
    assert metrics["val_rmse"] == pytest.approx(min(metrics["val_rmse_per_epoch"]))
    assert metrics["split"]["n_train"] + metrics["split"]["n_val"] == 2000

    result = results["train/trial-000"]
    assert result["val_rmse"] == metrics["val_rmse"]
    assert (result["trial"], result["epochs"], result["resumed_from_epoch"]) == (0, 8, 0)
    assert result["device"] == "cpu" and result["skipped"] is False
    assert json.loads(json.dumps(result)) == result

    model, bundle = train.load_model(store, "train/trial-000/model.pt", device="cpu")
    table = pq.read_table(store.path("features/shard-00000/features.parquet")).to_pandas()
    predicted = train.predict(model, bundle, table)
    assert predicted.shape == (len(table),)
    assert np.corrcoef(predicted, table[TARGET])[0, 1] > 0.95


def test_interrupted_run_resumes_to_exactly_the_uninterrupted_result(store):
    manifest = write_synthetic_features(store, n_rows=1200)
    # Dropout and shuffling both draw random numbers, so the resume must restore every RNG.
    trial = small_trial(dropout=0.1)
    straight = train.train_trial(store, manifest, trial, "straight", device="cpu")

    with pytest.raises(train.TrialInterrupted):
        train.train_trial(store, manifest, trial, "resumed", device="cpu", stop_after_epochs=3)
    assert store.exists("resumed/checkpoint.pt") and store.verified("resumed") is None
    torch.manual_seed(12345)  # whatever the process did in between must not matter
    torch.rand(100)
    resumed = train.train_trial(store, manifest, trial, "resumed", device="cpu")

    assert resumed["resumed_from_epoch"] == 3 and straight["resumed_from_epoch"] == 0
    assert resumed["val_rmse"] == straight["val_rmse"]
    for name in ("model.pt", "checkpoint.pt"):
        key = "state_dict" if name == "model.pt" else "model"
        a = torch.load(store.path(f"straight/{name}"), weights_only=True)[key]
        b = torch.load(store.path(f"resumed/{name}"), weights_only=True)[key]
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
    a, b = store.read_json("straight/metrics.json"), store.read_json("resumed/metrics.json")
    for key in ("train_loss", "val_loss", "val_rmse_per_epoch", "val_rmse", "best_epoch", "epochs"):
        assert a[key] == b[key], key
    assert [x["epochs_run"] for x in store.verified("resumed")["run"]["attempts"]] == [3, 3]
    for name in ("model.pt", "metrics.json"):  # the seeds alone decide these files, resumed or not
        assert store.sha256(f"straight/{name}") == store.sha256(f"resumed/{name}"), name


def test_checkpoint_or_commit_for_other_hyperparameters_or_data_is_not_reused(store):
    manifest = write_synthetic_features(store, n_rows=600)
    with pytest.raises(train.TrialInterrupted):
        train.train_trial(store, manifest, small_trial(epochs=3), "unit", device="cpu", stop_after_epochs=1)
    result = train.train_trial(store, manifest, small_trial(epochs=3, lr=1e-3), "unit", device="cpu")
    assert result["resumed_from_epoch"] == 0 and result["epochs"] == 3

    write_synthetic_features(store, n_rows=600, seed=1)  # preprocessing rewrote the same manifest path
    again = train.train_trial(store, manifest, small_trial(epochs=3, lr=1e-3), "unit", device="cpu")
    assert again["skipped"] is False and again["resumed_from_epoch"] == 0
    assert again["val_rmse"] != result["val_rmse"]


def test_verified_trial_is_skipped_without_touching_data(sweep, monkeypatch):
    store, manifest, trials, results = sweep
    checkpoint_mtime = store.fs.modified(store.path("train/trial-001/checkpoint.pt"))

    def no_training(*args, **kwargs):
        raise AssertionError("a verified trial must not load data or train")

    monkeypatch.setattr(train, "_load_dataset", no_training)
    again = train.train_trial(store, manifest, trials[1], "train/trial-001", device="cpu")
    assert again == {**results["train/trial-001"], "skipped": True}
    assert store.fs.modified(store.path("train/trial-001/checkpoint.pt")) == checkpoint_mtime


def test_select_best_keeps_the_lowest_val_rmse_and_writes_model_and_metrics_with_every_curve(sweep):
    store, _, _, results = sweep
    units = list(results)
    best_unit = min(units, key=lambda u: results[u]["val_rmse"])

    summary = train.select_best(store, units, "train/best")
    assert summary["best_unit"] == best_unit
    assert summary["val_rmse"] == results[best_unit]["val_rmse"]
    assert summary["best_trial"] == results[best_unit]["trial"]
    assert store.verified("train/best") is not None
    assert store.read_bytes(summary["model"]) == store.read_bytes(f"{best_unit}/model.pt")

    metrics = store.read_json(summary["metrics"])
    rmses = [entry["val_rmse"] for entry in metrics["ranking"]]
    assert rmses == sorted(rmses) and len(set(rmses)) == 3
    assert [entry["rank"] for entry in metrics["ranking"]] == [1, 2, 3]
    assert metrics["ranking"][0]["unit"] == best_unit
    assert (
        metrics["best"]["hyperparameters"] == store.read_json(f"{best_unit}/metrics.json")["hyperparameters"]
    )

    # Every trial's per-epoch curves, as the trial recorded them: the report charts them from here.
    for entry in metrics["ranking"]:
        trial = store.read_json(f"{entry['unit']}/metrics.json")
        for key in ("train_loss", "val_loss", "val_rmse_per_epoch"):
            assert entry[key] == trial[key] and len(entry[key]) == trial["epochs"], (entry["unit"], key)
    assert sorted(store.verified("train/best")["files"]) == ["metrics.json", "model.pt"]

    # Re-running the fan-in (here given train_trial's result dicts) reuses the committed unit.
    assert train.select_best(store, list(results.values()), "train/best")["skipped"] is True


def test_select_best_rejects_unverified_and_incomparable_trials(sweep):
    store, manifest, trials, results = sweep
    with pytest.raises(BadInputError, match="train/trial-404"):
        train.select_best(store, [*results, "train/trial-404"], "train/best-missing")

    other_split = {**trials[0], "trial": 9, "epochs": 1}
    train.train_trial(store, manifest, other_split, "train/subset", device="cpu", max_rows=500)
    with pytest.raises(BadInputError, match="not comparable"):
        train.select_best(store, [*results, "train/subset"], "train/best-mixed")


def test_a_sweep_that_lost_a_few_trials_ranks_the_rest_and_names_the_failed_ones(sweep):
    store, _, trials, results = sweep
    lost = {**trials[0], "trial": 3, "lr": 0.02, "hidden": 64, "depth": 3, "activation": "gelu"}
    planned = {**{unit: trial for unit, trial in zip(results, trials, strict=True)}, "train/trial-003": lost}

    summary = train.select_best(
        store, list(planned), "train/best-of-3", min_success_ratio=0.75, hyperparameters=planned
    )

    name = "trial 3 (lr 0.02, 3x64 gelu, batch 256)"
    assert summary["failed_trials"] == [name] and (summary["n_trials"], summary["n_planned"]) == (3, 4)
    assert summary["best_unit"] in results
    metrics = store.read_json(summary["metrics"])
    assert metrics["failed_trials"] == [
        {"unit": "train/trial-003", "trial": 3, "name": name, "hyperparameters": lost}
    ]
    assert [entry["unit"] for entry in metrics["ranking"]] == sorted(
        results, key=lambda u: results[u]["val_rmse"]
    )
    # Run again with the same trials (a cleared fan-in): the committed unit is reused.
    again = train.select_best(
        store, list(planned), "train/best-of-3", min_success_ratio=0.75, hyperparameters=planned
    )
    assert again["skipped"] is True and again["failed_trials"] == [name]


def test_a_sweep_with_fewer_successes_than_its_ratio_fails_naming_the_failed_trials(sweep):
    store, _, _, results = sweep
    units = [*results, "train/trial-003", "train/trial-004"]
    with pytest.raises(BadInputError) as error:
        train.select_best(store, units, "train/best-too-few", min_success_ratio=0.8)
    assert str(error.value) == (
        "only 3 of 5 trials succeeded, fewer than the 4 min_success_ratio 0.8 requires; failed (no "
        "verified output): train/trial-003; train/trial-004"
    )
    assert store.verified("train/best-too-few") is None
    with pytest.raises(BadInputError, match="only 0 of 1 trials succeeded"):
        train.select_best(store, ["train/trial-404"], "train/best-none", min_success_ratio=0.01)
    for ratio in (0, 1.5, True):
        with pytest.raises(BadInputError, match="min_success_ratio must be in"):
            train.select_best(store, list(results), "train/best-bad", min_success_ratio=ratio)


# -- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"lr": -0.1}, "'lr'"),
        ({"lr": float("nan")}, "'lr'"),
        ({"hidden": 0}, "'hidden'"),
        ({"depth": 2.0}, "'depth'"),
        ({"dropout": 1.0}, "'dropout'"),
        ({"batch_size": "64"}, "'batch_size'"),
        ({"weight_decay": True}, "'weight_decay'"),
        ({"activation": "softmax"}, "'activation'"),
        ({"learning_rate": 0.01}, "'learning_rate'"),
        ({"epochs": None}, "'epochs'"),
    ],
)
def test_bad_hyperparameters_are_rejected_by_name(store, change, named):
    trial = {k: v for k, v in {**small_trial(), **change}.items() if v is not None}
    with pytest.raises(BadInputError, match=named):
        train.train_trial(store, "features/manifest.json", trial, "unit")


def test_missing_or_invalid_features_manifest_is_bad_input(store):
    with pytest.raises(BadInputError, match=r"features manifest not found: .*nowhere/manifest\.json"):
        train.train_trial(store, "nowhere/manifest.json", small_trial(), "unit")

    store.write_bytes("broken.json", b"{not json")
    with pytest.raises(BadInputError, match="not valid JSON"):
        train.train_trial(store, "broken.json", small_trial(), "unit")

    manifest = write_synthetic_features(store, n_rows=100)
    content = store.read_json(manifest)
    store.write_json("no-columns.json", {**content, "feature_columns": []})
    with pytest.raises(BadInputError, match="feature_columns"):
        train.train_trial(store, "no-columns.json", small_trial(), "unit")
    store.write_json("no-stats.json", {**content, "stats": {TARGET: content["stats"][TARGET]}})
    with pytest.raises(BadInputError, match="no stats for column 'distance_km'"):
        train.train_trial(store, "no-stats.json", small_trial(), "unit")


def test_shard_without_a_feature_column_is_bad_input(store):
    manifest = write_synthetic_features(store, n_rows=100, drop_column="hour_sin")
    with pytest.raises(BadInputError, match=r"lacks column.*'hour_sin'"):
        train.train_trial(store, manifest, small_trial(), "unit")
    assert store.verified("unit") is None


# -- prediction surface --------------------------------------------------------------------------


def test_prediction_surface_spans_distance_and_hour_with_visible_structure(sweep):
    store, _, _, _ = sweep
    model_rel = "train/trial-000/model.pt"
    _, bundle = train.load_model(store, model_rel, device="cpu")
    axes = train.surface_axes(bundle)
    assert axes["x"]["name"] == "distance_km" and axes["x"]["range"][0] >= 0.2
    assert axes["y"] == {"name": "hour_of_day", "columns": ["hour_sin", "hour_cos"], "range": (0.0, 24.0)}

    surface = train.prediction_surface(store, model_rel, resolution=32)
    assert surface.shape == (32, 32) and surface.dtype == np.float32
    assert np.isfinite(surface).all()
    assert surface.min() == pytest.approx(0.0) and surface.max() == pytest.approx(1.0)
    assert surface.std() > 0.1
    # Fares grow with distance: columns (x = distance) rise from left to right...
    assert surface[:, -1].mean() > surface[:, 0].mean() + 0.5
    # ...and vary with the hour of day along the rows.
    assert np.ptp(surface.mean(axis=1)) > 0.02

    with pytest.raises(BadInputError, match="resolution"):
        train.prediction_surface(store, model_rel, resolution=1)
    with pytest.raises(BadInputError, match="model not found"):
        train.prediction_surface(store, "train/nowhere/model.pt")


def _bundle(columns: list[str], first_layer: list[float], flags: tuple[str, ...] = ()) -> dict:
    """A model bundle whose prediction depends on feature j with weight first_layer[j]."""
    arch = {"in_features": len(columns), "hidden": 1, "depth": 1, "dropout": 0.0, "activation": "relu"}
    model = train.build_mlp(arch)
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([first_layer]))
        model[0].bias.fill_(10.0)  # keeps the ReLU in its linear part over the sweep
        model[2].weight.fill_(1.0)
    stats = {c: {"min": 0.0, "max": 1.0} if c in flags else {"min": -50.0, "max": 50.0} for c in columns}
    return {
        "arch": arch,
        "state_dict": model.state_dict(),
        "feature_columns": columns,
        "x_mean": [0.0] * len(columns),
        "x_std": [1.0] * len(columns),
        "feature_stats": stats,
    }


def test_surface_axes_prefer_named_distance_and_hour_then_the_most_influential_features():
    named = _bundle(
        ["is_rush_hour", "pickup_hour", "trip_distance", "passengers"], [0, 0, 0, 3], ("is_rush_hour",)
    )
    axes = train.surface_axes(named)
    assert (axes["x"]["name"], axes["y"]["name"]) == ("trip_distance", "pickup_hour")
    assert axes["x"]["range"] == (-2.0, 2.0)  # mean +/- 2 std, inside the observed min/max

    anonymous = _bundle(["a", "b", "c", "flag"], [0.1, 1.0, 5.0, 9.0], ("flag",))
    axes = train.surface_axes(anonymous)
    assert (axes["x"]["name"], axes["y"]["name"]) == ("c", "b")


def test_surface_grid_keeps_features_derived_from_an_axis_consistent(sweep):
    store, _, _, _ = sweep
    _, bundle = train.load_model(store, "train/trial-000/model.pt", device="cpu")
    axes = train.surface_axes(bundle)
    hours = np.array([3.0, 8.5, 12.0, 17.0])
    distances = np.array([1.0, 2.0, 5.0, 10.0])
    grid = train._grid_features(bundle, axes, {"x": distances, "y": hours})
    np.testing.assert_allclose(grid["log_distance_km"], np.log1p(distances))
    np.testing.assert_allclose(grid["hour_sin"], np.sin(2 * np.pi * hours / 24))
    assert grid["is_rush_hour"].tolist() == [0, 1, 0, 1] and grid["is_weekend"].tolist() == [0] * 4
    passengers_mean = bundle["x_mean"][bundle["feature_columns"].index("passengers")]
    assert grid["passengers"].tolist() == [passengers_mean] * 4


class _Payload:
    """An arbitrary object: unpickling it could run code, so a weights-only load refuses it."""


def test_a_model_file_holding_arbitrary_objects_is_refused_without_advising_an_unsafe_load(tmp_path):
    store = ArtifactStore(str(tmp_path))
    torch.save({"format": train.MODEL_FORMAT, "payload": _Payload()}, tmp_path / "model.pt")
    with pytest.raises(BadInputError) as refused:
        train.load_model(store, "model.pt", device="cpu")
    message = str(refused.value)
    assert "not a torch archive of tensors and plain data" in message
    assert "weights_only" not in message and "arbitrary code" not in message
