"""JSON as the API takes it."""

from __future__ import annotations

import json
from typing import Any


def encode_json(value: Any) -> bytes:
    """Compact UTF-8 JSON. NaN and infinities are refused here (``ValueError``), and values
    JSON cannot hold (``TypeError``), rather than by the server."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
