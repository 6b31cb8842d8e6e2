"""What the three DAG files share: defaults, tags, assets, params and fail-fast handling.

Imported at DAG parse time, so it stays light: only ``airflow.sdk`` and the standard library
at module level. Workload modules (pandas, dask, torch) are imported inside task bodies.
"""

from __future__ import annotations

from collections.abc import Generator
from contextlib import contextmanager
from datetime import timedelta
from enum import StrEnum
from typing import Any

from airflow.sdk import (
    Asset,
    CronPartitionTimetable,
    Param,
    PartitionedAssetTimetable,
    get_current_context,
)
from airflow.sdk.exceptions import AirflowFailException, ParamValidationError

from fanout.keys import check_partition_key, partition_key_format
from fanout.settings import SettingsError, settings

OWNER = "fanout"


class Tag(StrEnum):
    """DAG tags, defined once so the UI's filters stay consistent."""

    FANOUT = "fanout"
    PREPROCESSING = "preprocessing"
    TRAINING = "training"
    RENDERING = "rendering"
    DASK = "dask"
    PYTORCH = "pytorch"
    GPU = "gpu"


# The pipeline's hand-offs. Each producer attaches the relative path of what it wrote to the
# asset event's ``extra``; the consumer DAG is scheduled on the asset and reads it from there.
# "x-" schemes are not normalised: any other scheme makes Airflow load every provider's URI
# handler at parse time (the Amazon provider's imports boto3: ~130 ms per DAG file).
FEATURES = Asset(name="fanout_features", uri="x-fanout://features")
MODEL = Asset(name="fanout_model", uri="x-fanout://model")
VIDEO = Asset(name="fanout_video", uri="x-fanout://video")


def default_args() -> dict[str, Any]:
    """Every task retries with exponential backoff: pods get preempted, nodes drain."""
    current = settings()
    return {
        "owner": OWNER,
        "retries": current.retries,
        "retry_delay": timedelta(seconds=current.retry_delay_seconds),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=10),
    }


def params(dag_id: str, **specs: Param) -> dict[str, Param]:
    """The DAG's typed params, with defaults overridden from FANOUT_PARAMS where set.

    Asset-triggered runs take their DAG's defaults, so FANOUT_PARAMS is how a deployment (or a
    test stack) sizes the whole pipeline without editing DAG files.
    """
    overrides = settings().params.get(dag_id, {})
    unknown = set(overrides) - set(specs)
    if unknown:
        raise SettingsError(
            f"FANOUT_PARAMS[{dag_id!r}] names unknown params {sorted(unknown)}; {dag_id}'s params: {sorted(specs)}"
        )
    for name, value in overrides.items():
        old = specs[name]
        try:
            specs[name] = Param(value, description=old.description, **old.schema)
            specs[name].resolve()  # validates the value against the param's schema
        except ParamValidationError as err:
            raise SettingsError(
                f"FANOUT_PARAMS[{dag_id!r}][{name!r}]={value!r} is invalid: {str(err).splitlines()[0]}"
            ) from None
    return specs


def refuse_unknown_conf() -> None:
    """Fail the run (no retries) when its conf names a key the DAG has no param for.

    The api-server refuses such triggers already (``fanout.confguard``); this catches runs created
    without it, e.g. by ``airflow dags trigger``. Called by each DAG's planning task.
    """
    from fanout.confguard import unknown_conf_keys

    context = get_current_context()
    dag = context["dag"]
    problem = unknown_conf_keys(dag.dag_id, context["dag_run"].conf, dag.params.keys())
    if problem:
        raise AirflowFailException(f"bad input: {problem}")


@contextmanager
def fail_fast() -> Generator[None, None, None]:
    """Turn a workload's BadInputError into a failure that is not retried."""
    from fanout.errors import BadInputError

    try:
        yield
    except BadInputError as err:
        raise AirflowFailException(f"bad input: {err}") from err


def preprocess_schedule() -> CronPartitionTimetable:
    """FANOUT_SCHEDULE as partitions: each tick runs once for the partition that just ended.

    ``run_offset=-1``: the run at midnight covers the day before it (a run every two minutes,
    the two minutes before it). The key names the partition (``fanout.keys``); backfills
    create one run per partition key in their range.
    """
    cron = settings().schedule
    return CronPartitionTimetable(
        cron,
        timezone="UTC",
        run_offset=-1,
        key_format=partition_key_format(cron),
        # A new deployment's first run is the next tick. Airflow's default also runs the tick just
        # past when it is under a tenth of the cadence old (2.4 h a day): a stack started after
        # midnight ran yesterday's partition on its own while `make demo` triggered it too.
        run_immediately=timedelta(0),
    )


# Training and rendering run once per partition, with the partition key of the event that
# triggered them (IdentityMapper: the same key downstream).
def follows(asset: Asset) -> PartitionedAssetTimetable:
    return PartitionedAssetTimetable(assets=asset)


def partition_key() -> str | None:
    """This run's partition key (checked: malformed or unknown fails the task, unretried), or None."""
    key = get_current_context().get("partition_key")
    return check_partition_key(key) if key else None


def run_prefix(kind: str) -> str:
    """Where this DAG run's artifacts live: its generation of its partition, else ``<kind>/<run id>``."""
    from fanout.partitions import run_prefix as prefix_of

    return prefix_of(kind, get_current_context()["run_id"], partition_key())


def partition_output(kind: str, name: str) -> str | None:
    """Output ``name`` of this run's partition as its producer last published it (``current.json``)."""
    key = partition_key()
    if not key:
        return None
    from fanout.partitions import current
    from fanout.storage import ArtifactStore

    return (current(ArtifactStore(), kind, key) or {}).get(name)


def publish_partition(kind: str, **paths: str) -> None:
    """Switch this run's partition to the outputs it just verified (no-op for an ad hoc run)."""
    key = partition_key()
    if key:
        from fanout.partitions import publish as switch
        from fanout.storage import ArtifactStore

        switch(ArtifactStore(), kind, key, get_current_context()["run_id"], **paths)


def publish(asset: Asset, **extra: Any) -> None:
    """Attach ``extra`` (paths of what was produced) to the asset event this task emits."""
    get_current_context()["outlet_events"][asset].extra = extra


def triggering_extra(asset: Asset, key: str) -> Any | None:
    """``key`` from the newest event of ``asset`` that triggered this run, if any."""
    events = get_current_context().get("triggering_asset_events") or {}
    for event in reversed(list(events.get(asset, []))):
        value = (event.extra or {}).get(key)
        if value:
            return value
    return None
