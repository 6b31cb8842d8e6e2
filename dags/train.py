"""Training: a PyTorch hyper-parameter sweep, one trial per mapped task (fan-out), best model (fan-in).

Scheduled on new features. plan_trials -> train_trial x N (GPU pool, checkpointed) -> select_best
─▶ Asset fanout_model
"""

from __future__ import annotations

from airflow.sdk import Param, dag, task

from fanout.dagkit import (
    FEATURES,
    MODEL,
    OWNER,
    Tag,
    default_args,
    fail_fast,
    params,
    publish,
    refuse_unknown_conf,
    run_prefix,
    triggering_extra,
)
from fanout.keys import KEY_PATTERN
from fanout.pools import placement

DAG_ID = "fanout_train"


@dag(
    dag_id=DAG_ID,
    schedule=[FEATURES],
    catchup=False,
    max_active_runs=1,
    default_args=default_args(),
    tags=[Tag.FANOUT, Tag.TRAINING, Tag.PYTORCH, Tag.GPU],
    owner_links={OWNER: "https://github.com/fanout"},
    params=params(
        DAG_ID,
        n_trials=Param(6, type="integer", minimum=1, maximum=256, description="Hyper-parameter trials"),
        epochs=Param(6, type="integer", minimum=1, maximum=1000, description="Epochs per trial"),
        max_rows=Param(
            400_000, type="integer", minimum=1_000, description="Rows sampled from the features per trial"
        ),
        seed=Param(11, type="integer", minimum=0, description="Seed of the sweep and the data split"),
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
    @task(**placement("bookkeeping"))
    def plan_trials(params: dict | None = None) -> list[dict]:
        from fanout import train
        from fanout.errors import BadInputError
        from fanout.keys import check_key
        from fanout.storage import ArtifactStore

        refuse_unknown_conf()
        with fail_fast():
            manifest = params["features_manifest"] or triggering_extra(FEATURES, "manifest")
            if not manifest:
                raise BadInputError("no features_manifest param and no triggering fanout_features event")
            # Checked once here: a bad manifest fails planning, not every trial.
            train.check_features_manifest(ArtifactStore(), check_key(manifest, "param 'features_manifest'"))
            trials = train.plan_trials(params["n_trials"], epochs=params["epochs"], seed=params["seed"])
        return [{"trial": t, "features_manifest": manifest, "max_rows": params["max_rows"]} for t in trials]

    @task(**placement("trial"), multiple_outputs=False, max_active_tis_per_dagrun=16)
    def train_trial(spec: dict) -> dict:
        from fanout import train
        from fanout.storage import ArtifactStore

        unit = f"{run_prefix('train')}/trials/trial-{spec['trial']['trial']:03d}"
        with fail_fast():
            return train.train_trial(
                ArtifactStore(), spec["features_manifest"], spec["trial"], unit, max_rows=spec["max_rows"]
            )

    @task(**placement("bookkeeping"), multiple_outputs=False, outlets=[MODEL])
    def select_best(trials: list[dict]) -> dict:
        from fanout import train
        from fanout.storage import ArtifactStore

        out = f"{run_prefix('train')}/best"
        with fail_fast():
            summary = train.select_best(ArtifactStore(), [t["out_unit"] for t in trials], out)
        publish(MODEL, model=f"{out}/model.pt")
        return summary

    select_best(train_trial.expand(spec=plan_trials()))


fanout_train()
