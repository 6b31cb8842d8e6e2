"""Preprocessing: clean and featurise raw shards with Dask (fan-out), merge statistics (fan-in).

ensure_dataset -> featurise_shard x N shards -> merge_stats -> Asset fanout_features
"""

from __future__ import annotations

from airflow.sdk import Param, dag, task

from fanout.dagkit import (
    FEATURES,
    OWNER,
    Tag,
    default_args,
    fail_fast,
    params,
    publish,
    refuse_unknown_conf,
    run_prefix,
)
from fanout.keys import KEY_PATTERN
from fanout.pools import placement

DAG_ID = "fanout_preprocess"


@dag(
    dag_id=DAG_ID,
    schedule=None,
    catchup=False,
    max_active_runs=1,
    default_args=default_args(),
    tags=[Tag.FANOUT, Tag.PREPROCESSING, Tag.DASK],
    owner_links={OWNER: "https://github.com/fanout"},
    params=params(
        DAG_ID,
        n_shards=Param(6, type="integer", minimum=1, maximum=512, description="Raw shards to generate"),
        rows_per_shard=Param(
            500_000, type="integer", minimum=1_000, maximum=50_000_000, description="Rows per raw shard"
        ),
        seed=Param(7, type="integer", minimum=0, description="Seed of the synthetic dataset"),
        dirt=Param(0.03, type="number", minimum=0, maximum=0.5, description="Share of dirty rows"),
        dataset_prefix=Param(
            "",
            type="string",
            pattern=KEY_PATTERN,
            description="Existing Parquet dataset under the artifact root; empty generates the synthetic one",
        ),
    ),
    doc_md=__doc__,
)
def fanout_preprocess():
    @task(**placement("bookkeeping"))
    def ensure_dataset(params: dict | None = None) -> list[str]:
        """The raw shards to process: the user's dataset, or the seeded synthetic one."""
        from fanout import preprocess
        from fanout.keys import check_key
        from fanout.storage import ArtifactStore

        store = ArtifactStore()
        refuse_unknown_conf()
        with fail_fast():
            prefix = check_key(params["dataset_prefix"], "param 'dataset_prefix'")
            if not prefix:
                prefix = (
                    f"datasets/rides/seed{params['seed']}-{params['n_shards']}x{params['rows_per_shard']}"
                    f"-dirt{params['dirt']}"
                )
                preprocess.generate_dataset(
                    store,
                    prefix,
                    n_shards=params["n_shards"],
                    rows_per_shard=params["rows_per_shard"],
                    seed=params["seed"],
                    dirt=params["dirt"],
                )
            return preprocess.list_shards(store, prefix)

    @task(**placement("shard"), multiple_outputs=False, max_active_tis_per_dagrun=16)
    def featurise_shard(raw_shard: str) -> dict:
        from pathlib import PurePosixPath

        from fanout import preprocess
        from fanout.storage import ArtifactStore

        unit = f"{run_prefix('preprocess')}/shards/{PurePosixPath(raw_shard).stem}"
        with fail_fast():
            return preprocess.featurise_shard(ArtifactStore(), raw_shard, unit)

    @task(**placement("bookkeeping"), multiple_outputs=False, outlets=[FEATURES])
    def merge_stats(shards: list[dict]) -> dict:
        from fanout import preprocess
        from fanout.storage import ArtifactStore

        out = f"{run_prefix('preprocess')}/merged"
        with fail_fast():
            summary = preprocess.merge_stats(ArtifactStore(), [s["out_unit"] for s in shards], out)
        publish(FEATURES, manifest=f"{out}/manifest.json")
        return summary

    merge_stats(featurise_shard.expand(raw_shard=ensure_dataset()))


fanout_preprocess()
