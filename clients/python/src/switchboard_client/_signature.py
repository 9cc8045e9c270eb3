"""Checking the ``Switchboard-Signature`` header of a hook request or a webhook
(``docs/backend.md``): ``t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`` with the
configured secret."""

from __future__ import annotations

import hashlib
import hmac
import time

HEADER = "Switchboard-Signature"


def verify_signature(
    header: str | None,
    body: bytes,
    secret: str | bytes,
    *,
    tolerance: float = 300.0,
    now: float | None = None,
) -> bool:
    """Whether ``header`` (the ``Switchboard-Signature`` value) signs ``body`` (the raw
    request body, before any JSON parsing) with ``secret``, at a time within ``tolerance``
    seconds of ``now`` (default: the clock), so that a captured request replayed later is
    refused. Compares in constant time."""
    if not header:
        return False
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    stamp, given = fields.get("t", ""), fields.get("v1", "")
    if not stamp.isdigit() or not given:
        return False
    if abs((time.time() if now is None else now) - int(stamp)) > tolerance:
        return False
    key = secret.encode() if isinstance(secret, str) else secret
    expected = hmac.new(key, stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, given)
