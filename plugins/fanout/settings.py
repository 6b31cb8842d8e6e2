"""Every fanout setting, typed and validated in one place.

The same environment variable names are used by the local stack (``fanout.localstack``),
docker-compose.yml, the Helm chart's ``fanout-settings`` ConfigMap and the worker pod
template, so one name means one thing everywhere. Nothing else in fanout reads ``FANOUT_*``
variables: it calls ``settings()``.

A bad value raises ``SettingsError`` naming the variable, the value and the accepted form,
e.g. ``FANOUT_RETRIES='two' is invalid: expected a whole number >= 0``; at DAG parse time
that is the import error the UI shows.

Imported at DAG parse time: only pydantic (which Airflow imports anyway) and the standard library.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

# plugins/fanout/settings.py -> repository (or image) root
PROJECT_ROOT = Path(__file__).resolve().parents[2]

# Kubernetes names: a DNS subdomain prefix (optional) and a name part; label values; object names.
_QUALIFIED = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
DNS_NAME = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


class SettingsError(ValueError):
    """A setting has a value fanout cannot use; the message names the variable."""


class Taint(NamedTuple):
    """A node taint, as ``kubectl taint`` writes it: ``key[=value]:Effect``."""

    key: str
    value: str | None
    effect: str


def _blank_is_none(raw: Any) -> Any:
    return None if isinstance(raw, str) and not raw.strip() else raw


def _parse_selector(raw: Any) -> Any:
    """``k=v,k2=v2`` -> node labels."""
    if not isinstance(raw, str):
        return raw
    labels: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not _QUALIFIED.match(key) or not _LABEL_VALUE.match(value):
            raise ValueError(f"{item!r} is not a node label key=value")
        labels[key] = value
    return labels


def _parse_taints(raw: Any) -> Any:
    """``key[=value]:Effect,...`` -> taints."""
    if not isinstance(raw, str):
        return raw
    taints = []
    for item in filter(None, (part.strip() for part in raw.split(","))):
        taint, _, effect = item.rpartition(":")
        key, sep, value = taint.partition("=")
        if not _QUALIFIED.match(key) or effect not in TAINT_EFFECTS or not _LABEL_VALUE.match(value):
            raise ValueError(f"{item!r} is not a taint key[=value]:Effect")
        taints.append(Taint(key, value if sep else None, effect))
    return taints


def _parse_json(raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"not valid JSON ({err})") from None


def _check_cron(value: str) -> str:
    """Five cron fields, as croniter (Airflow's parser) reads them; presets like @daily are not partitions."""
    from croniter import croniter

    if len(value.split()) != 5 or not croniter.is_valid(value):
        raise ValueError(f"{value!r} is not a five-field cron expression")
    return " ".join(value.split())


# Kubernetes resource quantities as task sizes use them: CPUs ("2", "0.5", "500m") and bytes
# ("768Mi", "4Gi", "1G", "1500000000").
_CPU_QUANTITY = re.compile(r"^(?P<number>\d+(\.\d+)?)(?P<suffix>m?)$")
_BYTE_QUANTITY = re.compile(r"^(?P<number>\d+(\.\d+)?)(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
_BYTE_SUFFIXES = {
    "": 1,
    **{s: 1024 ** (i + 1) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
    **{s: 1000 ** (i + 1) for i, s in enumerate(("k", "M", "G", "T", "P", "E"))},
}


def parse_quantity(value: str) -> Decimal:
    """A CPU or byte quantity as a number (CPUs or bytes), e.g. ``500m`` -> 0.5, ``1Ki`` -> 1024."""
    if match := _CPU_QUANTITY.match(value):
        number = Decimal(match["number"])
        return number / 1000 if match["suffix"] else number
    if match := _BYTE_QUANTITY.match(value):
        return Decimal(match["number"]) * _BYTE_SUFFIXES[match["suffix"] or ""]
    raise ValueError(f"{value!r} is not a Kubernetes quantity")


def format_bytes(amount: int | Decimal) -> str:
    """Bytes as the shortest exact quantity with a binary suffix: ``1207959552`` -> ``1152Mi``."""
    amount = int(amount)
    for suffix in ("Ti", "Gi", "Mi", "Ki"):
        unit = _BYTE_SUFFIXES[suffix]
        if amount and amount % unit == 0:
            return f"{amount // unit}{suffix}"
    return str(amount)


def _positive_quantity(pattern: re.Pattern[str], example: str):
    def check(value: str) -> str:
        try:
            positive = pattern.match(value) is not None and parse_quantity(value) > 0
        except (ValueError, InvalidOperation):
            positive = False
        if not positive:
            raise ValueError(f"{value!r} is not a quantity > 0 such as {example}")
        return value

    return AfterValidator(check)


CpuQuantity = Annotated[str, _positive_quantity(_CPU_QUANTITY, "500m or 2")]
ByteQuantity = Annotated[str, _positive_quantity(_BYTE_QUANTITY, "768Mi or 4Gi")]


class SizeOverride(BaseModel):
    """A deployment's changes to one task size (``fanout.pools.Size``): requests and limits."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cpu: CpuQuantity | None = None
    cpu_limit: CpuQuantity | None = None
    memory: ByteQuantity | None = None
    max_memory: ByteQuantity | None = None
    shm: ByteQuantity | None = None
    ephemeral_storage: ByteQuantity | None = None


def _setting(env: str, form: str, default: Any = None, **constraints: Any) -> Any:
    """A field read from the environment variable ``env``; ``form`` is the accepted form, for errors."""
    return Field(default=default, json_schema_extra={"env": env, "form": form}, **constraints)


def _parse_exit_codes(raw: Any) -> Any:
    """``137,143`` -> exit codes."""
    if not isinstance(raw, str):
        return raw
    codes = []
    for item in filter(None, (part.strip() for part in raw.split(","))):
        if not item.isdigit() or not 1 <= int(item) <= 255:
            raise ValueError(f"{item!r} is not an exit code from 1 to 255")
        codes.append(int(item))
    return codes


NodeLabels = Annotated[dict[str, str], BeforeValidator(_parse_selector)]
Taints = Annotated[tuple[Taint, ...], BeforeValidator(_parse_taints)]
Optional = BeforeValidator(_blank_is_none)
ObjectName = Annotated[str | None, Optional, Field(pattern=DNS_NAME)]


class Settings(BaseModel):
    """fanout's settings. Field docs are the README's configuration tables."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # -- where artifacts live and how tasks compute ------------------------------------------
    artifact_root: str = _setting(
        "FANOUT_ARTIFACT_ROOT", "a directory or an fsspec URI such as s3://bucket/prefix", min_length=1
    )
    dask_scheduler_address: Annotated[str | None, Optional] = _setting(
        "DASK_SCHEDULER_ADDRESS",
        "a Dask scheduler address such as tcp://dask-scheduler:8786",
        pattern=r"^\w+://\S+$",
    )
    dask_timeout_seconds: float = _setting(
        "FANOUT_DASK_TIMEOUT_SECONDS",
        "a number of seconds > 0: how long a shard task waits for the Dask scheduler, and for a worker",
        60.0,
        gt=0,
        le=3_600,
    )
    device: Literal["auto", "cpu", "cuda"] = _setting("FANOUT_DEVICE", "auto, cpu or cuda", "auto")
    task_cpus: Annotated[float | None, Optional] = _setting("FANOUT_TASK_CPUS", "a number of CPUs > 0", gt=0)

    # -- DAG defaults --------------------------------------------------------------------
    params: Annotated[dict[str, dict[str, Any]], BeforeValidator(_parse_json)] = _setting(
        "FANOUT_PARAMS",
        'a JSON object of DAG id -> {param: default}, e.g. {"fanout_train": {"epochs": 2}}',
        {},
    )
    schedule: Annotated[str, AfterValidator(_check_cron)] = _setting(
        "FANOUT_SCHEDULE",
        "a five-field cron expression (UTC) such as '0 0 * * *' (daily) or '*/2 * * * *' (a demo cadence)",
        "0 0 * * *",
    )
    retries: int = _setting("FANOUT_RETRIES", "a whole number >= 0", 2, ge=0, le=100)
    retry_delay_seconds: float = _setting(
        "FANOUT_RETRY_DELAY_SECONDS", "a number of seconds >= 0", 20.0, ge=0, le=86_400
    )

    # -- the local stack (make up, make demo, the end-to-end tests) ------------------------
    local_database: Annotated[
        Literal["postgres", "sqlite"],
        BeforeValidator(lambda v: v.strip().lower() if isinstance(v, str) else v),
    ] = _setting("FANOUT_LOCAL_DATABASE", "postgres or sqlite", "postgres")

    # -- node pools (Kubernetes) ---------------------------------------------------------
    cpu_pool_selector: NodeLabels = _setting(
        "FANOUT_CPU_POOL_SELECTOR",
        "comma-separated node labels key=value, e.g. fanout.io/pool=cpu",
        {"fanout.io/pool": "cpu"},
    )
    cpu_taint: Taints = _setting(
        "FANOUT_CPU_TAINT",
        "comma-separated taints key[=value]:Effect, Effect one of " + ", ".join(TAINT_EFFECTS),
        (),
    )
    gpu_pool_selector: NodeLabels = _setting(
        "FANOUT_GPU_POOL_SELECTOR",
        "comma-separated node labels key=value, e.g. fanout.io/pool=gpu",
        {"fanout.io/pool": "gpu"},
    )
    gpu_taint: Taints = _setting(
        "FANOUT_GPU_TAINT",
        "comma-separated taints key[=value]:Effect, Effect one of " + ", ".join(TAINT_EFFECTS),
        (Taint("nvidia.com/gpu", "present", "NoSchedule"),),
    )
    gpu_resource: str = _setting(
        "FANOUT_GPU_RESOURCE",
        "an extended resource name such as nvidia.com/gpu",
        "nvidia.com/gpu",
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$",
    )
    gpu_airflow_pool: str = _setting(
        "FANOUT_GPU_AIRFLOW_POOL",
        "an Airflow pool name (letters, digits, '_', '.', '-')",
        "fanout_gpu",
        pattern=r"^[A-Za-z0-9_.-]{1,256}$",
    )
    gpu_airflow_pool_slots: int = _setting(
        "FANOUT_GPU_AIRFLOW_POOL_SLOTS", "a whole number >= 1: the GPUs in the GPU node pool", 1, ge=1
    )
    render_pool: Annotated[
        Literal["cpu", "gpu"], BeforeValidator(lambda v: v.lower() if isinstance(v, str) else v)
    ] = _setting("FANOUT_RENDER_POOL", "gpu or cpu", "gpu")
    light_task_executor: Annotated[str | None, Optional] = _setting(
        "FANOUT_LIGHT_TASK_EXECUTOR",
        "an executor name or alias, e.g. LocalExecutor",
        pattern=r"^[A-Za-z_][A-Za-z0-9_.:]*$",
    )
    gpu_image: Annotated[str | None, Optional] = _setting("FANOUT_GPU_IMAGE", "a container image reference")
    priority_class_prefix: Annotated[str | None, Optional] = _setting(
        "FANOUT_PRIORITY_CLASS_PREFIX",
        "a PriorityClass name prefix, e.g. fanout-",
        pattern=r"^[a-z0-9][-a-z0-9.]*$",
    )
    worker_service_account: ObjectName = _setting(
        "FANOUT_WORKER_SERVICE_ACCOUNT", "a Kubernetes object name (lower-case letters, digits, '-', '.')"
    )
    object_store_secret: ObjectName = _setting(
        "FANOUT_OBJECT_STORE_SECRET", "a Kubernetes object name (lower-case letters, digits, '-', '.')"
    )
    artifact_pvc: ObjectName = _setting(
        "FANOUT_ARTIFACT_PVC", "a Kubernetes object name (lower-case letters, digits, '-', '.')"
    )
    task_sizes: Annotated[dict[str, SizeOverride], BeforeValidator(_parse_json)] = _setting(
        "FANOUT_TASK_SIZES",
        "a JSON object of task size -> {cpu, cpu_limit, memory, max_memory, shm, ephemeral_storage: a Kubernetes "
        'quantity}, e.g. {"trial": {"cpu": "2", "cpu_limit": "2", "memory": "6Gi"}}',
        {},
    )

    # -- retries that learn from the failed try (fanout.retries) -------------------------
    oom_memory_factor: float = _setting(
        "FANOUT_OOM_MEMORY_FACTOR",
        "a number from 1 to 10: the memory of an OOM-killed task's retry, times its try's (1: no raise)",
        1.5,
        ge=1,
        le=10,
    )
    node_fault_exit_codes: Annotated[frozenset[int], BeforeValidator(_parse_exit_codes)] = _setting(
        "FANOUT_NODE_FAULT_EXIT_CODES",
        "comma-separated exit codes from 1 to 255 that mean the node is at fault, e.g. 74,135",
        frozenset(),
    )

    @model_validator(mode="after")
    def _pvc_needs_a_mount_point(self) -> Settings:
        if self.artifact_pvc and not self.artifact_root.startswith("/"):
            raise _FieldError(
                "artifact_root",
                self.artifact_root,
                "an absolute path (the mount point) when FANOUT_ARTIFACT_PVC is set",
            )
        return self

    @model_validator(mode="after")
    def _task_sizes_exist_and_fit_their_limits(self) -> Settings:
        from fanout.pools import SIZES  # pools reads these settings: import it only when validating

        for name, override in self.task_sizes.items():
            if name not in SIZES:
                problem = f"unknown task size {name!r}; sizes: {', '.join(SIZES)}"
            else:
                cpu = override.cpu or SIZES[name].cpu
                cpu_limit = override.cpu_limit or SIZES[name].cpu_limit
                memory = override.memory or SIZES[name].memory
                max_memory = override.max_memory or SIZES[name].max_memory
                if parse_quantity(cpu) > parse_quantity(cpu_limit):
                    problem = f"{name}: the CPU request {cpu} is above the CPU limit {cpu_limit}"
                elif max_memory and parse_quantity(memory) > parse_quantity(max_memory):
                    problem = f"{name}: the memory {memory} is above the max_memory {max_memory}"
                else:
                    continue
            raise _FieldError("task_sizes", None, f"{_form('task_sizes')} ({problem})")
        return self


class _FieldError(ValueError):
    """A cross-field check's failure, reported against one field."""

    def __init__(self, field: str, value: Any, form: str):
        super().__init__(form)
        self.field, self.value, self.form = field, value, form


def env_name(field: str) -> str:
    return Settings.model_fields[field].json_schema_extra["env"]


def _form(field: str) -> str:
    return Settings.model_fields[field].json_schema_extra["form"]


def _default_artifact_root() -> str:
    return str(PROJECT_ROOT / "artifacts")


_cache: dict[tuple, Settings] = {}


def settings(environ: Mapping[str, str] | None = None) -> Settings:
    """The settings of this process (or of another's environment, e.g. a local stack's)."""
    environ = os.environ if environ is None else environ
    raw = {field: environ.get(env_name(field)) for field in Settings.model_fields}
    key = tuple(raw.items())
    if key in _cache:
        return _cache[key]
    values = {field: value for field, value in raw.items() if value is not None}
    values.setdefault("artifact_root", _default_artifact_root())
    try:
        loaded = Settings(**values)
    except ValidationError as err:
        raise _explain(err, values) from None
    if len(_cache) > 64:  # a process sees few distinct environments; tests see many
        _cache.clear()
    _cache[key] = loaded
    return loaded


def _explain(err: ValidationError, values: Mapping[str, Any]) -> SettingsError:
    lines = []
    for error in err.errors():
        cause = (error.get("ctx") or {}).get("error")
        if isinstance(cause, _FieldError):
            field, form = cause.field, cause.form
            value = values.get(field, cause.value)  # as the variable was written
        else:
            field = str(error["loc"][0]) if error["loc"] else ""
            value, form = values.get(field), _form(field) if field in Settings.model_fields else ""
            detail = error["msg"].removeprefix("Value error, ")
            if len(error["loc"]) > 1:  # inside a JSON value: say where, e.g. trial.memory
                detail = f"{'.'.join(str(part) for part in error['loc'][1:])}: {detail}"
            form = f"{form} ({detail})"
        lines.append(f"{env_name(field)}={value!r} is invalid: expected {form}")
    return SettingsError("; ".join(lines))
