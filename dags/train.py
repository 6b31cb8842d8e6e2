"""# Training: a hyper-parameter sweep of PyTorch fare regressors (the pipeline's second stage)

Asset **fanout_features** → `plan_trials` → `train_trial` x trials → `select_best` → Asset **fanout_model**

Scheduled by the `fanout_features` event of **fanout_preprocess**, once per partition: the run
has the event's partition key and trains on that partition's published features (its
`current.json`; or set the `features_manifest` param). Outputs live under
`train/partitions/<key>/<run>/`; `train/partitions/<key>/current.json` and `train/latest.json`
name the partition's and the newest partition's model.

1. **plan_trials** draws the sweep: trial 0 is a known-good baseline, the others sample the
   learning rate, width, depth, batch size, dropout and activation from a seeded search space,
   and lists the costliest trials first (mapped tasks start in that order, so no long trial is
   left running alone at the end).
2. **train_trial**, one mapped task per trial (named by its hyper-parameters in the grid),
   trains an MLP on the shared train/validation split, checkpointing every epoch so a retry
   resumes where the killed try stopped. On Kubernetes each trial gets one GPU and a slot of
   the `fanout_gpu` Airflow pool.
3. **select_best** ranks the trials by validation RMSE and keeps the best model; publishing it
   emits the `fanout_model` asset event, which schedules **fanout_render**. It runs once every
   trial has ended: the sweep succeeds when at least `min_success_ratio` of the trials did, and
   it names the failed ones; with fewer it fails.

A run without a partition key writes under `train/<run>/`. The **Fanout report** tab of a run
shows every trial's loss curves with the best one marked.
"""

from __future__ import annotations

from inspect import cleandoc

from airflow.sdk import Param, TriggerRule, dag, task

from fanout.dagkit import (
    FEATURES,
    MODEL,
    Tag,
    default_args,
    fail_fast,
    follows,
    params,
    partition_output,
    publish,
    publish_partition,
    refuse_unknown_conf,
    run_prefix,
    triggering_extra,
)
from fanout.keys import KEY_PATTERN
from fanout.pools import placement

DAG_ID = "fanout_train"


