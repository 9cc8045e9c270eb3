"""Async Python client for Switchboard's control API (``docs/http-api.md``): publish,
batch, broadcast, history, presence, disconnect, message streams, and assistant replies
relayed token by token in one streaming-ingest request (:meth:`Switchboard.stream`); and
:func:`verify_signature` for the hook requests and webhooks a node sends."""

from ._client import BatchReply, Switchboard
from ._errors import (
    BadRequestError,
    ConflictError,
    ForbiddenError,
    InternalError,
    LimitExceededError,
    NotFoundError,
    RateLimitedError,
    SwitchboardError,
    TransportError,
    UnauthorizedError,
    UnavailableError,
)
from ._signature import verify_signature
from ._stream import ReplyStream
from ._types import (
    UNSET,
    Block,
    Blocked,
    BlocksPage,
    Broadcasted,
    Disconnected,
    History,
    HistoryMessage,
    Member,
    PresencePage,
    PresenceStats,
    Published,
    Revoked,
)

__version__ = "0.1.0"

__all__ = [
    "UNSET",
    "BadRequestError",
    "BatchReply",
    "Block",
    "Blocked",
    "BlocksPage",
    "Broadcasted",
    "ConflictError",
    "Disconnected",
    "ForbiddenError",
    "History",
    "HistoryMessage",
    "InternalError",
    "LimitExceededError",
    "Member",
    "NotFoundError",
    "PresencePage",
    "PresenceStats",
    "Published",
    "RateLimitedError",
    "ReplyStream",
    "Revoked",
    "Switchboard",
    "SwitchboardError",
    "TransportError",
    "UnauthorizedError",
    "UnavailableError",
    "verify_signature",
]
