"""# Preprocessing: raw ride records into clean, featurised Parquet (the pipeline's first stage)

`plan_dataset` → `generate_shard` x shards → `commit_dataset` → `featurise_shard` x shards →
`merge_stats` → Asset **fanout_features**

1. **plan_dataset** names the synthetic shards still to generate: all of them the first time
   (`n_shards` x `rows_per_shard`, with a `dirt` share of broken rows), none for a user's
   `dataset_prefix` or a synthetic dataset already committed.
2. **generate_shard**, one mapped task per shard to make, writes one raw shard a row group at a
   time, so its memory does not grow with `rows_per_shard` (none run when there is nothing to make).
3. **commit_dataset** records the generated shards' checksums in the dataset's `_SUCCESS.json`
   and lists the raw shards to featurise, of either kind of dataset.
4. **featurise_shard**, one mapped task per shard (named by the shard in the grid), is a client
   of the shared Dask cluster (`DASK_SCHEDULER_ADDRESS`): the Dask workers read the shard's rows,
   clean them — nulls, malformed numbers, implausible values, duplicates, unknown zones, each
   dropped row counted by reason — featurise them and write the Parquet parts; the task checks
   and commits what they wrote. A shard that keeps less than `min_rows_kept` of its rows, or none,
   or has a required column without one usable value fails as bad input (no retry), naming the
   rows dropped per reason; an earlier commit of it stays as it was.
5. **merge_stats** checks every shard's output and the rows kept overall (`min_rows_kept` again),
   combines the statistics into global normalisation figures and writes the manifest training reads; publishing it emits the
   `fanout_features` asset event, which schedules **fanout_train**.

**Schedule and partitions.** The DAG runs on `FANOUT_SCHEDULE` (cron, UTC; daily by default),
each run covering one partition of the data: the run at midnight takes the day before it, key
`YYYY-MM-DD` (a schedule firing more than daily has minute keys, `YYYY-MM-DDTHHMM`). The
synthetic generator draws each partition's rows from its key; a user's `dataset_prefix` is read
at `<dataset_prefix>/<key>/*.parquet`. Catchup is off: past partitions come from a backfill
(`airflow backfill create`, or the UI's Backfill dialog) with its own bound on concurrent runs.

Outputs live under `preprocess/partitions/<key>/<run>/` of `FANOUT_ARTIFACT_ROOT`, and
`preprocess/partitions/<key>/current.json` (switched atomically by `merge_stats`) names the
run whose outputs are the partition's; `preprocess/latest.json` names the newest partition's.
A run without a partition key (an ad hoc trigger) writes under `preprocess/<run>/` and does not
schedule training. Each unit is verified by its `_SUCCESS.json`, so a cleared task skips work
already done. The **Fanout report** tab of a run
shows the timeline, the rows dropped per reason and the feature statistics.
"""

from __future__ import annotations

from inspect import cleandoc

from airflow.sdk import Param, TriggerRule, dag, task

from fanout.dagkit import (
    FEATURES,
    Tag,
    default_args,
    fail_fast,
    params,
    partition_key,
    preprocess_schedule,
    publish,
    publish_partition,
    refuse_unknown_conf,
    run_prefix,
)
from fanout.keys import KEY_PATTERN
from fanout.pools import placement

DAG_ID = "fanout_preprocess"


def _spec(params: dict):
    """The synthetic dataset (of this run's partition) the params describe (fanout.datasets, imported in the task)."""
    from fanout.datasets import SyntheticSpec

    return SyntheticSpec(
        n_shards=params["n_shards"],
        rows_per_shard=params["rows_per_shard"],
        seed=params["seed"],
        dirt=params["dirt"],
        partition=partition_key() or "",
    )


def _user_dataset(params: dict) -> str:
    """The user's dataset this run reads: its partition's folder when the run has one."""
    key = partition_key()
    return f"{params['dataset_prefix']}/{key}" if key else params["dataset_prefix"]


