"""What the API answers, as dataclasses: the client reads each answer once, here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class _Unset:
    """The default of an optional field that may be set to JSON ``null``."""

    _instance: _Unset | None = None

    def __new__(cls) -> _Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False


UNSET: Any = _Unset()
"""Marks ``data``/``text`` left out of a request (``None`` would send JSON ``null``)."""


@dataclass(frozen=True)
class Published:
    """The answer of a publish or of a change to a message (append, finish, update,
    delete). ``duplicate`` is true when the channel already had the ``message_id``: nothing
    was published and ``offset`` is the first publish's. ``message_id`` is the id the
    request carried (the caller's, or one the client generated), if any."""

    offset: str
    duplicate: bool = False
    message_id: str | None = None


@dataclass(frozen=True)
class Broadcasted:
    """The offsets a broadcast got, by channel."""

    offsets: dict[str, str]


@dataclass(frozen=True)
class HistoryMessage:
    """One entry of a channel's history. ``message_id``, ``status`` (``open``,
    ``finished``, ``abandoned``, ``deleted``), ``text`` (a stream's) and ``updated`` (the
    offset of its last change) are there for messages with an id. ``data`` is ``None`` for a
    deleted message."""

    offset: str
    data: Any = None
    message_id: str | None = None
    status: str | None = None
    text: str | None = None
    updated: str | None = None


@dataclass(frozen=True)
class History:
    """A page of a channel's history, oldest first. ``offset`` is the channel's current
    offset; ``recovered`` is given for a read with ``since`` (false: the history no longer
    reaches back to it)."""

    channel: str
    offset: str
    messages: list[HistoryMessage]
    recovered: bool | None = None


@dataclass(frozen=True)
class Member:
    """A connection subscribed to a channel with presence. ``user`` is ``""`` for an
    anonymous connection; ``info`` is its token's ``info`` claim."""

    node: str
    conn_id: int
    user: str
    info: Any = None


@dataclass(frozen=True)
class PresencePage:
    """Members of a channel, a page at a time: pass ``next_cursor`` (``None`` on the last
    page) as ``cursor`` for the next one."""

    channel: str
    node: str
    members: list[Member]
    next_cursor: str | None = None


@dataclass(frozen=True)
class PresenceStats:
    """Connections and distinct users of a channel, from counters."""

    channel: str
    node: str
    connections: int
    users: int


@dataclass(frozen=True)
class Block:
    """A user blocked on every node until ``until`` (Unix seconds; ``None``: until lifted)."""

    user: str
    until: int | None = None


@dataclass(frozen=True)
class Blocked:
    """A block taken: the user's connections this node closed (the other nodes close
    theirs through the bus)."""

    user: str
    until: int | None
    disconnected_here: int


@dataclass(frozen=True)
class BlocksPage:
    """The blocks in force, by user; ``next_cursor`` fetches the next page."""

    blocks: list[Block]
    next_cursor: str | None


@dataclass(frozen=True)
class Revoked:
    """A revocation taken: a token by ``jti``, or ``user``'s tokens issued before
    ``issued_before``, refused until ``until`` (Unix seconds); ``checked_here``: this node's
    connections asked to check their token (those holding a revoked one close with 4003;
    the other nodes' within a quarter of a second)."""

    until: int
    checked_here: int
    jti: str | None = None
    user: str | None = None
    issued_before: int | None = None


@dataclass(frozen=True)
class Disconnected:
    """Connections a disconnect closed on the node that answered: 0 or 1 for a ``conn_id``,
    and for a ``user`` those on this node (the other nodes close theirs as they read the
    request)."""

    disconnected_here: int
    user: str | None = None


@dataclass(frozen=True)
class IngestResult:
    """The answer of a streaming ingest."""

    offset: str
    message_id: str
    opened: str
    appends: int


def history_from_json(body: dict[str, Any]) -> History:
    messages = [
        HistoryMessage(
            offset=entry["offset"],
            data=entry.get("data"),
            message_id=entry.get("message_id"),
            status=entry.get("status"),
            text=entry.get("text"),
            updated=entry.get("updated"),
        )
        for entry in body.get("messages", [])
    ]
    return History(
        channel=body["channel"],
        offset=body["offset"],
        messages=messages,
        recovered=body.get("recovered"),
    )


def presence_from_json(body: dict[str, Any]) -> PresencePage:
    members = [
        Member(
            node=entry["node"],
            conn_id=entry["conn_id"],
            user=entry.get("user", ""),
            info=entry.get("info"),
        )
        for entry in body.get("members", [])
    ]
    return PresencePage(
        channel=body["channel"],
        node=body["node"],
        members=members,
        next_cursor=body.get("next_cursor"),
    )
