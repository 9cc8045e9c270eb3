"""`sb.stream`: an assistant's reply relayed from an async generator in one streaming-ingest
request, watched by a WebSocket subscriber; broken off by an exception; and carried on
when the request itself breaks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from faults import BreakIngest
from harness import WAIT, Node, ended, rebuild, watch

from switchboard_client import ConflictError, LimitExceededError, ReplyStream, Switchboard

pytestmark = pytest.mark.anyio

TOKENS = [
    "Once",
    " upon",
    " a",
    " time",
    ",",
    " a",
    " reply",
    " grew",
    " token",
    " by",
    " token",
    " — ",
    "ünïcödé",
    " and",
    ' "quotes"',
    "\nnewlines",
    " 🎈",
    ".",
] * 3
REPLY = "".join(TOKENS)


async def llm(tokens: list[str] = TOKENS, pause: float = 0.005) -> AsyncIterator[str]:
    """An LLM SDK's stream of tokens."""
    for token in tokens:
        await asyncio.sleep(pause)
        yield token


async def relay(sb: Switchboard, channel: str) -> ReplyStream:
    async with sb.stream(channel, data={"role": "assistant"}) as reply:
        async for token in llm():
            await reply.append(token)
        reply.data = {"role": "assistant", "tokens": len(TOKENS)}
    return reply


async def test_a_reply_reaches_a_subscriber_as_one_growing_message(node: Node, channel: str):
    async with watch(node, channel) as watcher, Switchboard(node.control_url) as sb:
        reply = await relay(sb, channel)
        assert reply.text == REPLY
        assert not reply.recovered
        await watcher.wait_for(ended(reply.message_id), "the finish")

        frames = watcher.of(channel, reply.message_id)
        opened, *appends, finished = frames
        assert opened["type"] == "message" and opened["stream"] == "open"
        assert opened["data"] == {"role": "assistant"}
        assert opened["offset"] == reply.opened
        assert appends and all(frame["type"] == "append" for frame in appends)
        assert finished["type"] == "finish" and finished["offset"] == reply.offset
        assert finished["data"] == {"role": "assistant", "tokens": len(TOKENS)}
        assert rebuild(frames) == REPLY

        [message] = (await sb.history(channel)).messages
        assert (message.message_id, message.status, message.text) == (
            reply.message_id,
            "finished",
            REPLY,
        )


async def test_appends_do_not_wait_for_the_node(node: Node, channel: str):
    # 2,000 appends with nothing in between: each one queues and returns; the body carries
    # what queued together as one chunk.
    async with Switchboard(node.control_url) as sb:
        async with sb.stream(channel, message_id="burst") as reply:
            for n in range(2000):
                await reply.append(f"{n} ")
        assert reply.message_id == "burst"
        [message] = (await sb.history(channel)).messages
        assert message.text == "".join(f"{n} " for n in range(2000))


async def test_a_long_append_is_cut_to_fit_the_nodes_limits(node: Node, channel: str):
    long = "é" * 40_000  # 80,000 bytes of UTF-8, more than one append may carry
    async with Switchboard(node.control_url) as sb:
        async with sb.stream(channel) as reply:
            await reply.append(long)
        [message] = (await sb.history(channel)).messages
        assert message.text == long


async def test_an_exception_in_the_block_abandons_the_reply(node: Node, channel: str):
    async with watch(node, channel) as watcher, Switchboard(node.control_url) as sb:
        with pytest.raises(RuntimeError, match="the model failed"):
            async with sb.stream(channel, data={"role": "assistant"}) as reply:
                await reply.append("Half a")
                await reply.append(" thought")
                raise RuntimeError("the model failed")
        await watcher.wait_for(ended(reply.message_id), "the abandon")
        frames = watcher.of(channel, reply.message_id)
        assert frames[-1]["type"] == "abandon" and frames[-1]["reason"] == "ingest"
        assert rebuild(frames) == "Half a thought"
        [message] = (await sb.history(channel)).messages
        assert (message.status, message.text) == ("abandoned", "Half a thought")


async def test_a_cancelled_reply_is_abandoned(node: Node, channel: str):
    async with watch(node, channel) as watcher, Switchboard(node.control_url) as sb:
        started = asyncio.Event()
        ids: list[str] = []

        async def endless() -> None:
            async with sb.stream(channel) as reply:
                ids.append(reply.message_id)
                while True:
                    await reply.append("la ")
                    started.set()
                    await asyncio.sleep(0.01)

        task = asyncio.get_running_loop().create_task(endless())
        await asyncio.wait_for(started.wait(), WAIT)
        task.cancel()
        await asyncio.wait({task}, timeout=WAIT)
        assert task.cancelled()
        await watcher.wait_for(ended(ids[0]), "the abandon")
        assert watcher.of(channel, ids[0])[-1]["reason"] == "ingest"


