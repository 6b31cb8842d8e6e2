"""# Preprocessing: raw ride records into clean, featurised Parquet (the pipeline's first stage)

`ensure_dataset` → `featurise_shard` x shards → `merge_stats` → Asset **fanout_features**

1. **ensure_dataset** lists the raw Parquet shards: the user's `dataset_prefix` under the
   artifact root, or a seeded synthetic rides dataset it generates once (`n_shards` x
   `rows_per_shard`, with a `dirt` share of broken rows).
2. **featurise_shard**, one mapped task per shard (named by the shard in the grid), cleans the
   shard with Dask — nulls, malformed numbers, implausible values, duplicates, unknown zones,
   each dropped row counted by reason — and writes its features and partial statistics.
3. **merge_stats** checks every shard's output, combines the statistics into global
   normalisation figures and writes the manifest training reads; publishing it emits the
   `fanout_features` asset event, which schedules **fanout_train**.

Outputs live under `preprocess/<run>/` of `FANOUT_ARTIFACT_ROOT`; each unit is verified by its
`_SUCCESS.json`, so a cleared task skips work already done. The **Fanout report** tab of a run
shows the timeline, the rows dropped per reason and the feature statistics.
"""

from __future__ import annotations

from inspect import cleandoc

from airflow.sdk import Param, dag, task

from fanout.dagkit import (
    FEATURES,
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
    @task(
        **placement("bookkeeping"),
        doc_md=cleandoc(
            """The raw shards to process: the user's dataset, or the seeded synthetic one.

            - **Reads:** the params; with `dataset_prefix`, the Parquet files under it.
            - **Writes:** without `dataset_prefix`, the synthetic shards under
              `datasets/rides/seed<seed>-<n_shards>x<rows_per_shard>-dirt<dirt>/` (once: a verified
              shard is reused).
            - **Returns:** the shard paths, one `featurise_shard` task each.
            - **Size:** `bookkeeping`, on the CPU node pool.
            """
        ),
    )
    def ensure_dataset(params: dict | None = None) -> list[str]:
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

    @task(
        **placement("shard"),
        multiple_outputs=False,
        max_active_tis_per_dagrun=16,
        # The shard's file name, e.g. "shard-00003", instead of a bare map index.
        map_index_template="{{ task.op_kwargs['raw_shard'].rsplit('/', 1)[-1].removesuffix('.parquet') }}",
        doc_md=cleandoc(
            """Clean and featurise one raw shard with Dask.

            - **Reads:** one raw Parquet shard.
            - **Writes:** `preprocess/<run>/shards/<shard>/`: `features.parquet`, `stats.json`
              (partial sums for the global statistics, rows in and out, rows dropped per reason) and
              `_SUCCESS.json`.
            - **Size:** `shard`, on the CPU node pool; at most 16 run at once per DAG run.
            """
        ),
    )
    def featurise_shard(raw_shard: str) -> dict:
        from pathlib import PurePosixPath

        from fanout import preprocess
        from fanout.storage import ArtifactStore

        unit = f"{run_prefix('preprocess')}/shards/{PurePosixPath(raw_shard).stem}"
        with fail_fast():
            return preprocess.featurise_shard(ArtifactStore(), raw_shard, unit)

    @task(
        **placement("bookkeeping"),
        multiple_outputs=False,
        outlets=[FEATURES],
        doc_md=cleandoc(
            """Fan-in: check every shard's output and merge the statistics.

            - **Reads:** each shard's `_SUCCESS.json` and statistics.
            - **Writes:** `preprocess/<run>/merged/manifest.json` (feature columns, global mean and
              std, rows in and out, drops per reason, every shard's path and SHA-256) and
              `_SUCCESS.json`; emits the `fanout_features` asset event that schedules training.
            - **Size:** `bookkeeping`, on the CPU node pool.
            """
        ),
    )
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
