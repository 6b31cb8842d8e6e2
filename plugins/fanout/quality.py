"""Data quality gates: a shard, or a run, that keeps too little of its data fails as bad input.

Cleaning (``fanout.preprocess``) drops rows one at a time, each for a reason. That is right
for a few dirty rows and wrong for a broken input: text in a numeric column or an all-NaN
``fare`` would turn a whole shard into 0 rows, and the run would succeed on whatever was left.
The gates judge the result as a whole:

* a shard fails when one of ``REQUIRED_COLUMNS`` has no usable value in any row (every value
  missing or unparsable), when it keeps no row (an empty shard included), or when it keeps
  less than ``min_rows_kept`` of its rows;
* a run fails when all its shards together keep no row, or less than ``min_rows_kept`` of
  their rows (the same share: shards judged elsewhere, or recorded under another threshold,
  are judged again here).

A failure is a ``BadInputError`` (no retry can fix the data) whose message names the shard,
every problem found and the rows dropped per reason. A pass returns the gate's record, which
the shard's ``_SUCCESS.json`` and the features manifest keep: the threshold, the share kept
and, per shard, the missing and malformed values of each required column.

Pure Python: no pandas, no cluster, no storage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fanout.errors import BadInputError
from fanout.preprocess import REQUIRED_COLUMNS

DEFAULT_MIN_ROWS_KEPT = 0.5
"""Half: the synthetic data's dirt (3 % by default, at most 50 %) never comes near it, while a
broken column, a wrong file or a mostly duplicated export does."""


def check_threshold(min_rows_kept: object) -> float:
    """``min_rows_kept`` as a float in [0, 1]; BadInputError naming it otherwise."""
    if isinstance(min_rows_kept, bool) or not isinstance(min_rows_kept, int | float):
        raise BadInputError(f"min_rows_kept must be a number in [0, 1], got {min_rows_kept!r}")
    if not (0.0 <= min_rows_kept <= 1.0):  # also refuses NaN
        raise BadInputError(f"min_rows_kept must be a number in [0, 1], got {min_rows_kept!r}")
    return float(min_rows_kept)


def _share(rows_out: int, rows_in: int) -> float | None:
    return rows_out / rows_in if rows_in else None


def _drops(dropped: Mapping[str, int]) -> str:
    """Rows dropped per reason, largest first, zeros left out: "missing_value=20000, duplicate=12"."""
    counted = sorted(((count, reason) for reason, count in dropped.items() if count), key=lambda x: -x[0])
    return ", ".join(f"{reason}={count}" for count, reason in counted) or "none"


def _kept_problem(rows_in: int, rows_out: int, min_rows_kept: float) -> str | None:
    """What is wrong with keeping ``rows_out`` of ``rows_in`` (> 0) rows, or None."""
    if rows_out == 0:
        return f"kept none of {rows_in} rows"
    share = rows_out / rows_in
    if share < min_rows_kept:
        return f"kept {rows_out} of {rows_in} rows ({share:.1%}), below min_rows_kept={min_rows_kept:g}"
    return None


def check_shard(
    source: str,
    rows_in: int,
    rows_out: int,
    dropped: Mapping[str, int],
    unparsed: Mapping[str, Sequence[int]],
    min_rows_kept: float = DEFAULT_MIN_ROWS_KEPT,
) -> dict:
    """The gate's record for one cleaned shard; BadInputError naming ``source`` if it fails.

    ``unparsed`` is ``{column: [rows missing, rows malformed]}`` per required column
    (``fanout.preprocess.unparsed_counts``, added up over the shard's partitions).
    """
    min_rows_kept = check_threshold(min_rows_kept)
    problems = []
    for column in REQUIRED_COLUMNS:
        missing, malformed = unparsed.get(column, (0, 0))
        if rows_in and missing + malformed >= rows_in:
            problems.append(
                f"required column {column!r} has no usable value in any of its {rows_in} rows "
                f"({missing} missing, {malformed} malformed)"
            )
    kept = _kept_problem(rows_in, rows_out, min_rows_kept) if rows_in else "has no rows"
    if kept:
        problems.append(f"the shard {kept}")
    if problems:
        raise BadInputError(
            f"{source} fails the data quality gates: {'; '.join(problems)}; rows dropped by reason: {_drops(dropped)}"
        )
    return {
        "min_rows_kept": min_rows_kept,
        "kept_share": _share(rows_out, rows_in),
        "passed": True,
        "unparsed": {column: list(unparsed.get(column, (0, 0))) for column in REQUIRED_COLUMNS},
    }


def check_run(shards: Sequence[Mapping], min_rows_kept: float = DEFAULT_MIN_ROWS_KEPT) -> dict:
    """The run-level gate over the shards' ``rows_in``, ``rows_out`` and ``dropped``; its record.

    BadInputError when the shards together keep no row or less than ``min_rows_kept`` of
    theirs, with the drops per reason summed and the shards that kept least named.
    """
    min_rows_kept = check_threshold(min_rows_kept)
    rows_in = sum(int(shard["rows_in"]) for shard in shards)
    rows_out = sum(int(shard["rows_out"]) for shard in shards)
    kept = _kept_problem(rows_in, rows_out, min_rows_kept) if rows_in else "have no rows"
    if kept:
        dropped: dict[str, int] = {}
        for shard in shards:
            for reason, count in shard.get("dropped", {}).items():
                dropped[reason] = dropped.get(reason, 0) + int(count)
        worst = sorted(shards, key=lambda s: _share(s["rows_out"], s["rows_in"]) or 0.0)[:3]
        named = ", ".join(
            f"{s.get('raw', s.get('unit', '?'))} kept {s['rows_out']} of {s['rows_in']}" for s in worst
        )
        raise BadInputError(
            f"the run fails the data quality gates: its {len(shards)} shard(s) together {kept}; "
            f"rows dropped by reason: {_drops(dropped)}; least kept: {named}"
        )
    return {
        "min_rows_kept": min_rows_kept,
        "kept_share": _share(rows_out, rows_in),
        "passed": True,
        "shards": len(shards),
    }