async def test_a_message_id_the_channel_has_is_a_conflict(node: Node, channel: str):
    async with Switchboard(node.control_url) as sb:
        await sb.publish(channel, "taken", message_id="reply-1")
        with pytest.raises(ConflictError) as raised:
            async with sb.stream(channel, message_id="reply-1"):
                pass
        assert raised.value.status == 409
        [message] = (await sb.history(channel)).messages
        assert message.data == "taken"


async def test_a_conflict_found_while_the_reply_streams_is_raised_and_takes_nothing_over(
    node: Node, channel: str
):
    # The node refuses the id at once; the reply goes on streaming for a while (httpx reads
    # the answer only once the body is sent): the answer must still arrive, and the other
    # message stay as it was.
    async with Switchboard(node.control_url) as sb:
        await sb.publish(channel, "taken", message_id="reply-2")
        with pytest.raises(ConflictError):
            async with sb.stream(channel, message_id="reply-2") as reply:
                for token in TOKENS:
                    await reply.append(token)
                    await asyncio.sleep(0.05)  # 2.7 s in all
        assert not reply.recovered
        [message] = (await sb.history(channel)).messages
        assert (message.data, message.text, message.status) == ("taken", None, "finished")


async def recover(
    node: Node, channel: str, transport: BreakIngest
) -> tuple[ReplyStream, list[dict[str, Any]], str | None]:
    """Relays the reply through `transport`: the reply, its frames as a viewer got them, and
    its status in history."""
    async with (
        watch(node, channel) as watcher,
        httpx.AsyncClient(transport=transport) as client,
    ):
        sb = Switchboard(node.control_url, client=client)
        reply = await relay(sb, channel)
        assert reply.text == REPLY
        [message] = (await sb.history(channel)).messages
        assert message.message_id == reply.message_id
        assert message.text == REPLY, "the message holds exactly the reply"
        assert message.data == {"role": "assistant", "tokens": len(TOKENS)}
        await watcher.wait_for(
            lambda frames: (
                rebuild(watcher.of(channel, reply.message_id)) == REPLY
                and any(
                    f.get("offset") == reply.offset and f["type"] in ("finish", "update")
                    for f in frames
                )
            ),
            "the whole reply",
        )
        return reply, watcher.of(channel, reply.message_id), message.status


async def test_an_ingest_that_cannot_connect_is_made_again(node: Node, channel: str):
    reply, frames, status = await recover(node, channel, transport := BreakIngest("refuse"))
    assert transport.attempts == 2
    assert not reply.recovered
    assert status == "finished"
    assert frames[0]["type"] == "message"
    assert frames[-1]["type"] == "finish"


async def test_a_reply_whose_stream_never_opened_is_opened_and_finished(node: Node, channel: str):
    reply, frames, status = await recover(node, channel, BreakIngest("drop"))
    assert reply.recovered
    assert status == "finished"
    assert frames[0]["type"] == "message" and frames[0]["data"] == {"role": "assistant"}
    assert frames[-1]["type"] == "finish"
    assert {f["type"] for f in frames[1:-1]} == {"append"}


async def test_a_reply_whose_stream_is_still_open_goes_on_with_appends(node: Node, channel: str):
    # The node still holds the request (its client's side broke): the stream is open, so
    # the client updates it with the whole text, then appends and finishes.
    reply, frames, status = await recover(node, channel, BreakIngest("detach", after=4))
    assert reply.recovered
    assert status == "finished"
    types = [f["type"] for f in frames]
    assert types[0] == "message" and types[-1] == "finish"
    assert "update" in types and "abandon" not in types
    assert set(types[types.index("update") + 1 : -1]) <= {"append"}


async def test_a_reply_whose_stream_was_abandoned_keeps_its_whole_text(node: Node, channel: str):
    # The connection broke: the node abandoned the stream at once and takes no more
    # appends, so the client sends the whole text as updates; it ends holding all of it.
    reply, frames, status = await recover(node, channel, BreakIngest("cut", after=4))
    assert reply.recovered
    assert status == "abandoned"
    types = [f["type"] for f in frames]
    assert "abandon" in types
    assert frames[types.index("abandon")]["reason"] == "ingest"
    assert types[-1] == "update" and frames[-1]["text"] == REPLY
    assert frames[-1]["data"] == {"role": "assistant", "tokens": len(TOKENS)}


async def test_a_reply_past_the_text_limit_raises_limit_exceeded(node_factory, channel: str):
    small = node_factory(env={"SWITCHBOARD_STREAMS__MAX_TEXT_BYTES": "1000"})
    async with watch(small, channel) as watcher, Switchboard(small.control_url) as sb:
        with pytest.raises(LimitExceededError) as raised:
            async with sb.stream(channel) as reply:
                for _ in range(50):
                    await reply.append("x" * 100)
                    await asyncio.sleep(0.01)
        assert raised.value.code == "limit_exceeded"
        await watcher.wait_for(ended(reply.message_id), "the abandon")
        [message] = (await sb.history(channel)).messages
        assert message.status == "abandoned"
        assert len(message.text or "") <= 1000
