"""Text held back while it streams: the end of what has arrived may be the beginning of a
marker (a reasoning tag, a tool call's start) whose rest is still to come."""

from __future__ import annotations


def marker_start_at_end(text: str, marker: str) -> int:
    """The length of the longest end of `text` that begins `marker` (0 if none; never the
    whole marker, which would have been found)."""
    for n in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0