@dag(
    dag_id=DAG_ID,
    schedule=follows(FEATURES),  # one run per partition of features, with its partition key
    catchup=False,
    max_active_runs=1,
    default_args=default_args(),
    tags=[Tag.FANOUT, Tag.TRAINING, Tag.PYTORCH, Tag.GPU],
    params=params(
        DAG_ID,
        n_trials=Param(6, type="integer", minimum=1, maximum=256, description="Hyper-parameter trials"),
        epochs=Param(6, type="integer", minimum=1, maximum=1000, description="Epochs per trial"),
        max_rows=Param(
            400_000, type="integer", minimum=1_000, description="Rows sampled from the features per trial"
        ),
        seed=Param(11, type="integer", minimum=0, description="Seed of the sweep and the data split"),
        min_success_ratio=Param(
            0.8,
            type="number",
            exclusiveMinimum=0,
            maximum=1,
            description="Share of trials that must succeed for the sweep to succeed (0.8 of 6: 5); "
            "select_best names the failed ones",
        ),
        features_manifest=Param(
            "",
            type="string",
            pattern=KEY_PATTERN,
            description="Features manifest to train on; empty takes the one that triggered this run",
        ),
    ),
    doc_md=__doc__,
)
def fanout_train():
    @task(
        **placement("bookkeeping"),
        doc_md=cleandoc(
            """Draw the sweep's hyper-parameter sets.

            - **Reads:** the params and the triggering `fanout_features` event (the manifest path);
              checks that the manifest exists.
            - **Writes:** nothing.
            - **Returns:** one spec per trial (hyper-parameters, manifest, rows), one `train_trial` each,
              the costliest trials first.
            - **Size:** `bookkeeping`, on the CPU node pool.
            """
        ),
    )
    def plan_trials(params: dict | None = None) -> list[dict]:
        from fanout import train
        from fanout.errors import BadInputError
        from fanout.keys import check_key
        from fanout.storage import ArtifactStore

        refuse_unknown_conf()
        with fail_fast():
            manifest = (
                params["features_manifest"]
                or partition_output("preprocess", "manifest")
                or triggering_extra(FEATURES, "manifest")
            )
            if not manifest:
                raise BadInputError(
                    "no features_manifest param, no published features of this run's partition "
                    "and no triggering fanout_features event"
                )
            # Checked once here: a bad manifest fails planning, not every trial.
            train.check_features_manifest(ArtifactStore(), check_key(manifest, "param 'features_manifest'"))
            trials = train.longest_first(
                train.plan_trials(params["n_trials"], epochs=params["epochs"], seed=params["seed"])
            )
        return [{"trial": t, "features_manifest": manifest, "max_rows": params["max_rows"]} for t in trials]

    @task(
        **placement("trial"),
        multiple_outputs=False,
        max_active_tis_per_dagrun=16,
        # The trial and what sets it apart, e.g. "trial 2: lr 0.007, 2x128 gelu, batch 256".
        map_index_template=(
            "{% set t = task.op_kwargs['spec']['trial'] %}trial {{ t['trial'] }}: lr {{ t['lr'] }}, "
            "{{ t['depth'] }}x{{ t['hidden'] }} {{ t['activation'] }}, batch {{ t['batch_size'] }}"
        ),
        doc_md=cleandoc(
            """Train one trial's MLP regressor, checkpointed every epoch.

            - **Reads:** the features manifest and the feature shards it lists (up to `max_rows`
              rows), and the trial's last checkpoint when a retry resumes.
            - **Writes:** `train/<run>/trials/trial-<n>/`: `checkpoint.pt` (every epoch), `model.pt`,
              `metrics.json` (per-epoch train and validation loss, RMSE, timings) and `_SUCCESS.json`.
            - **Size:** `trial`, on the GPU node pool (one GPU), gated by the `fanout_gpu` Airflow
              pool; at most 16 run at once per DAG run.
            """
        ),
    )
    def train_trial(spec: dict) -> dict:
        from fanout import train
        from fanout.storage import ArtifactStore

        unit = train.trial_unit(run_prefix("train"), spec["trial"]["trial"])
        with fail_fast():
            return train.train_trial(
                ArtifactStore(), spec["features_manifest"], spec["trial"], unit, max_rows=spec["max_rows"]
            )

    # Runs once every trial has ended, failed or not (a failed plan_trials still stops it), and
    # reads the plan, not the trials' XComs: a failed trial left none, and must be named.
    @task(
        **placement("bookkeeping"),
        multiple_outputs=False,
        outlets=[MODEL],
        trigger_rule=TriggerRule.ALL_DONE_MIN_ONE_SUCCESS,
        doc_md=cleandoc(
            """Fan-in: rank the trials by validation RMSE and keep the best model.

            - **Runs** once every trial has ended, failed or not; succeeds when at least
              `min_success_ratio` of the trials left a verified output, else fails (no retries).
            - **Reads:** the plan, every trial's `_SUCCESS.json` and `metrics.json`, the best trial's
              `model.pt`.
            - **Writes:** `<out>/best/` (`<out>`: `train/partitions/<key>/<run>`): `model.pt`, `metrics.json` (the ranking, every trial's
              hyper-parameters and per-epoch losses, the failed trials) and `_SUCCESS.json`; switches the
              partition's `current.json` (and `train/latest.json`); emits the `fanout_model` asset event
              that schedules rendering.
            - **Returns:** the best trial, its RMSE, and the failed trials by name.
            - **Size:** `bookkeeping`, on the CPU node pool.
            """
        ),
    )
    def select_best(plan: list[dict], params: dict | None = None) -> dict:
        from fanout import train
        from fanout.storage import ArtifactStore

        prefix = run_prefix("train")
        trials = sorted((spec["trial"] for spec in plan), key=lambda trial: trial["trial"])
        planned = {train.trial_unit(prefix, trial["trial"]): trial for trial in trials}
        with fail_fast():
            summary = train.select_best(
                ArtifactStore(),
                list(planned),
                f"{prefix}/best",
                min_success_ratio=params["min_success_ratio"],
                hyperparameters=planned,
            )
        publish_partition("train", model=summary["model"], metrics=summary["metrics"])
        publish(MODEL, model=summary["model"])
        return summary

    plan = plan_trials()
    train_trial.expand(spec=plan) >> select_best(plan)


fanout_train()
