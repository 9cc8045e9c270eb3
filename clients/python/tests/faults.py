"""httpx transports that break requests the way networks do, in front of a real node."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx


class LoseAnswers(httpx.AsyncBaseTransport):
    """Carries requests to the node, but loses the answer of the first ``times`` requests
    to ``path``: the caller gets a read timeout although the node did the work."""

    def __init__(self, path: str, times: int = 1):
        self.inner = httpx.AsyncHTTPTransport()
        self.path = path
        self.left = times
        self.sent: list[bytes] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.url.path == self.path:
            self.sent.append(request.content)
            if self.left > 0:
                self.left -= 1
                await response.aread()
                await response.aclose()
                raise httpx.ReadTimeout("the answer was lost (test)", request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


class _Chunks(httpx.AsyncByteStream):
    def __init__(self, chunks: AsyncIterator[bytes]):
        self.chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.chunks:
            yield chunk


class BreakIngest(httpx.AsyncBaseTransport):
    """Breaks the first streaming-ingest request (``POST /v1/streams``); others pass.

    - ``refuse``: the connection cannot be made (nothing sent).
    - ``drop``: the body's first chunk is taken, nothing reaches the node, then a write
      error: the stream never opened.
    - ``cut``: ``after`` chunks reach the node, then the connection breaks: the node sees the
      body break off and abandons the stream.
    - ``detach``: ``after`` chunks reach the node, then the caller gets a write error while
      the node's side of the request stays open (a proxy that lost its client): the stream
      is still open when the client recovers.
    """

    def __init__(self, mode: str, after: int = 0):
        assert mode in ("refuse", "drop", "cut", "detach")
        self.inner = httpx.AsyncHTTPTransport()
        self.mode = mode
        self.after = after
        self.broken = False
        self.attempts = 0
        self._detached: asyncio.Task[httpx.Response] | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path != "/v1/streams":
            return await self.inner.handle_async_request(request)
        self.attempts += 1
        if self.broken:
            return await self.inner.handle_async_request(request)
        self.broken = True
        body = request.stream
        assert isinstance(body, httpx.AsyncByteStream)
        if self.mode == "refuse":
            raise httpx.ConnectError("connection refused (test)", request=request)
        if self.mode == "drop":
            async for _ in body:
                break
            raise httpx.WriteError("connection reset (test)", request=request)
        if self.mode == "cut":
            return await self.inner.handle_async_request(
                self._forward(request, self._cut(body, request))
            )
        # detach: the node keeps a request whose body has stopped coming.
        queue: asyncio.Queue[bytes] = asyncio.Queue()

        async def held() -> AsyncIterator[bytes]:
            while True:
                yield await queue.get()

        self._detached = asyncio.get_running_loop().create_task(
            self.inner.handle_async_request(self._forward(request, held()))
        )
        sent = 0
        async for chunk in body:
            if sent == self.after:
                break
            queue.put_nowait(chunk)
            sent += 1
        raise httpx.WriteError("connection reset (test)", request=request)

    async def _cut(
        self, body: httpx.AsyncByteStream, request: httpx.Request
    ) -> AsyncIterator[bytes]:
        sent = 0
        async for chunk in body:
            if sent == self.after:
                raise httpx.WriteError("connection reset (test)", request=request)
            yield chunk
            sent += 1

    @staticmethod
    def _forward(request: httpx.Request, chunks: AsyncIterator[bytes]) -> httpx.Request:
        return httpx.Request(
            request.method,
            request.url,
            headers=request.headers,
            stream=_Chunks(chunks),
            extensions=request.extensions,
        )

    async def aclose(self) -> None:
        if self._detached is not None:
            self._detached.cancel()
            await asyncio.wait({self._detached})
        await self.inner.aclose()
