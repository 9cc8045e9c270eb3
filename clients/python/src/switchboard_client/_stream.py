"""`ReplyStream`: an assistant's reply relayed to a channel as it is generated, in one
streaming-ingest request (``POST /v1/streams``), recovering through the message routes when
that request breaks.

The caller's appends go into a bounded queue and return at once; one task owns the HTTP
request and feeds its chunked body from the queue, a line ``{"text":..}`` per append (those
queued together leave as one chunk). Invariant: ``text`` is everything the caller appended,
and a reply that ends normally leaves the message holding exactly that text, whatever path
it took.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ._errors import ConflictError, NotFoundError, TransportError, UnavailableError
from ._json import encode_json
from ._retry import backoff

if TYPE_CHECKING:
    from ._client import Switchboard

log = logging.getLogger("switchboard_client")

# Characters per ingest line and per `/v1/append`: the server refuses a line or an append
# longer than limits.max_publish_payload_bytes (32 KiB by default), and a character takes
# up to 6 bytes of JSON.
LINE_CHARS = 2048
APPEND_CHARS = 4096
# While recovering a reply whose stream the server abandoned, the whole text is sent as an
# update at most this often (seconds).
UPDATE_INTERVAL = 0.2
# An aborted reply gets this long (seconds) to send what it had queued before its request is
# cut.
ABORT_GRACE = 2.0

_END = object()
_ABORT = object()


class _Aborted(Exception):
    """The block raised: the body breaks off here, and the server abandons the stream."""


def _pieces(text: str, size: int) -> list[str]:
    return [text[start : start + size] for start in range(0, len(text), size)]


class ReplyStream:
    """One reply, from ``async with sb.stream(...) as s`` (see :meth:`Switchboard.stream`).

    - ``await s.append(text)`` queues text and returns at once (it waits only while
      ``max_pending`` appends are queued). ``s.text`` is the text appended so far,
      ``s.message_id`` the message's id.
    - Leaving the block normally ends the body: the server finishes the message, with
      ``s.data`` as its final data when set (``None``: the metadata stays). ``s.offset`` is
      then the offset of the finish, ``s.opened`` that of the stream's opening.
    - An exception in the block (cancellation included) breaks the request off: subscribers
      get ``abandon`` with reason ``ingest``, the text sent so far stays. The exception is
      re-raised.
    - An error answer to the request (``ConflictError`` for a ``message_id`` the channel
      already has, ``LimitExceededError`` past ``streams.max_text_bytes``, ...) abandons it
      too; it is raised by the next ``append`` or on leaving the block. (The node reads the
      rest of a refused body, within an ingest's bounds, so the answer arrives once the
      body is sent; past those bounds the connection is cut and the reply goes on as in a
      recovery, below.)
    - **Recovery.** If the request fails before its body started (the node could not be
      reached), it is made again, up to ``retries`` times. If its connection breaks mid-reply
      (``s.recovered`` becomes true), the reply goes on through separate calls under the
      same ``message_id``: ``update`` with the whole text so far (or, when the stream never
      opened, a ``publish`` that opens it), then ``append`` calls and a final ``finish``.
      When the server had already abandoned the stream (it does as soon as it sees the
      connection gone), appends are refused (``conflict``): the text then goes as ``update``
      calls carrying the whole text, at most every 0.2 s, and a last one with the final
      data; the message ends holding the whole text, with the status ``abandoned``.
      Appends never wait for any of this.
    """

    def __init__(
        self,
        sb: Switchboard,
        channel: str,
        data: Any,
        message_id: str | None,
        max_pending: int,
    ):
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        self.channel = channel
        self.message_id = message_id or uuid.uuid4().hex
        self.metadata = data
        self.data: Any = None
        self.offset: str | None = None
        self.opened: str | None = None
        self.recovered = False
        self._sb = sb
        self._parts: list[str] = []
        # Appends are numbered; those numbered up to `_covered` were sent as part of a whole
        # text (an update) and are skipped when they come out of the queue.
        self._seq = 0
        self._covered = 0
        self._queue: asyncio.Queue[Any] = asyncio.Queue(max_pending)
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._aborting = False
        self._final: bytes | None = None
        self._body_started = False

    @property
    def text(self) -> str:
        """Everything appended so far."""
        if len(self._parts) > 1:
            self._parts[:] = ["".join(self._parts)]
        return self._parts[0] if self._parts else ""

    async def __aenter__(self) -> ReplyStream:
        if self._task is not None:
            raise RuntimeError("a ReplyStream is used once")
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"switchboard stream {self.channel} {self.message_id}"
        )
        return self

    async def append(self, text: str) -> None:
        """Appends ``text``; raises the request's error if it failed."""
        if not isinstance(text, str):
            raise TypeError(f"append takes str, not {type(text).__name__}")
        if self._task is None or self._closing:
            raise RuntimeError("append inside `async with sb.stream(...) as s:` only")
        self._raise_if_failed()
        if not text:
            return
        self._parts.append(text)
        self._seq += 1
        await self._put((self._seq, text))

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task = self._task
        assert task is not None, "entered before exit"
        self._closing = True
        if exc is None:
            try:
                self._final = None if self.data is None else encode_json({"data": self.data})
            except (TypeError, ValueError):
                await self._abort()
                raise
        if exc is not None:
            await self._abort()
            return
        if not task.done():
            # A failure here is the task's: its error is raised below.
            with contextlib.suppress(Exception):
                await self._put(_END)
        await task

    def _raise_if_failed(self) -> None:
        task = self._task
        if task is not None and task.done():
            error = None if task.cancelled() else task.exception()
            raise error or RuntimeError("the stream's request ended")

    async def _put(self, item: object) -> None:
        """Queues ``item``, waiting while the queue is full unless the task fails."""
        try:
            self._queue.put_nowait(item)
            return
        except asyncio.QueueFull:
            pass
        task = self._task
        assert task is not None, "entered before any put"
        put = asyncio.ensure_future(self._queue.put(item))
        try:
            await asyncio.wait({put, task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not put.done():
                put.cancel()
        if not put.done() or put.cancelled():
            self._raise_if_failed()

    async def _abort(self) -> None:
        task = self._task
        assert task is not None, "entered before abort"
        self._aborting = True
        if not task.done():
            try:
                self._queue.put_nowait(_ABORT)
                await asyncio.wait({task}, timeout=ABORT_GRACE)
            except asyncio.QueueFull:
                pass
            if not task.done():
                task.cancel()
                await asyncio.wait({task})
        if not task.cancelled():
            task.exception()  # retrieved: the block's own exception is the one raised

    # -- The task --------------------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        while True:
            self._body_started = False
            try:
                answer = await self._sb._ingest(self.channel, self.message_id, self._body())
            except TransportError as err:
                if self._aborting:
                    raise _Aborted from err
                if not self._body_started and attempt < self._sb.retries:
                    # Nothing of the body left: the stream cannot have opened. Again.
                    attempt += 1
                    await asyncio.sleep(backoff(attempt))
                    continue
                if not self._body_started:
                    raise
                await self._recover(err)
                return
            self.offset = answer.offset
            self.opened = answer.opened
            return

    async def _body(self) -> AsyncIterator[bytes]:
        self._body_started = True
        # The first line opens the stream at once (`{"data":null}` counts as no metadata),
        # so viewers see it before the first token.
        yield encode_json({"data": self.metadata}) + b"\n"
        while True:
            texts, end = await self._take(aborting=True)
            chunk = [
                encode_json({"text": piece}) + b"\n"
                for text in texts
                for piece in _pieces(text, LINE_CHARS)
            ]
            if end is _END and self._final is not None:
                chunk.append(self._final + b"\n")
            if chunk:
                yield b"".join(chunk)
            if end is _ABORT:
                # After the text queued before it: an abandoned message keeps what was
                # appended.
                raise _Aborted
            if end:
                return

    async def _take(self, wait: bool = True, aborting: bool = False) -> tuple[list[str], Any]:
        """The texts queued (at least one item when ``wait``), and ``_END`` when the end
        came. An abort raises ``_Aborted``, or with ``aborting`` comes back as ``_ABORT``
        after the texts queued before it."""
        texts: list[str] = []
        if self._closing and self._queue.empty():
            # The end was taken already (the body ended, then its answer was lost).
            return texts, _END
        try:
            item = await self._queue.get() if wait else self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return texts, None
        end = None
        while True:
            if item is _ABORT:
                if not aborting:
                    raise _Aborted
                return texts, _ABORT
            if item is _END:
                end = _END
            else:
                seq, text = item
                if seq > self._covered:
                    texts.append(text)
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                return texts, end

    # -- Recovery --------------------------------------------------------------------------

    async def _recover(self, cause: TransportError) -> None:
        """Carries the reply on through the message routes after the ingest broke."""
        self.recovered = True
        log.warning(
            "Streaming ingest of %s in %s broke off (%s): going on with /v1/append",
            self.message_id,
            self.channel,
            cause,
        )
        sb = self._sb
        loop = asyncio.get_running_loop()
        appending = await self._resync()
        stale = False  # edit mode: text appended since the last whole-text update
        last_update = loop.time()
        end = False
        while not end:
            texts, taken = await self._take()
            end = taken is _END
            if appending and texts:
                try:
                    for piece in _pieces("".join(texts), APPEND_CHARS):
                        await sb.append(self.channel, self.message_id, piece)
                except ConflictError:
                    # Abandoned (or finished) meanwhile: only whole-text updates from here.
                    appending = False
                    stale = True
                except (TransportError, UnavailableError):
                    appending = await self._resync()
            elif texts:
                stale = True
            if not appending and stale and not end:
                pause = last_update + UPDATE_INTERVAL - loop.time()
                if pause > 0:
                    await asyncio.sleep(pause)
                    _, taken = await self._take(wait=False)  # the update has their text
                    end = taken is _END
                if not end:
                    await self._update_whole()
                    last_update = loop.time()
                    stale = False
        # The end: finish, or (abandoned) a last update with the whole text and final data.
        final = {} if self.data is None else {"data": self.data}
        for _ in range(sb.retries + 1):
            if appending:
                try:
                    done = await sb.finish(self.channel, self.message_id, **final)
                except ConflictError:
                    appending = False
                except (TransportError, UnavailableError):
                    appending = await self._resync()
                    continue
                else:
                    self.offset = done.offset
                    return
            done = await self._update_whole(**final)
            self.offset = done.offset
            return
        raise TransportError(f"could not finish {self.message_id} after the ingest broke off")

    async def _update_whole(self, **data: Any) -> Any:
        self._covered = self._seq
        return await self._sb.update(self.channel, self.message_id, text=self.text, **data)

    async def _resync(self) -> bool:
        """Makes the message hold the whole text so far; true when it takes appends (it
        exists, or it never opened and was opened here)."""
        sb = self._sb
        for _ in range(sb.retries + 1):
            try:
                await self._update_whole()
                return True
            except NotFoundError:
                pass
            # The stream never opened: open it under the same id.
            opened = await sb.publish(
                self.channel, self.metadata, message_id=self.message_id, stream=True
            )
            if opened.duplicate:
                continue  # it opened meanwhile: update it
            self.opened = opened.offset
            text = self.text
            self._covered = self._seq
            try:
                for piece in _pieces(text, APPEND_CHARS):
                    await sb.append(self.channel, self.message_id, piece)
            except (TransportError, UnavailableError):
                continue  # the update makes it whole
            return True
        raise TransportError(f"could not recover {self.message_id} after the ingest broke off")
