"""How long to wait before a repeat."""

from __future__ import annotations

import random

# A random time below min(BACKOFF_MAX, BACKOFF_BASE * 2^attempt) seconds (full jitter, so
# that backends refused together do not come back together).
BACKOFF_BASE = 0.1
BACKOFF_MAX = 2.0
# A Retry-After longer than this (seconds) is not waited out: the error goes to the caller.
MAX_RETRY_AFTER = 10.0


def backoff(attempt: int, retry_after: float | None = None) -> float:
    """The wait before attempt number ``attempt + 1``, at least ``retry_after``."""
    jittered = random.uniform(0, min(BACKOFF_MAX, BACKOFF_BASE * 2**attempt))
    return max(jittered, retry_after or 0.0)
