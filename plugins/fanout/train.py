"""Training workload: a hyper-parameter sweep of MLP regressors, one trial per mapped task.

The DAG glue calls, in order:

* ``plan_trials``       -- the sweep, one JSON-able dict per trial (the mapped task's argument);
* ``train_trial``       -- one trial into its own unit, checkpointed every epoch so a retry resumes;
* ``select_best``       -- the fan-in: ranks the verified trials (a sweep may lose a few: their tasks
                           failed), keeps the best model and every curve;
* ``prediction_surface``-- a 2-D texture of the best model's predictions for the renderer.

Data contract: ``features_manifest`` (written by the preprocessing fan-in) names the feature columns,
the target, global per-column statistics and the Parquet shards. Features and target are standardised
with the manifest's global mean/std, so every trial and every shard uses the same scaling, and losses
are reported as MSE of the *standardised* target; RMSEs are reported in target units.

Every trial of one sweep validates on the same rows (the split depends only on ``split_seed``,
``val_fraction`` and ``max_rows``), so their validation RMSEs are comparable; ``select_best`` refuses
trials whose splits differ.

Outputs (paths relative to the store):

* ``<trial unit>/checkpoint.pt`` -- rewritten atomically after every epoch (not part of the commit);
* ``<trial unit>/model.pt`` -- ``torch.save`` dict, loadable with ``weights_only=True``: ``format``,
  ``arch``, ``state_dict`` (best epoch), ``feature_columns``, ``target``, ``x_mean``/``x_std``,
  ``y_mean``/``y_std``, ``feature_stats``, ``hyperparameters``, ``val_rmse``, ``best_epoch``;
  ``load_model`` and ``predict`` use it;
* ``<trial unit>/metrics.json`` -- per-epoch ``train_loss``/``val_loss``/``val_rmse_per_epoch``,
  ``val_rmse``, ``best_epoch``, ``split``, ``device`` (timings and resumed tries are in ``_SUCCESS.json``);
* ``<best unit>/model.pt`` (copy of the best), ``metrics.json`` (the ranking, with every trial's
  per-epoch losses: the report plugin, ``fanout.report``, charts them).

Importing this module does not import torch or pyarrow, so a DAG file may import it cheaply.
"""

from __future__ import annotations

import io
import logging
import math
import pickle
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fanout.compute import available_cpus, torch_device
from fanout.errors import BadInputError
from fanout.storage import ArtifactStore, sha256_file

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"
METRICS = "metrics.json"

MODEL_FORMAT = "fanout.mlp-regressor/1"
CHECKPOINT_FORMAT = "fanout.trial-checkpoint/1"

MAX_TRIALS = 10_000
ACTIVATIONS = ("relu", "gelu", "silu", "tanh")

# Hyper-parameters a trial may set. ``trial`` and ``epochs`` are required; the rest default to
# the sweep's baseline (trial 0 of ``plan_trials``), which trains well on standardised tabular data.
DEFAULT_HYPERPARAMETERS: dict[str, Any] = {
    "seed": 0,
    "split_seed": 0,
    "val_fraction": 0.2,
    "lr": 3e-3,
    "weight_decay": 1e-4,
    "hidden": 128,
    "depth": 2,
    "dropout": 0.0,
    "batch_size": 256,
    "activation": "gelu",
}
_REQUIRED = ("trial", "epochs")
_INT_RANGES = {
    "trial": (0, 1_000_000),
    "epochs": (1, 100_000),
    "seed": (0, 2**63 - 1),
    "split_seed": (0, 2**63 - 1),
    "hidden": (1, 8192),
    "depth": (1, 32),
    "batch_size": (1, 1 << 22),
}
# name: (low, high, low_inclusive, high_inclusive)
_FLOAT_RANGES = {
    "lr": (0.0, 10.0, False, True),
    "weight_decay": (0.0, 1.0, True, False),
    "dropout": (0.0, 1.0, True, False),
    "val_fraction": (0.0, 0.9, False, True),
}

# The sweep's search space (trials 1..n-1; trial 0 is the baseline above).
_LR_RANGE = (3e-4, 1e-2)  # sampled log-uniformly
_HIDDEN_CHOICES = (32, 64, 128, 256)
_DEPTH_CHOICES = (1, 2, 3)
_WEIGHT_DECAY_CHOICES = (0.0, 1e-5, 1e-4, 1e-3)
_BATCH_CHOICES = (128, 256, 512, 1024)
_DROPOUT_CHOICES = (0.0, 0.0, 0.05, 0.1)  # no dropout twice as likely: it rarely helps a small MLP here
_ACTIVATION_CHOICES = ("relu", "gelu", "silu")
_SEARCHED = ("lr", "hidden", "depth", "weight_decay", "batch_size", "dropout", "activation")

_EVAL_CHUNK = 1 << 16  # rows per forward pass when evaluating, to bound memory on big validation sets


class TrialInterrupted(RuntimeError):
    """Raised by ``train_trial(stop_after_epochs=k)`` after epoch k's checkpoint is written.

    It simulates a killed worker in tests; it is not a ``BadInputError``, so Airflow would retry.
    """


# -- validation ----------------------------------------------------------------------------------


