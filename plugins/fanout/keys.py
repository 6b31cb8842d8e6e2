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