@dag(
    dag_id=DAG_ID,
    schedule=preprocess_schedule(),
    catchup=False,  # past partitions are backfilled on purpose, with a bound on concurrent runs
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
        min_rows_kept=Param(
            0.5,
            type="number",
            minimum=0,
            maximum=1,
            description="Data quality gate: a shard, or the whole run, keeping less than this share of "
            "its rows after cleaning fails as bad input",
        ),
    ),
    doc_md=__doc__,
)
def fanout_preprocess():
    @task(
        **placement("bookkeeping"),
        doc_md=cleandoc(
            """The synthetic shards still to generate: none for a user's dataset or one already committed.

            - **Reads:** the params; the synthetic dataset's `_SUCCESS.json`, if any (a dataset of the
              same params is reused, one of other params under the same prefix is refused).
            - **Writes:** nothing (an interrupted earlier attempt's manifest is dropped).
            - **Returns:** the shard numbers to generate, one `generate_shard` task each.
            - **Size:** `bookkeeping`, on the CPU node pool.
            """
        ),
    )
    def plan_dataset(params: dict | None = None) -> list[int]:
        from fanout import datasets
        from fanout.keys import check_key
        from fanout.storage import ArtifactStore

        refuse_unknown_conf()
        with fail_fast():
            partition_key()  # a malformed or unknown key fails here, once, before anything is written
            if check_key(params["dataset_prefix"], "param 'dataset_prefix'"):
                return []
            spec = _spec(params)
            return datasets.plan_dataset(ArtifactStore(), spec.default_prefix(), spec)

    @task(
        **placement("generate"),
        multiple_outputs=False,
        max_active_tis_per_dagrun=16,
        map_index_template="{{ 'shard-%05d' % task.op_kwargs['shard_index'] }}",
        doc_md=cleandoc(
            """One raw synthetic shard, streamed a row group at a time.

            - **Reads:** the params.
            - **Writes:** `datasets/rides/v<generator>-seed<seed>-<n_shards>x<rows_per_shard>-dirt<dirt>/<key>/`
              `shard-<n>.parquet`, staged and renamed (or PUT) into place.
            - **Returns:** the shard's name, rows, SHA-256, size and the dirt injected (a few hundred bytes).
            - **Size:** `generate`, on the CPU node pool: memory holds two row groups whatever the
              shard's rows; at most 16 run at once per DAG run.
            """
        ),
    )
    def generate_shard(shard_index: int, params: dict | None = None) -> dict:
        from fanout import datasets
        from fanout.storage import ArtifactStore

        with fail_fast():
            spec = _spec(params)
            return datasets.write_shard(ArtifactStore(), spec.default_prefix(), spec, shard_index)

    @task(
        **placement("bookkeeping"),
        trigger_rule=TriggerRule.NONE_FAILED,  # runs when there was nothing to generate, too
        doc_md=cleandoc(
            """Commit the generated shards, last; list the raw shards to featurise.

            - **Reads:** the generated shards' records (sizes checked, not the bytes); the dataset's
              `_SUCCESS.json`, or the Parquet files under the user's `dataset_prefix`.
            - **Writes:** the synthetic dataset's `_SUCCESS.json` when shards were generated.
            - **Returns:** the raw shard paths, one `featurise_shard` task each.
            - **Size:** `bookkeeping`, on the CPU node pool.
            """
        ),
    )
    def commit_dataset(generated: list[dict], params: dict | None = None) -> list[str]:
        from fanout import datasets
        from fanout.storage import ArtifactStore

        store = ArtifactStore()
        with fail_fast():
            if params["dataset_prefix"]:
                return datasets.list_shards(store, _user_dataset(params))
            spec = _spec(params)
            generated = list(generated or [])
            if generated:
                return datasets.commit_dataset(store, spec.default_prefix(), spec, generated)
            return datasets.list_shards(store, spec.default_prefix())

    @task(
        **placement("shard"),
        multiple_outputs=False,
        max_active_tis_per_dagrun=16,
        # The shard's file name, e.g. "shard-00003", instead of a bare map index.
        map_index_template="{{ task.op_kwargs['raw_shard'].rsplit('/', 1)[-1].removesuffix('.parquet') }}",
        doc_md=cleandoc(
            """Clean and featurise one raw shard on the shared Dask cluster; this task is its client.

            - **Reads:** the raw shard's Parquet footer (the Dask workers read its rows).
            - **Writes:** `<out>/shards/<shard>/` (`<out>`: `preprocess/partitions/<key>/<run>`): `features/part-<n>.parquet` (written by the
              workers, checked and moved into place here), `stats.json` (partial sums for the global
              statistics) and `_SUCCESS.json` (rows in and out, rows dropped per reason, every part).
            - **Returns:** rows in and out and drops per reason (the workers return ~2 KB a partition).
            - **Size:** `shard`, on the CPU node pool (a client: the work is on the Dask workers); at
              most 16 run at once per DAG run.
            """
        ),
    )
    def featurise_shard(raw_shard: str, params: dict | None = None) -> dict:
        from pathlib import PurePosixPath

        from fanout import daskrun
        from fanout.storage import ArtifactStore

        unit = f"{run_prefix('preprocess')}/shards/{PurePosixPath(raw_shard).stem}"
        with fail_fast():
            return daskrun.featurise_shard(
                ArtifactStore(), raw_shard, unit, min_rows_kept=params["min_rows_kept"]
            )

    @task(
        **placement("bookkeeping"),
        multiple_outputs=False,
        outlets=[FEATURES],
        doc_md=cleandoc(
            """Fan-in: check every shard's output and merge the statistics.

            - **Reads:** each shard's `_SUCCESS.json` and statistics.
            - **Writes:** `<out>/merged/manifest.json` (feature columns, global mean and
              std, rows in and out and drops per reason per shard, every feature file's path and
              SHA-256) and `_SUCCESS.json`; then switches the partition's `current.json` (and
              `preprocess/latest.json` for the newest partition) to it; emits the partition's
              `fanout_features` asset event that schedules training.
            - **Size:** `bookkeeping`, on the CPU node pool.
            """
        ),
    )
    def merge_stats(shards: list[dict], params: dict | None = None) -> dict:
        from fanout import featureset
        from fanout.storage import ArtifactStore

        out = f"{run_prefix('preprocess')}/merged"
        with fail_fast():
            summary = featureset.merge_stats(
                ArtifactStore(), [s["out_unit"] for s in shards], out, min_rows_kept=params["min_rows_kept"]
            )
        publish_partition("preprocess", manifest=f"{out}/manifest.json")
        publish(FEATURES, manifest=f"{out}/manifest.json")
        return summary

    raw_shards = commit_dataset(generate_shard.expand(shard_index=plan_dataset()))
    merge_stats(featurise_shard.expand(raw_shard=raw_shards))


fanout_preprocess()