def _require_int(name: str, value: Any, low: int, high: int, what: str = "parameter") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise BadInputError(f"{what} {name!r} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise BadInputError(f"{what} {name!r} must be in [{low}, {high}], got {value}")
    return int(value)


def _require_float(name: str, value: Any, bounds: tuple[float, float, bool, bool]) -> float:
    low, high, low_inclusive, high_inclusive = bounds
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise BadInputError(f"hyper-parameter {name!r} must be a number, got {value!r}")
    value = float(value)
    above = value >= low if low_inclusive else value > low
    below = value <= high if high_inclusive else value < high
    if not (math.isfinite(value) and above and below):
        interval = f"{'[' if low_inclusive else '('}{low}, {high}{']' if high_inclusive else ')'}"
        raise BadInputError(f"hyper-parameter {name!r} must be in {interval}, got {value}")
    return value


def validate_trial(trial: Mapping[str, Any]) -> dict[str, Any]:
    """The complete, type-checked hyper-parameters of ``trial`` (defaults filled in).

    Raises ``BadInputError`` naming the first missing, unknown or out-of-range parameter.
    """
    if not isinstance(trial, Mapping):
        raise BadInputError(f"a trial must be a dict of hyper-parameters, got {type(trial).__name__}")
    unknown = sorted(set(trial) - set(DEFAULT_HYPERPARAMETERS) - set(_REQUIRED))
    if unknown:
        raise BadInputError(f"unknown hyper-parameter(s) {', '.join(map(repr, unknown))}")
    missing = [name for name in _REQUIRED if name not in trial]
    if missing:
        raise BadInputError(f"trial is missing hyper-parameter(s) {', '.join(map(repr, missing))}")
    params = {**DEFAULT_HYPERPARAMETERS, **trial}
    checked: dict[str, Any] = {}
    for name, (low, high) in _INT_RANGES.items():
        checked[name] = _require_int(name, params[name], low, high, what="hyper-parameter")
    for name, bounds in _FLOAT_RANGES.items():
        checked[name] = _require_float(name, params[name], bounds)
    if params["activation"] not in ACTIVATIONS:
        raise BadInputError(
            f"hyper-parameter 'activation' must be one of {ACTIVATIONS}, got {params['activation']!r}"
        )
    checked["activation"] = params["activation"]
    return dict(sorted(checked.items()))


# -- the sweep -----------------------------------------------------------------------------------


def _round_sig(value: float, digits: int = 3) -> float:
    return float(f"{value:.{digits}g}")


def plan_trials(n_trials: int, *, epochs: int, seed: int) -> list[dict[str, Any]]:
    """A deterministic random-search sweep of ``n_trials`` hyper-parameter sets.

    Trial 0 is a known-good baseline; trial i > 0 is drawn from an RNG seeded by ``(seed, i)``, so a
    trial does not change when the sweep grows. All trials share ``split_seed = seed`` and the
    validation fraction, hence the same validation rows. Each trial has its own ``seed`` for weight
    initialisation, dropout and shuffling.
    """
    n_trials = _require_int("n_trials", n_trials, 1, MAX_TRIALS)
    epochs = _require_int("epochs", epochs, *_INT_RANGES["epochs"])
    seed = _require_int("seed", seed, 0, 2**32 - 1)
    trials = []
    for index in range(n_trials):
        rng = np.random.default_rng([seed, index])
        if index == 0:
            sampled = {key: DEFAULT_HYPERPARAMETERS[key] for key in _SEARCHED}
        else:
            log_low, log_high = (math.log10(bound) for bound in _LR_RANGE)
            sampled = {
                "lr": _round_sig(10 ** rng.uniform(log_low, log_high)),
                "hidden": int(rng.choice(_HIDDEN_CHOICES)),
                "depth": int(rng.choice(_DEPTH_CHOICES)),
                "weight_decay": float(rng.choice(_WEIGHT_DECAY_CHOICES)),
                "batch_size": int(rng.choice(_BATCH_CHOICES)),
                "dropout": float(rng.choice(_DROPOUT_CHOICES)),
                "activation": str(rng.choice(_ACTIVATION_CHOICES)),
            }
        trial_seed = int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
        trials.append(
            validate_trial(
                {
                    "trial": index,
                    "epochs": epochs,
                    "seed": trial_seed,
                    "split_seed": seed,
                    "val_fraction": DEFAULT_HYPERPARAMETERS["val_fraction"],
                    **sampled,
                }
            )
        )
    return trials


def relative_cost(trial: Mapping[str, Any]) -> float:
    """A trial's training time relative to the other trials of its sweep (a ranking, not seconds).

    Optimiser steps times layers, wider layers costing somewhat more: on a CPU a small MLP's step
    is mostly per-layer overhead, so batch size and depth weigh most (in a 6-trial demo sweep on 2
    cores, batch 128 at depth 3 took 1.1x the baseline's time and batch 1024 at depth 3 0.6x).
    """
    return trial["epochs"] / trial["batch_size"] * (trial["depth"] + 1) * (1 + trial["hidden"] / 256)


def longest_first(trials: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The trials in the order they should start: the costliest first, ties by trial number.

    Mapped tasks start in map-index order. Started in trial order, a sweep may end with one long
    trial running alone while the other slots idle; longest-first keeps them busy to the end.
    """
    return sorted((dict(t) for t in trials), key=lambda t: (-relative_cost(t), t["trial"]))


# -- data ----------------------------------------------------------------------------------------


def _manifest_digest(store: ArtifactStore, features_manifest: str) -> str:
    if not isinstance(features_manifest, str) or not features_manifest.strip():
        raise BadInputError(f"features_manifest must be a relative path, got {features_manifest!r}")
    try:
        return store.sha256(features_manifest)
    except FileNotFoundError:
        raise BadInputError(f"features manifest not found: {store.uri(features_manifest)}") from None


def _load_features_manifest(store: ArtifactStore, features_manifest: str) -> dict[str, Any]:
    """Read and check the preprocessing manifest; every defect is a ``BadInputError``."""
    if not isinstance(features_manifest, str) or not features_manifest.strip():
        raise BadInputError(f"features_manifest must be a relative path, got {features_manifest!r}")
    where = store.uri(features_manifest)
    try:
        manifest = store.read_json(features_manifest)
    except FileNotFoundError:
        raise BadInputError(f"features manifest not found: {where}") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise BadInputError(f"features manifest {where} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise BadInputError(f"features manifest {where} must be a JSON object")

    columns = manifest.get("feature_columns")
    if (
        not isinstance(columns, list)
        or not columns
        or not all(isinstance(c, str) and c for c in columns)
        or len(set(columns)) != len(columns)
    ):
        raise BadInputError(
            f"features manifest {where}: 'feature_columns' must be a non-empty list of distinct names"
        )
    target = manifest.get("target")
    if not isinstance(target, str) or not target or target in columns:
        raise BadInputError(
            f"features manifest {where}: 'target' must be a column name not among the features"
        )
    stats = manifest.get("stats")
    if not isinstance(stats, dict):
        raise BadInputError(f"features manifest {where}: 'stats' must map column names to statistics")
    for column in [*columns, target]:
        entry = stats.get(column)
        if not isinstance(entry, dict):
            raise BadInputError(f"features manifest {where}: no stats for column {column!r}")
        for key in ("mean", "std"):
            value = entry.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise BadInputError(
                    f"features manifest {where}: stats[{column!r}][{key!r}] must be a finite number"
                )
        if entry["std"] < 0:
            raise BadInputError(f"features manifest {where}: stats[{column!r}]['std'] is negative")
    key = _files_key(manifest)
    shards = manifest.get(key)
    if not isinstance(shards, list) or not shards:
        raise BadInputError(f"features manifest {where}: '{key}' must be a non-empty list")
    for shard in shards:
        if not isinstance(shard, dict) or not isinstance(shard.get("path"), str) or not shard["path"]:
            raise BadInputError(f"features manifest {where}: every shard needs a 'path', got {shard!r}")
    return manifest


def _files_key(manifest: Mapping[str, Any]) -> str:
    """Where a manifest lists its feature Parquet files: ``files`` (several per shard, fanout.featureset),
    or ``shards`` (one file per shard, manifests before features_version 2)."""
    return "files" if "files" in manifest else "shards"


def check_features_manifest(store: ArtifactStore, features_manifest: str) -> dict[str, Any]:
    """The preprocessing manifest, checked as training will read it (planning calls it once)."""
    return _load_features_manifest(store, features_manifest)


def _read_shard(
    store: ArtifactStore, shard: Mapping[str, Any], columns: list[str], manifest_rel: str
) -> np.ndarray:
    """One shard's ``columns`` as a float64 array (rows x columns), checked against the manifest."""
    import pyarrow.parquet as pq

    rel = shard["path"]
    try:
        with store.local_copy(rel) as local:
            expected = shard.get("sha256")
            if expected and sha256_file(local) != expected:
                raise BadInputError(f"features shard {rel} does not match its sha256 in {manifest_rel}")
            present = set(pq.read_schema(local).names)
            absent = [c for c in columns if c not in present]
            if absent:
                raise BadInputError(f"features shard {rel} lacks column(s) {', '.join(map(repr, absent))}")
            table = pq.read_table(local, columns=columns)
    except FileNotFoundError:
        raise BadInputError(f"features shard {rel} listed in {manifest_rel} not found") from None
    rows_out = shard.get("rows_out")
    if isinstance(rows_out, int) and rows_out != table.num_rows:
        raise BadInputError(f"features shard {rel} has {table.num_rows} rows, {manifest_rel} says {rows_out}")
    block = np.empty((table.num_rows, len(columns)), dtype=np.float64)
    for j, column in enumerate(columns):
        try:
            block[:, j] = table.column(column).to_numpy().astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise BadInputError(f"features shard {rel}: column {column!r} is not numeric ({exc})") from None
    bad_rows = int((~np.isfinite(block)).any(axis=1).sum())
    if bad_rows:
        raise BadInputError(f"features shard {rel} has {bad_rows} row(s) with missing or non-finite values")
    return block


def _load_dataset(
    store: ArtifactStore, features_manifest: str
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(standardised X float32, standardised y float32, scaling info) from every shard, in manifest order."""
    manifest = _load_features_manifest(store, features_manifest)
    features, target, stats = manifest["feature_columns"], manifest["target"], manifest["stats"]
    data = np.concatenate(
        [
            _read_shard(store, shard, [*features, target], features_manifest)
            for shard in manifest[_files_key(manifest)]
        ]
    )
    # A constant column (std 0) is scaled by 1 instead of dividing by zero.
    x_mean = np.array([stats[c]["mean"] for c in features], dtype=np.float64)
    x_std = np.array([stats[c]["std"] or 1.0 for c in features], dtype=np.float64)
    y_mean, y_std = float(stats[target]["mean"]), float(stats[target]["std"] or 1.0)
    x = ((data[:, :-1] - x_mean) / x_std).astype(np.float32)
    y = ((data[:, -1] - y_mean) / y_std).astype(np.float32)
    scaling = {
        "feature_columns": list(features),
        "target": target,
        "x_mean": x_mean.tolist(),
        "x_std": x_std.tolist(),
        "y_mean": y_mean,
        "y_std": y_std,
        "feature_stats": {
            c: {k: stats[c][k] for k in ("mean", "std", "min", "max") if k in stats[c]} for c in features
        },
    }
    return x, y, scaling


def _split(n_rows: int, hp: Mapping[str, Any], max_rows: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices): a permutation by ``split_seed``, so every trial agrees."""
    order = np.random.default_rng(hp["split_seed"]).permutation(n_rows)
    if max_rows is not None:
        order = order[:max_rows]
    n_val = max(1, round(len(order) * hp["val_fraction"]))
    if len(order) - n_val < 1:
        raise BadInputError(f"too few rows to train and validate: {len(order)}")
    return np.sort(order[n_val:]), np.sort(order[:n_val])


# -- model ---------------------------------------------------------------------------------------


def _architecture(hp: Mapping[str, Any], in_features: int) -> dict[str, Any]:
    return {
        "in_features": in_features,
        "hidden": hp["hidden"],
        "depth": hp["depth"],
        "dropout": hp["dropout"],
        "activation": hp["activation"],
    }


def build_mlp(arch: Mapping[str, Any]) -> torch.nn.Sequential:
    """The regressor: ``depth`` x (Linear -> activation [-> Dropout]) -> Linear(hidden, 1)."""
    from torch import nn

    activation = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}[arch["activation"]]
    layers: list[nn.Module] = []
    width = arch["in_features"]
    for _ in range(arch["depth"]):
        layers += [nn.Linear(width, arch["hidden"]), activation()]
        # Omitted at p=0 so a dropout-free model draws no random numbers in training.
        if arch["dropout"] > 0:
            layers.append(nn.Dropout(arch["dropout"]))
        width = arch["hidden"]
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


def _mean_squared_error(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    import torch

    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    with torch.inference_mode():
        for start in range(0, len(y), _EVAL_CHUNK):
            pred = model(x[start : start + _EVAL_CHUNK]).squeeze(-1)
            total += (pred - y[start : start + _EVAL_CHUNK]).double().square().sum()
    return total.item() / len(y)


def _finite_or_none(value: float | None) -> float | None:
    """JSON has no NaN/Infinity; a diverged loss is recorded as null."""
    return value if value is not None and math.isfinite(value) else None


# -- checkpoints ---------------------------------------------------------------------------------


def _load_checkpoint(store: ArtifactStore, rel: str, fingerprint: Mapping[str, Any]) -> dict[str, Any] | None:
    """The checkpoint at ``rel`` if it belongs to this trial and data; None to start afresh."""
    import torch

    if not store.exists(rel):
        return None
    try:
        with store.local_copy(rel) as local:
            checkpoint = torch.load(local, map_location="cpu", weights_only=True)
    except Exception as exc:  # a checkpoint we cannot read only costs the epochs it held
        log.warning("ignoring unreadable checkpoint %s: %s", store.uri(rel), exc)
        return None
    if checkpoint.get("format") != CHECKPOINT_FORMAT or checkpoint.get("fingerprint") != fingerprint:
        log.warning("ignoring checkpoint %s: written for other hyper-parameters or data", store.uri(rel))
        return None
    return checkpoint


def torch_bytes(obj: Any) -> bytes:
    """``torch.save`` of ``obj`` as bytes that depend on ``obj`` alone.

    Saved to a file, torch names the archive's records after the file (our temporary name,
    random), so two runs with the same seeds would differ; in memory the records are "archive/".
    """
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _save_checkpoint(store: ArtifactStore, rel: str, checkpoint: Mapping[str, Any]) -> None:
    store.write_bytes(rel, torch_bytes(dict(checkpoint)))


# -- training ------------------------------------------------------------------------------------


def train_trial(
    store: ArtifactStore,
    features_manifest: str,
    trial: Mapping[str, Any],
    out_unit: str,
    *,
    device: str | None = None,
    max_rows: int | None = None,
    stop_after_epochs: int | None = None,
) -> dict[str, Any]:
    """Train one trial's MLP into ``out_unit``; resume from its checkpoint; skip it if already verified.

    A verified unit is skipped, and a checkpoint resumed, only if made with the same hyper-parameters,
    features manifest (path and content) and ``max_rows``; otherwise the trial starts afresh.

    Writes ``out_unit/checkpoint.pt`` after every epoch (model, optimiser, LR scheduler, losses, best
    weights so far, and the CPU/CUDA/shuffle RNG states, so a resumed run on CPU is bit-identical to an
    uninterrupted one), then ``model.pt`` (the best epoch's weights plus what ``load_model`` needs) and
    ``metrics.json``, and commits the unit. ``max_rows`` trains on a fixed random subset (all trials of
    a sweep must use the same value). ``stop_after_epochs=k`` raises ``TrialInterrupted`` right after
    epoch k's checkpoint (k >= epochs simply completes), to simulate a killed worker.

    Returns ``{trial, out_unit, val_rmse, best_epoch, epochs, resumed_from_epoch, device, seconds, skipped}``;
    ``seconds`` is this call's wall time (or the recorded training time when skipped).
    """
    import torch

    started = time.perf_counter()
    hp = validate_trial(trial)
    if max_rows is not None:
        max_rows = _require_int("max_rows", max_rows, 2, 2**62)
    if stop_after_epochs is not None:
        stop_after_epochs = _require_int("stop_after_epochs", stop_after_epochs, 1, 2**62)
    # What the unit's outputs depend on: a checkpoint or commit made for anything else is not reused.
    fingerprint = {
        "hyperparameters": hp,
        "features_manifest": features_manifest,
        "features_sha256": _manifest_digest(store, features_manifest),
        "max_rows": max_rows,
    }

    done = store.verified(out_unit)
    if done is not None and done.get("fingerprint") == fingerprint:
        log.info("trial %s already verified in %s; skipping", hp["trial"], store.uri(out_unit))
        return {**done["result"], "skipped": True}

    dev = torch_device(device)
    on_cuda = dev.type == "cuda"
    torch.set_num_threads(available_cpus())  # several trials share a machine

    x_all, y_all, scaling = _load_dataset(store, features_manifest)
    train_idx, val_idx = _split(len(y_all), hp, max_rows)

    def to_device(array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        # Pinned memory only helps a host-to-GPU copy; on CPU it would be a wasted copy.
        return tensor.pin_memory().to(dev, non_blocking=True) if on_cuda else tensor

    x_train, y_train = to_device(x_all[train_idx]), to_device(y_all[train_idx])
    x_val, y_val = to_device(x_all[val_idx]), to_device(y_all[val_idx])
    n_train, epochs, batch_size = len(train_idx), hp["epochs"], hp["batch_size"]
    arch = _architecture(hp, x_all.shape[1])
    del x_all, y_all

    torch.manual_seed(hp["seed"])  # weight init, and dropout on CPU and CUDA
    model = build_mlp(arch).to(dev)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"], fused=True if on_cuda else None
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=hp["lr"] * 0.01)
    shuffle_rng = torch.Generator().manual_seed(hp["seed"])  # CPU generator: same permutations on any device

    checkpoint_rel = f"{out_unit}/{CHECKPOINT}"
    history: dict[str, Any] = {"train_loss": [], "val_loss": [], "seconds": 0.0, "attempts": []}
    best: dict[str, Any] = {"val_loss": math.inf, "epoch": 0, "state_dict": None}
    checkpoint = _load_checkpoint(store, checkpoint_rel, fingerprint)
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        history, best = checkpoint["history"], checkpoint["best"]
        # RNG states last: building the model above consumed random numbers.
        torch.set_rng_state(checkpoint["rng"]["torch"])
        shuffle_rng.set_state(checkpoint["rng"]["shuffle"])
        if on_cuda and checkpoint["rng"]["cuda"] is not None:
            torch.cuda.set_rng_state_all(checkpoint["rng"]["cuda"])
    resumed_from = len(history["train_loss"])
    if resumed_from:
        log.info(
            "trial %s resumes after epoch %d from %s", hp["trial"], resumed_from, store.uri(checkpoint_rel)
        )

    attempt = {"resumed_from_epoch": resumed_from, "epochs_run": 0, "seconds": 0.0, "device": str(dev)}
    history["attempts"].append(attempt)
    diverged = any(not math.isfinite(v) for v in history["train_loss"])
    epoch = resumed_from
    while epoch < epochs and not diverged:
        epoch_started = time.perf_counter()
        model.train()
        order = torch.randperm(n_train, generator=shuffle_rng).to(dev, non_blocking=True)
        # Summed on the device: one host sync per epoch instead of one per batch.
        loss_sum = torch.zeros((), device=dev)
        for start in range(0, n_train, batch_size):
            batch = order[start : start + batch_size]
            pred = model(x_train.index_select(0, batch)).squeeze(-1)
            loss = torch.nn.functional.mse_loss(pred, y_train.index_select(0, batch))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * batch.numel()
        scheduler.step()
        train_loss = loss_sum.item() / n_train
        val_loss = _mean_squared_error(model, x_val, y_val)
        epoch += 1
        history["train_loss"].append(train_loss)
        history["val_loss"].append(val_loss)
        if val_loss < best["val_loss"]:
            best = {
                "val_loss": val_loss,
                "epoch": epoch,
                "state_dict": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
            }
        diverged = not (math.isfinite(train_loss) and math.isfinite(val_loss))
        epoch_seconds = time.perf_counter() - epoch_started
        history["seconds"] += epoch_seconds
        attempt["epochs_run"] += 1
        attempt["seconds"] = round(attempt["seconds"] + epoch_seconds, 3)
        log.info(
            "trial %s epoch %d/%d: train %.5f val %.5f (%.2fs)",
            hp["trial"],
            epoch,
            epochs,
            train_loss,
            val_loss,
            epoch_seconds,
        )
        _save_checkpoint(
            store,
            checkpoint_rel,
            {
                "format": CHECKPOINT_FORMAT,
                "fingerprint": fingerprint,
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": {
                    "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if on_cuda else None,
                    "shuffle": shuffle_rng.get_state(),
                },
                "history": history,
                "best": best,
            },
        )
        if stop_after_epochs is not None and epoch >= stop_after_epochs and epoch < epochs:
            raise TrialInterrupted(f"trial {hp['trial']} stopped after epoch {epoch} (stop_after_epochs)")
    if diverged:
        log.warning("trial %s diverged at epoch %d; keeping its best epoch", hp["trial"], epoch)

    y_std = scaling["y_std"]
    val_rmse = (
        _finite_or_none(math.sqrt(best["val_loss"]) * y_std) if best["state_dict"] is not None else None
    )

    store.invalidate(out_unit)  # a crash while rewriting must not leave an old manifest trusted
    bundle = {
        "format": MODEL_FORMAT,
        "arch": arch,
        "state_dict": best["state_dict"] or {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **scaling,
        "hyperparameters": hp,
        "val_rmse": val_rmse,
        "best_epoch": best["epoch"],
    }
    store.write_bytes(f"{out_unit}/{MODEL}", torch_bytes(bundle))
    # Only what the seeds and data determine: the same trial trains to byte-identical files.
    # Timings and the history of resumed tries go in the unit's manifest (``run``).
    metrics = {
        "trial": hp["trial"],
        "hyperparameters": hp,
        "features_manifest": features_manifest,
        "features_sha256": fingerprint["features_sha256"],
        "feature_columns": scaling["feature_columns"],
        "target": scaling["target"],
        "split": {
            "split_seed": hp["split_seed"],
            "val_fraction": hp["val_fraction"],
            "max_rows": max_rows,
            "n_train": n_train,
            "n_val": len(val_idx),
        },
        "loss": "MSE of the standardised target (target - mean) / std",
        "epochs": epoch,
        "train_loss": [_finite_or_none(v) for v in history["train_loss"]],
        "val_loss": [_finite_or_none(v) for v in history["val_loss"]],
        "val_rmse_per_epoch": [_finite_or_none(math.sqrt(v) * y_std) for v in history["val_loss"]],
        "best_epoch": best["epoch"],
        "val_rmse": val_rmse,
        "diverged": diverged,
        "device": str(dev),
    }
    store.write_json(f"{out_unit}/{METRICS}", metrics)
    result = {
        "trial": hp["trial"],
        "out_unit": out_unit,
        "val_rmse": val_rmse,
        "best_epoch": best["epoch"],
        "epochs": epoch,
        "resumed_from_epoch": resumed_from,
        "device": str(dev),
        "seconds": round(time.perf_counter() - started, 3),
        "skipped": False,
    }
    run = {"seconds": round(history["seconds"], 3), "attempts": history["attempts"]}
    store.commit(
        out_unit, [MODEL, METRICS], val_rmse=val_rmse, fingerprint=fingerprint, result=result, run=run
    )
    return result


# -- loading a trained model ---------------------------------------------------------------------


def load_model(
    store: ArtifactStore, model_rel: str, *, device: str | None = None
) -> tuple[torch.nn.Sequential, dict[str, Any]]:
    """(the model in eval mode on ``device``, its bundle: arch, feature columns, scaling, hyper-parameters)."""
    import torch

    where = store.uri(model_rel)
    try:
        with store.local_copy(model_rel) as local:
            bundle = torch.load(local, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise BadInputError(f"model not found: {where}") from None
    except pickle.UnpicklingError:
        # torch's own text here advises weights_only=False, which would run any code the file holds
        raise BadInputError(
            f"{where} is not a readable {MODEL_FORMAT} model: not a torch archive of tensors and plain "
            "data (anything else is refused unread: loading it could run code)"
        ) from None
    except Exception as exc:  # truncated or not a torch archive: reading it again will not help
        raise BadInputError(f"{where} is not a readable {MODEL_FORMAT} model: {exc}") from None
    if not isinstance(bundle, dict) or bundle.get("format") != MODEL_FORMAT:
        raise BadInputError(f"{where} is not a {MODEL_FORMAT} model")
    try:
        model = build_mlp(bundle["arch"])
        model.load_state_dict(bundle["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise BadInputError(f"{where} is a damaged {MODEL_FORMAT} model: {exc}") from None
    return model.to(torch_device(device)).eval(), bundle


def predict(model: torch.nn.Module, bundle: Mapping[str, Any], features: Mapping[str, Any]) -> np.ndarray:
    """Predictions in target units for ``features`` (a DataFrame or a dict of equal-length columns)."""
    import torch

    columns = bundle["feature_columns"]
    absent = [c for c in columns if c not in features]
    if absent:
        raise BadInputError(f"features lack column(s) {', '.join(map(repr, absent))}")
    raw = np.column_stack([np.asarray(features[c], dtype=np.float64) for c in columns])
    x = ((raw - np.asarray(bundle["x_mean"])) / np.asarray(bundle["x_std"])).astype(np.float32)
    device = next(model.parameters()).device
    with torch.inference_mode():
        pred = torch.cat(
            [model(chunk.to(device)).squeeze(-1).cpu() for chunk in torch.from_numpy(x).split(_EVAL_CHUNK)]
        )
    return pred.double().numpy() * bundle["y_std"] + bundle["y_mean"]


# -- fan-in --------------------------------------------------------------------------------------


def trial_unit(run_prefix: str, trial: int) -> str:
    """Where a trial of a sweep writes its outputs: ``<run prefix>/trials/trial-<nnn>``."""
    return f"{run_prefix}/trials/trial-{trial:03d}"


def describe_trial(hyperparameters: Mapping[str, Any]) -> str:
    """A trial in a few words, e.g. "trial 2 (lr 0.007, 2x128 gelu, batch 256)"."""
    hp = hyperparameters
    return (
        f"trial {hp['trial']} (lr {hp['lr']:g}, {hp['depth']}x{hp['hidden']} {hp['activation']}, "
        f"batch {hp['batch_size']})"
    )


def select_best(
    store: ArtifactStore,
    trial_units: Iterable[str],
    out_unit: str,
    *,
    min_success_ratio: float = 1.0,
    hyperparameters: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Rank the verified trials by validation RMSE and keep the best model.

    ``trial_units`` are the unit paths of every trial of the sweep (``train_trial``'s result dicts
    are accepted as well). A unit that is not verified is a failed trial: the sweep goes on when at
    least ``min_success_ratio`` of the trials succeeded (rounded up: 0.8 of 6 trials is 5), and
    ``metrics.json`` and the result name the failed ones (``hyperparameters``, per unit, say which
    hyper-parameters they had). With fewer, or none, it raises ``BadInputError`` naming them.

    Writes ``out_unit/model.pt`` (a copy of the best trial's) and ``out_unit/metrics.json`` (the
    ranking with every trial's hyper-parameters and per-epoch losses, the best trial's details, the
    failed trials), then commits the unit. Ties go to the lower trial index; trials without a finite
    RMSE rank last. Raises ``BadInputError`` if too few trials succeeded or the trials were
    validated on different data.
    """
    if isinstance(trial_units, (str, bytes)):
        raise BadInputError("trial_units must be a list of trial unit paths, not one string")
    # Any iterable (Airflow hands over a lazy XCom sequence); train_trial's result dicts work too.
    trial_units = [u["out_unit"] if isinstance(u, Mapping) and "out_unit" in u else u for u in trial_units]
    if not trial_units or not all(isinstance(u, str) and u for u in trial_units):
        raise BadInputError("trial_units must be a non-empty list of trial unit paths")
    if len(set(trial_units)) != len(trial_units):
        raise BadInputError("trial_units lists a unit more than once")
    if isinstance(min_success_ratio, bool) or not 0 < min_success_ratio <= 1:
        raise BadInputError(f"min_success_ratio must be in (0, 1], got {min_success_ratio!r}")
    manifests = {unit: store.verified(unit) for unit in trial_units}
    succeeded = [unit for unit in trial_units if manifests[unit] is not None]
    failed = [
        _failed_trial(unit, (hyperparameters or {}).get(unit))
        for unit in trial_units
        if manifests[unit] is None
    ]
    needed = max(1, math.ceil(min_success_ratio * len(trial_units) - 1e-9))
    if len(succeeded) < needed:
        raise BadInputError(
            f"only {len(succeeded)} of {len(trial_units)} trials succeeded, fewer than the "
            f"{needed} min_success_ratio {min_success_ratio:g} requires; failed (no verified output): "
            + "; ".join(f["name"] for f in failed)
        )
    if failed:
        log.warning(
            "%d of %d trials failed and are left out of the ranking: %s",
            len(failed),
            len(trial_units),
            "; ".join(f["name"] for f in failed),
        )
    # The trials' checksums identify the inputs: a retrained trial makes the old selection stale.
    sources = [[unit, manifests[unit]["files"]] for unit in succeeded]
    done = store.verified(out_unit)
    if (
        done is not None
        and done.get("sources") == sources
        and done["result"].get("failed_trials") == [f["name"] for f in failed]
    ):
        return {**done["result"], "skipped": True}
    trials = [{"unit": unit, **store.read_json(f"{unit}/{METRICS}")} for unit in succeeded]

    def validation_data(t: Mapping[str, Any]) -> tuple:
        return t["features_manifest"], t["features_sha256"], sorted(t["split"].items())

    if len({repr(validation_data(t)) for t in trials}) > 1:
        raise BadInputError(
            "trials were validated on different data or splits; their RMSEs are not comparable"
        )

    ranked = sorted(trials, key=lambda t: (t["val_rmse"] is None, t["val_rmse"] or 0.0, t["trial"]))
    best = ranked[0]
    if best["val_rmse"] is None:
        raise BadInputError("no trial reached a finite validation RMSE (all diverged)")

    store.invalidate(out_unit)
    with store.local_copy(f"{best['unit']}/{MODEL}") as source, store.staged(f"{out_unit}/{MODEL}") as tmp:
        shutil.copyfile(source, tmp)
    ranking_keys = (
        "unit",
        "trial",
        "val_rmse",
        "best_epoch",
        "epochs",
        "diverged",
        "hyperparameters",
        # Per-epoch losses (standardised MSE) and validation RMSE: the report's loss curves.
        "train_loss",
        "val_loss",
        "val_rmse_per_epoch",
    )
    metrics = {
        "best": {
            "unit": best["unit"],
            "trial": best["trial"],
            "val_rmse": best["val_rmse"],
            "best_epoch": best["best_epoch"],
            "hyperparameters": best["hyperparameters"],
        },
        "target": best["target"],
        "feature_columns": best["feature_columns"],
        "features_manifest": best["features_manifest"],
        "split": best["split"],
        "n_trials": len(ranked),
        "ranking": [{"rank": rank, **{k: t[k] for k in ranking_keys}} for rank, t in enumerate(ranked, 1)],
        # Trials of the sweep that left no verified output (their tasks failed), by plan order.
        "n_planned": len(trial_units),
        "min_success_ratio": min_success_ratio,
        "failed_trials": failed,
    }
    store.write_json(f"{out_unit}/{METRICS}", metrics)
    result = {
        "best_trial": best["trial"],
        "best_unit": best["unit"],
        "val_rmse": best["val_rmse"],
        "n_trials": len(ranked),
        "n_planned": len(trial_units),
        "failed_trials": [f["name"] for f in failed],
        "model": f"{out_unit}/{MODEL}",
        "metrics": f"{out_unit}/{METRICS}",
        "skipped": False,
    }
    store.commit(
        out_unit,
        [MODEL, METRICS],
        val_rmse=best["val_rmse"],
        best_trial=best["trial"],
        sources=sources,
        result=result,
    )
    return result


def _failed_trial(unit: str, hyperparameters: Mapping[str, Any] | None) -> dict[str, Any]:
    if hyperparameters:
        return {
            "unit": unit,
            "trial": hyperparameters["trial"],
            "name": describe_trial(hyperparameters),
            "hyperparameters": dict(hyperparameters),
        }
    return {"unit": unit, "trial": None, "name": unit, "hyperparameters": None}


# -- prediction surface for the renderer ---------------------------------------------------------

_DISTANCE_HINTS = ("distance", "dist", "km", "mile")
_HOUR_PERIOD = 24.0


def _axis_range(stats: Mapping[str, Any], mean: float, std: float) -> tuple[float, float]:
    """mean +/- 2 std clipped to the observed [min, max]: long tails would leave the texture flat."""
    low, high = mean - 2 * std, mean + 2 * std
    if isinstance(stats.get("min"), (int, float)):
        low = max(low, stats["min"])
    if isinstance(stats.get("max"), (int, float)):
        high = min(high, stats["max"])
    if not high > low:
        low, high = mean - 1.0, mean + 1.0
    return float(low), float(high)


def _column_axis(bundle: Mapping[str, Any], column: str) -> dict[str, Any]:
    j = list(bundle["feature_columns"]).index(column)
    stats = bundle.get("feature_stats", {}).get(column, {})
    return {
        "name": column,
        "columns": [column],
        "range": _axis_range(stats, bundle["x_mean"][j], bundle["x_std"][j]),
    }


def _is_plain(bundle: Mapping[str, Any], column: str) -> bool:
    """A feature that can be an axis: not a 0/1 flag, nor an encoding (log_, _sin/_cos) of another one."""
    name = column.lower()
    stats = bundle.get("feature_stats", {}).get(column, {})
    is_flag = stats.get("min") == 0 and stats.get("max") == 1
    return not is_flag and not name.startswith("log_") and not name.endswith(("_sin", "_cos"))


def surface_axes(bundle: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The two axes ``prediction_surface`` spans: ``{"x": axis, "y": axis}``, JSON-able.

    Each axis is ``{"name", "columns", "range"}``. Plain features are those that are neither 0/1 flags
    nor ``log_*`` / ``*_sin`` / ``*_cos`` encodings. x is the first plain feature whose name mentions a
    distance (``distance``, ``dist``, ``km``, ``mile``). y is the hour of day: a plain feature whose
    name contains ``hour``, else ``hour_of_day`` over [0, 24) written through a ``*hour*_sin`` /
    ``*hour*_cos`` pair (period 24 h). A role no feature fills goes to the most influential remaining
    plain feature (the one whose sweep moves the prediction most). A column axis spans mean +/- 2 std
    clipped to the feature's observed min/max.
    """
    columns = list(bundle["feature_columns"])
    if len(columns) < 2:
        raise BadInputError("a prediction surface needs a model with at least two features")
    plain = [c for c in columns if _is_plain(bundle, c)]
    x_name = next((c for hint in _DISTANCE_HINTS for c in plain if hint in c.lower()), None)
    x_axis = _column_axis(bundle, x_name) if x_name else None

    y_axis = None
    hour_column = next((c for c in plain if "hour" in c.lower() and c != x_name), None)
    sine = next((c for c in columns if "hour" in c.lower() and c.lower().endswith("_sin")), None)
    cosine = f"{sine[:-4]}_cos" if sine else None
    if hour_column:
        y_axis = _column_axis(bundle, hour_column)
    elif sine and cosine in columns:
        y_axis = {"name": "hour_of_day", "columns": [sine, cosine], "range": (0.0, _HOUR_PERIOD)}

    if x_axis is None or y_axis is None:
        taken = {c for axis in (x_axis, y_axis) if axis for c in axis["columns"]}
        ranked = _influence_ranking(bundle, [c for c in plain if c not in taken])
        if len(ranked) < (x_axis is None) + (y_axis is None):
            raise BadInputError("the model has too few plain features for a prediction surface")
        x_axis = x_axis or _column_axis(bundle, ranked.pop(0))
        y_axis = y_axis or _column_axis(bundle, ranked.pop(0))
    return {"x": x_axis, "y": y_axis}


def _grid_features(
    bundle: Mapping[str, Any], axes: Mapping[str, Mapping[str, Any]], values: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Feature columns for grid points at ``values[role]`` along ``axes[role]`` (role: "x", "y").

    Every other feature sits at its mean, except those derived from an axis, which follow it so each
    point is a plausible row: ``log_<c>`` = log1p(c) (preprocessing's encoding); with ``duration_min``
    and ``speed_kmh`` present, the duration follows the distance at the mean speed; on the hour axis,
    sin/cos and the hour flags follow the hour, for a weekday (``is_weekend`` = 0).
    """
    columns = list(bundle["feature_columns"])
    mean = dict(zip(columns, bundle["x_mean"], strict=True))
    n_points = len(values["x"])
    features = {c: np.full(n_points, mean[c]) for c in columns}
    on_axes = {c for axis in axes.values() for c in axis["columns"]}
    changed = set()
    for role, axis in axes.items():
        value = values[role]
        if axis["name"] == "hour_of_day":
            angle = 2 * np.pi * value / _HOUR_PERIOD
            sine, cosine = axis["columns"]
            features[sine], features[cosine] = np.sin(angle), np.cos(angle)
            # The hour flags follow the hour too (a weekday), else the model's surcharges would sit
            # at their average everywhere; preprocessing's own definitions, so the two cannot drift.
            from fanout.preprocess import is_night, is_rush_hour

            hour = np.floor(value)
            flags = {
                "is_rush_hour": is_rush_hour(hour, np.zeros(n_points, dtype=bool)),
                "is_night": is_night(hour),
            }
            for flag, on in flags.items():
                if flag in features:
                    features[flag] = on.astype(np.float64)
            if "is_weekend" in features:
                features["is_weekend"] = np.zeros(n_points)
            continue
        features[axis["name"]] = value
        changed.add(axis["name"])
        is_distance = any(hint in axis["name"].lower() for hint in _DISTANCE_HINTS)
        if is_distance and {"duration_min", "speed_kmh"} <= features.keys() - on_axes:
            features["duration_min"] = 60.0 * value / max(mean["speed_kmh"], 1e-6)
            changed.add("duration_min")
    for column in changed:
        if f"log_{column}" in features:
            features[f"log_{column}"] = np.log1p(np.maximum(features[column], 0.0))
    return features


def _influence_ranking(bundle: Mapping[str, Any], candidates: Sequence[str]) -> list[str]:
    """``candidates`` by how far a one-at-a-time sweep moves the prediction (others at mean), largest first."""
    import torch

    model = build_mlp(bundle["arch"])
    model.load_state_dict(bundle["state_dict"])
    model.eval()
    columns = list(bundle["feature_columns"])
    spread = {}
    for name in candidates:
        j = columns.index(name)
        low, high = _column_axis(bundle, name)["range"]
        sweep = (np.linspace(low, high, 33) - bundle["x_mean"][j]) / bundle["x_std"][j]
        x = torch.zeros(len(sweep), len(columns))  # zeros are the means in standardised units
        x[:, j] = torch.from_numpy(sweep.astype(np.float32))
        with torch.inference_mode():
            pred = model(x).squeeze(-1)
        spread[name] = float(pred.max() - pred.min())
    return sorted(spread, key=lambda name: -spread[name])


def prediction_surface(store: ArtifactStore, model_rel: str, *, resolution: int = 64) -> np.ndarray:
    """The model's predicted target over a 2-D feature grid, min-max scaled to [0, 1] (float32).

    ``surface[i, j]`` is the prediction at the i-th value of the y axis (rows, ascending) and the j-th
    value of the x axis (columns, ascending). The axes are distance (x) and hour of day (y, [0, 24) h)
    when the model has such features; ``surface_axes`` gives the rule, names and ranges. Every other
    feature stays at its mean, except encodings derived from an axis (see ``_grid_features``). A
    model whose prediction does not vary over the grid gives all zeros.
    """
    resolution = _require_int("resolution", resolution, 2, 4096)
    model, bundle = load_model(store, model_rel, device="cpu")  # a few thousand rows: not worth a GPU
    axes = surface_axes(bundle)
    x_values = np.linspace(*axes["x"]["range"], resolution)
    # A cyclic axis leaves out its end point, which is its start point again.
    y_values = np.linspace(*axes["y"]["range"], resolution, endpoint=axes["y"]["name"] != "hour_of_day")
    grid_y, grid_x = np.meshgrid(y_values, x_values, indexing="ij")
    features = _grid_features(bundle, axes, {"x": grid_x.ravel(), "y": grid_y.ravel()})
    import torch

    # One thread fixes the order of the sums, so the texture's bytes do not depend on how many
    # threads BLAS chose under the machine's load at that moment; the grid is small.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pred = predict(model, bundle, features).reshape(resolution, resolution)
    finally:
        torch.set_num_threads(threads)
    span = float(pred.max() - pred.min())
    if not math.isfinite(span) or span <= 1e-12 * max(1.0, float(np.abs(pred).max())):
        return np.zeros((resolution, resolution), dtype=np.float32)
    return np.clip((pred - pred.min()) / span, 0.0, 1.0).astype(np.float32)
