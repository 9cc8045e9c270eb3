"""`Switchboard`: the control API over one `httpx.AsyncClient`, with the retries that are
safe and nothing more.

A request is retried (up to ``retries`` times, with jittered exponential backoff) when it
cannot have been carried out twice:

- any request whose connection could not be made (nothing was sent);
- on a 503 ``unavailable`` or a broken connection or timeout after it was sent, only the
  requests a repeat cannot change: reads, ``update`` and ``delete`` (a second one answers
  ``duplicate``), and a ``publish`` with a ``message_id`` (the caller's, or a uuid4 the
  client adds while retries are on: the server answers a repeat with the first offset and
  ``duplicate: true``). ``append``, ``finish``, ``broadcast``, ``batch`` and
  ``disconnect`` are not repeated then: the error is raised.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from ._errors import (
    BadRequestError,
    SwitchboardError,
    TransportError,
    UnavailableError,
    error_from_reply,
    error_from_response,
)
from ._json import encode_json
from ._retry import MAX_RETRY_AFTER, backoff
from ._stream import ReplyStream
from ._types import (
    UNSET,
    Block,
    Blocked,
    BlocksPage,
    Broadcasted,
    Disconnected,
    History,
    IngestResult,
    PresencePage,
    PresenceStats,
    Published,
    Revoked,
    history_from_json,
    presence_from_json,
)

log = logging.getLogger("switchboard_client")

BatchReply = Published | Broadcasted | SwitchboardError
"""One reply of a batch: what the command got, or its error (returned, not raised)."""

# Errors raised before the request left: repeating it cannot do anything twice.
_UNSENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# Errors after which the request may or may not have been carried out.
_TRANSPORT = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


def _path_segment(channel: str) -> str:
    # A channel name may hold `/`, `:`, `@` and `=`: all percent-encoded in the path.
    return quote(channel, safe="")


class Switchboard:
    """A client of one node's (or one load-balanced service's) control API.

    ``base_url`` is the control listener, e.g. ``http://127.0.0.1:9090``. ``api_key`` is sent
    as ``Authorization: Bearer <key>``. ``timeout`` (seconds) bounds connecting, each read and
    each write of a request. ``retries`` is how many times a request is repeated when that is
    safe (0: never; then a publish gets no generated ``message_id`` either). ``client``: an
    ``httpx.AsyncClient`` to use instead of one of its own (it is not closed here).

    Use it as ``async with Switchboard(...) as sb:``, or call :meth:`aclose` at the end.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        client: httpx.AsyncClient | None = None,
    ):
        if retries < 0:
            raise ValueError("retries must be 0 or more")
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self._timeout = httpx.Timeout(timeout)
        self._headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._owns_client = client is None
        self._client = client if client is not None else httpx.AsyncClient(timeout=self._timeout)
        # Cleared when the node refuses message ids (history.size = 0): then
        # publishes go without a generated id, and are not repeated after an ambiguous error.
        self._generate_ids = retries > 0

    async def __aenter__(self) -> Switchboard:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Closes the HTTP client, if it is this object's own."""
        if self._owns_client:
            await self._client.aclose()

    # -- Publishing ------------------------------------------------------------------------

    async def publish(
        self,
        channel: str,
        data: Any,
        *,
        message_id: str | None = None,
        stream: bool = False,
    ) -> Published:
        """Publishes ``data`` (any JSON value) to ``channel``; the answer's ``offset`` is the
        message's. With a ``message_id`` (1-128 of ``A-Z a-z 0-9 _ - . : @ / =``, unique in
        the channel), a publish the channel already has publishes nothing and answers the
        first offset with ``duplicate=True``. Without one, while retries are on, the client
        adds a uuid4 so that its own retries cannot publish twice (``Published.message_id``
        says which). ``stream=True`` opens a message stream (``data`` is its metadata) for
        :meth:`append` and :meth:`finish`; :meth:`stream` does it all in one request.
        """
        generated = message_id is None and (self._generate_ids or stream)
        if generated:
            message_id = uuid.uuid4().hex
        body: dict[str, Any] = {"channel": channel, "data": data}
        if message_id is not None:
            body["message_id"] = message_id
        if stream:
            body["stream"] = True
        try:
            answer = await self._call(
                "POST", "/v1/publish", body=body, repeatable=message_id is not None
            )
        except BadRequestError:
            if not generated or stream:
                raise
            # A node that refuses ids (one without history) refuses every publish
            # with one: publish without, and add none from now on. A 422 for any other
            # reason comes again here and is raised.
            del body["message_id"]
            answer = await self._call("POST", "/v1/publish", body=body, repeatable=False)
            log.info("The node refuses message ids: publishing without them from now on")
            self._generate_ids = False
            message_id = None
        return Published(
            offset=answer["offset"],
            duplicate=bool(answer.get("duplicate", False)),
            message_id=message_id,
        )

    async def broadcast(self, channels: Iterable[str], data: Any) -> Broadcasted:
        """Publishes one message to 1 to 1000 channels. A 503 part way raises
        :class:`UnavailableError` whose ``offsets`` lists the channels that got it."""
        body = {"channels": list(channels), "data": data}
        answer = await self._call("POST", "/v1/broadcast", body=body, repeatable=False)
        return Broadcasted(offsets=dict(answer["offsets"]))

    async def batch(self, commands: Iterable[Mapping[str, Mapping[str, Any]]]) -> list[BatchReply]:
        """Runs up to 1000 commands in one request, in order, each of the shape of the
        API's batch (``{"publish": {"channel": .., "data": ..}}``, ``{"broadcast": ..}``,
        ``{"append": ..}``, ``{"finish": ..}``, ``{"update": ..}``, ``{"delete": ..}``).
        Returns one reply per command: :class:`Published`, :class:`Broadcasted`, or the
        command's :class:`SwitchboardError` (returned, not raised: a failing command does not
        stop the others). A malformed batch as a whole raises."""
        commands = [dict(command) for command in commands]
        answer = await self._call(
            "POST", "/v1/batch", body={"commands": commands}, repeatable=False
        )
        replies: list[BatchReply] = []
        for command, reply in zip(commands, answer["replies"], strict=True):
            replies.append(_batch_reply(command, reply))
        return replies

    # -- Message streams -------------------------------------------------------------------

    async def append(self, channel: str, message_id: str, text: str) -> Published:
        """Appends ``text`` to an open stream. Not repeated after an ambiguous failure (it
        would append twice)."""
        body = {"channel": channel, "message_id": message_id, "text": text}
        answer = await self._call("POST", "/v1/append", body=body, repeatable=False)
        return _published(answer, message_id)

    async def finish(self, channel: str, message_id: str, data: Any = UNSET) -> Published:
        """Finishes an open stream; ``data`` (when given) replaces its metadata."""
        body: dict[str, Any] = {"channel": channel, "message_id": message_id}
        if data is not UNSET:
            body["data"] = data
        answer = await self._call("POST", "/v1/finish", body=body, repeatable=False)
        return _published(answer, message_id)

    async def update(
        self, channel: str, message_id: str, data: Any = UNSET, text: Any = UNSET
    ) -> Published:
        """Replaces a message's ``data`` and/or, for a stream, its whole ``text`` (an edit;
        on an open stream the appends go on after it)."""
        body: dict[str, Any] = {"channel": channel, "message_id": message_id}
        if data is not UNSET:
            body["data"] = data
        if text is not UNSET and text is not None:
            body["text"] = text
        answer = await self._call("POST", "/v1/update", body=body, repeatable=True)
        return _published(answer, message_id)

    async def delete(self, channel: str, message_id: str) -> Published:
        """Turns a message into a tombstone (a second delete answers ``duplicate``)."""
        body = {"channel": channel, "message_id": message_id}
        answer = await self._call("POST", "/v1/delete", body=body, repeatable=True)
        return _published(answer, message_id)

    def stream(
        self,
        channel: str,
        data: Any = None,
        message_id: str | None = None,
        *,
        max_pending: int = 1024,
    ) -> ReplyStream:
        """A reply relayed as it is generated, in one streaming-ingest request::

            async with sb.stream("chat:7", data={"role": "assistant"}) as s:
                async for token in tokens:
                    await s.append(token)
                s.data = {"role": "assistant", "tokens": n}  # optional final data

        ``data`` is the stream's metadata; ``message_id`` defaults to a uuid4 (pass one
        only if the channel has never had it). ``max_pending`` bounds the appends not yet
        sent: :meth:`ReplyStream.append` waits only when that many are queued. See
        :class:`ReplyStream` for the end, errors and recovery."""
        encode_json(data)  # refuse what cannot be sent before anything opens
        return ReplyStream(self, channel, data, message_id, max_pending)

    async def _ingest(
        self, channel: str, message_id: str, body: AsyncIterator[bytes]
    ) -> IngestResult:
        """One streaming-ingest request, not retried (`ReplyStream` decides)."""
        try:
            response = await self._client.post(
                f"{self.base_url}/v1/streams",
                params={"channel": channel, "message_id": message_id},
                content=body,
                headers={**self._headers, "content-type": "application/x-ndjson"},
                timeout=self._timeout,
            )
        except _TRANSPORT as err:
            raise TransportError(f"POST /v1/streams: {err!r}") from err
        if response.status_code >= 300:
            raise error_from_response(response)
        answer = response.json()
        return IngestResult(
            offset=answer["offset"],
            message_id=answer["message_id"],
            opened=answer["opened"],
            appends=answer["appends"],
        )

    # -- Reading ---------------------------------------------------------------------------

    async def history(
        self, channel: str, since: str | None = None, limit: int | None = None
    ) -> History:
        """The channel's history: without ``since`` the newest ``limit`` (1 to 1000,
        default 100) messages, oldest first; with ``since`` the messages changed after it
        and ``recovered``."""
        params: dict[str, Any] = {}
        if since is not None:
            params["since"] = since
        if limit is not None:
            params["limit"] = limit
        answer = await self._call(
            "GET", f"/v1/channels/{_path_segment(channel)}/history", params=params, repeatable=True
        )
        return history_from_json(answer)

    async def presence(
        self, channel: str, cursor: str | None = None, limit: int | None = None
    ) -> PresencePage:
        """A page of the channel's members (its namespace needs ``presence`` or
        ``join_leave``); pass the page's ``next_cursor`` as ``cursor`` for the next."""
        params: dict[str, Any] = {}
        if cursor is not None:
            params["cursor"] = cursor
        if limit is not None:
            params["limit"] = limit
        answer = await self._call(
            "GET",
            f"/v1/channels/{_path_segment(channel)}/presence",
            params=params,
            repeatable=True,
        )
        return presence_from_json(answer)

    async def presence_stats(self, channel: str) -> PresenceStats:
        """Connections and distinct users of the channel, from counters."""
        answer = await self._call(
            "GET", f"/v1/channels/{_path_segment(channel)}/presence-stats", repeatable=True
        )
        return PresenceStats(
            channel=answer["channel"],
            node=answer["node"],
            connections=answer["connections"],
            users=answer["users"],
        )

    # -- Connections -----------------------------------------------------------------------

    async def disconnect(
        self, conn_id: int | None = None, user: str | None = None, code: int | None = None
    ) -> Disconnected:
        """Closes a connection (``conn_id`` from its ``welcome``; :class:`NotFoundError`
        when it is not on this node) or every connection of ``user`` on every node, with
        close code 4000 or ``code`` (1000, 1001 or 3000-4999)."""
        if (conn_id is None) == (user is None):
            raise ValueError("give exactly one of conn_id and user")
        body: dict[str, Any] = {"conn_id": conn_id} if conn_id is not None else {"user": user}
        if code is not None:
            body["code"] = code
        answer = await self._call("POST", "/v1/disconnect", body=body, repeatable=False)
        if user is not None:
            return Disconnected(disconnected_here=int(answer["disconnected_here"]), user=user)
        return Disconnected(disconnected_here=1 if answer.get("disconnected") else 0)

    async def block(self, user: str, until: int | None = None) -> Blocked:
        """Blocks ``user`` on every node until ``until`` (Unix seconds, in the future) or
        until :meth:`unblock`: its connections close with 4003 and its tokens are refused.
        Safe to repeat: a block replaces the user's earlier one."""
        body: dict[str, Any] = {"user": user}
        if until is not None:
            body["until"] = until
        answer = await self._call("POST", "/v1/block", body=body, repeatable=True)
        return Blocked(
            user=answer["user"],
            until=answer["until"],
            disconnected_here=int(answer["disconnected_here"]),
        )

    async def unblock(self, user: str) -> None:
        """Lifts ``user``'s block on every node (:class:`NotFoundError` when there is none).
        Not repeated after an answer was lost: a repeat would say there is none."""
        await self._call("DELETE", "/v1/block", body={"user": user}, repeatable=False)

    async def blocks(self, cursor: str | None = None, limit: int | None = None) -> BlocksPage:
        """The blocks in force, by user, ``limit`` (1 to 10,000) at a time."""
        params: dict[str, Any] = {}
        if cursor is not None:
            params["cursor"] = cursor
        if limit is not None:
            params["limit"] = limit
        answer = await self._call("GET", "/v1/blocks", params=params, repeatable=True)
        return BlocksPage(
            blocks=[Block(user=b["user"], until=b["until"]) for b in answer["blocks"]],
            next_cursor=answer["next_cursor"],
        )

    async def revoke(
        self,
        *,
        jti: str | None = None,
        user: str | None = None,
        issued_before: int | None = None,
        until: int | None = None,
    ) -> Revoked:
        """Revokes, on every node, the token whose ``jti`` claim is ``jti``, or ``user``'s
        tokens issued (``iat``) before ``issued_before`` (Unix seconds; default: now, which is
        "log out everywhere"), until ``until`` (default: as long as such a token can live,
        ``auth.max_token_ttl``). Matching tokens are refused at connect, ``auth`` and
        ``refresh``, and connections holding one close with 4003. Safe to repeat:
        revocations only add or lengthen."""
        if (jti is None) == (user is None):
            raise ValueError("give either `jti` or `user`")
        body: dict[str, Any] = {"jti": jti} if jti is not None else {"user": user}
        if issued_before is not None:
            body["issued_before"] = issued_before
        if until is not None:
            body["until"] = until
        answer = await self._call("POST", "/v1/revoke", body=body, repeatable=True)
        return Revoked(
            until=int(answer["until"]),
            checked_here=int(answer["checked_here"]),
            jti=answer.get("jti"),
            user=answer.get("user"),
            issued_before=answer.get("issued_before"),
        )

    # -- The request loop ------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, Any] | None = None,
        repeatable: bool,
    ) -> Any:
        """Sends one request, repeating it while that is safe (see the module's doc), and
        answers its JSON. ``repeatable``: a repeat cannot change anything."""
        content = None if body is None else encode_json(body)
        headers = dict(self._headers)
        if content is not None:
            headers["content-type"] = "application/json"
        url = f"{self.base_url}{path}"
        attempt = 0
        while True:
            try:
                response = await self._client.request(
                    method,
                    url,
                    content=content,
                    params=params,
                    headers=headers,
                    timeout=self._timeout,
                )
            except _TRANSPORT as err:
                if attempt < self.retries and (repeatable or isinstance(err, _UNSENT)):
                    attempt += 1
                    log.debug("%s %s: %r; attempt %d", method, path, err, attempt + 1)
                    await asyncio.sleep(backoff(attempt))
                    continue
                raise TransportError(f"{method} {path}: {err!r}") from err
            if response.status_code < 300:
                return response.json()
            error = error_from_response(response)
            if (
                isinstance(error, UnavailableError)
                and repeatable
                and attempt < self.retries
                and (error.retry_after or 0) <= MAX_RETRY_AFTER
            ):
                attempt += 1
                log.debug("%s %s: %s; attempt %d", method, path, error, attempt + 1)
                await asyncio.sleep(backoff(attempt, error.retry_after))
                continue
            raise error


def _published(answer: Mapping[str, Any], message_id: str | None = None) -> Published:
    return Published(
        offset=answer["offset"],
        duplicate=bool(answer.get("duplicate", False)),
        message_id=message_id,
    )


def _batch_reply(command: Mapping[str, Any], reply: Mapping[str, Any]) -> BatchReply:
    error = reply.get("error")
    if isinstance(error, Mapping):
        return error_from_reply(error.get("code"), str(error.get("message", "")), extra=dict(reply))
    if "offsets" in reply:
        return Broadcasted(offsets=dict(reply["offsets"]))
    fields: Any = next(iter(command.values()), None)
    message_id = fields.get("message_id") if isinstance(fields, Mapping) else None
    return _published(reply, message_id)


__all__ = ["BatchReply", "Switchboard"]
