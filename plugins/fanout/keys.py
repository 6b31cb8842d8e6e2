"""Artifact keys: the only form a path given by a user (a DAG param, a manifest entry) may take.

Relative to the artifact root, never leaving it: no '..', no leading '/', no scheme, no backslash.
``ArtifactStore.path`` checks every key it is given; DAG params that name a path carry
``KEY_PATTERN`` so the UI and the REST API refuse a bad one at trigger time. Light enough for DAG parsing.
"""

from __future__ import annotations

import re

from fanout.errors import BadInputError

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
# The same rule as a JSON-schema pattern, for DAG params that name an artifact path: refused at trigger.
KEY_PATTERN = r"^(?!/)(?!(.*/)?\.\.(/|$))[A-Za-z0-9._/-]*$"


def check_key(rel: str, what: str = "artifact path") -> str:
    """``rel`` if it is a relative key inside the artifact root; ``BadInputError`` naming ``what`` otherwise.

    The one choke point for paths: every read and write goes through ``ArtifactStore.path``.
    """
    problem = None
    if not isinstance(rel, str):
        problem = "is not a string"
    elif rel.startswith("/"):
        problem = "is absolute"
    elif "\\" in rel:
        problem = "contains a backslash"
    elif _SCHEME.match(rel):
        problem = "names a scheme or drive"
    elif ".." in rel.split("/"):
        problem = "contains '..'"
    elif any(ord(ch) < 32 for ch in rel):
        problem = "contains a control character"
    if problem:
        raise BadInputError(
            f"{what} {rel!r} {problem}: give a path relative to the artifact root, e.g. datasets/rides/2026-11-01"
        )
    return rel


# -- partition keys ----------------------------------------------------------------------------
# A scheduled run covers one partition of the data: a day ("2026-11-25") when the schedule fires
# at most once a day, a minute ("2026-11-25T1430", ISO 8601 basic time) when it fires more often
# (demo cadences). No ':' so a key is a plain path component on every store.
PARTITION_DAY = "%Y-%m-%d"
PARTITION_MINUTE = "%Y-%m-%dT%H%M"
PARTITION_FORMS = {PARTITION_DAY: "YYYY-MM-DD", PARTITION_MINUTE: "YYYY-MM-DDTHHMM"}


def partition_key_format(cron: str) -> str:
    """The key format of a cron schedule: a day if it fires at most daily, else a minute.

    A schedule fires at most once a day when its minute and hour fields are single numbers.
    """
    minute, hour = cron.split()[:2]
    return PARTITION_DAY if minute.isdigit() and hour.isdigit() else PARTITION_MINUTE


def check_partition_key(key: object) -> str:
    """``key`` if it is a partition key in one of ``PARTITION_FORMS``; ``BadInputError`` otherwise.

    Stricter than Airflow's own check (``strptime`` also takes "2026-1-5"): the key must be the
    exact text its date formats to, so one partition has one name and one folder.
    """
    from datetime import datetime

    if isinstance(key, str):
        for fmt in PARTITION_FORMS:
            try:
                if datetime.strptime(key, fmt).strftime(fmt) == key:
                    return key
            except ValueError:
                continue
    forms = " or ".join(PARTITION_FORMS.values())
    raise BadInputError(f"partition key {key!r} is not a partition of the data: expected {forms}")
