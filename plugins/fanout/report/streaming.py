"""Artifact bytes over HTTP, read through ``ArtifactStore`` block by block, with range requests.

Browsers fetch a ``<video>`` in ranges (to start playing at once and to seek), so a single
``Range: bytes=a-b`` (or ``a-``, or ``-n`` for the last n bytes) is answered with 206 and just
those bytes; a range past the end gets 416; several ranges at once get the whole file (200),
which HTTP allows. Responses are never cached by shared caches and never sniffed or run: an
artifact is data, even if a workload wrote HTML into it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fanout.storage import ArtifactStore

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class RangeNotSatisfiable(ValueError):
    pass


@dataclass(frozen=True)
class ByteRange:
    start: int
    stop: int
    """Exclusive."""

    @property
    def length(self) -> int:
        return self.stop - self.start


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The one range a ``Range`` header asks for; None means the whole file.

    Raises RangeNotSatisfiable for a range that starts past the end (or an empty suffix).
    Malformed headers and multi-range requests are ignored (the whole file), as RFC 9110 allows.
    """
    if not header:
        return None
    match = _RANGE.match(header.strip().replace(" ", ""))
    if not match or (not match.group(1) and not match.group(2)):
        return None
    first, last = match.group(1), match.group(2)
    if not first:  # suffix: the last n bytes
        n = int(last)
        if n == 0 or size == 0:
            raise RangeNotSatisfiable(header)
        return ByteRange(max(0, size - n), size)
    start = int(first)
    stop = min(int(last) + 1, size) if last else size
    if start >= size or (last and int(last) < start):
        raise RangeNotSatisfiable(header)
    return ByteRange(start, stop)


def response(store: ArtifactStore, path: str, media_type: str, inline: bool, range_header: str | None):
    """A Starlette response streaming ``path`` (whole, or the requested range)."""
    from starlette.responses import Response, StreamingResponse

    size = store.size(path)
    name = path.rsplit("/", 1)[-1].replace('"', "")
    headers = {
        "Accept-Ranges": "bytes",
        "Cache-Control": "private, no-cache",
        "X-Content-Type-Options": "nosniff",
        # Even opened on its own, an artifact runs nothing and reaches nothing.
        "Content-Security-Policy": "sandbox; default-src 'none'; img-src 'self'; media-src 'self'",
        "Content-Disposition": f'{"inline" if inline else "attachment"}; filename="{name}"',
    }
    try:
        wanted = parse_range(range_header, size)
    except RangeNotSatisfiable:
        return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{size}"})
    if wanted is None:
        headers["Content-Length"] = str(size)
        return StreamingResponse(
            store.iter_bytes(path), status_code=200, headers=headers, media_type=media_type
        )
    headers["Content-Length"] = str(wanted.length)
    headers["Content-Range"] = f"bytes {wanted.start}-{wanted.stop - 1}/{size}"
    return StreamingResponse(
        store.iter_bytes(path, wanted.start, wanted.length),
        status_code=206,
        headers=headers,
        media_type=media_type,
    )
