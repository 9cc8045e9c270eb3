"""The control API through `Switchboard`, against a real node: publish and history,
retries that never publish twice, batch, broadcast, presence, disconnect, and the
errors each answer maps to."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from faults import LoseAnswers
from harness import WAIT, Node, watch

from switchboard_client import (
    BadRequestError,
    Block,
    Broadcasted,
    ConflictError,
    LimitExceededError,
    NotFoundError,
    Published,
    RateLimitedError,
    Switchboard,
    SwitchboardError,
    TransportError,
    UnauthorizedError,
)

pytestmark = pytest.mark.anyio


async def test_publish_then_history_gives_the_messages_back_in_order(node: Node, channel: str):
    async with Switchboard(node.control_url) as sb:
        first = await sb.publish(channel, {"headline": "hello"})
        second = await sb.publish(channel, "breaking", message_id="news-2")
        third = await sb.publish(channel, None)
        assert not first.duplicate and first.message_id is not None
        assert second.message_id == "news-2"

        history = await sb.history(channel)
        assert history.channel == channel
        assert history.offset == third.offset
        assert history.recovered is None
        assert [(m.offset, m.data) for m in history.messages] == [
            (first.offset, {"headline": "hello"}),
            (second.offset, "breaking"),
            (third.offset, None),
        ]
        assert history.messages[1].message_id == "news-2"
        assert history.messages[1].status == "finished"

        since = await sb.history(channel, since=first.offset, limit=1)
        assert since.recovered is True
        assert [m.offset for m in since.messages] == [second.offset]


async def test_a_publish_with_an_id_publishes_once_however_often_it_is_sent(
    node: Node, channel: str
):
    async with watch(node, channel) as watcher, Switchboard(node.control_url) as sb:
        first = await sb.publish(channel, {"n": 1}, message_id="order-17")
        again = await sb.publish(channel, {"n": 1}, message_id="order-17")
        assert again == Published(offset=first.offset, duplicate=True, message_id="order-17")
        marker = await sb.publish(channel, "marker")
        await watcher.wait_for(
            lambda frames: any(f.get("offset") == marker.offset for f in frames), "the marker"
        )
        assert [f["data"] for f in watcher.of(channel)] == [{"n": 1}, "marker"]


async def test_a_publish_whose_answer_was_lost_is_retried_without_publishing_twice(
    node: Node, channel: str
):
    # The node publishes, the answer is lost (a read timeout): the client sends the same
    # request again, with the same generated message_id, and the node answers the first
    # offset as a duplicate.
    transport = LoseAnswers("/v1/publish", times=1)
    async with (
        watch(node, channel) as watcher,
        httpx.AsyncClient(transport=transport) as client,
    ):
        sb = Switchboard(node.control_url, client=client)
        published = await sb.publish(channel, {"text": "once"})
        assert published.duplicate, "the retry found the first publish"
        assert len(transport.sent) == 2 and transport.sent[0] == transport.sent[1]
        assert published.message_id is not None
        assert published.message_id.encode() in transport.sent[0]

        marker = await sb.publish(channel, "marker")
        await watcher.wait_for(
            lambda frames: any(f.get("offset") == marker.offset for f in frames), "the marker"
        )
        frames = watcher.of(channel)
        assert [f["data"] for f in frames] == [{"text": "once"}, "marker"]
        assert frames[0]["offset"] == published.offset


async def test_an_append_whose_answer_was_lost_is_not_sent_again(node: Node, channel: str):
    # An append is not idempotent: a repeat could append twice, so the error is raised.
    transport = LoseAnswers("/v1/append", times=1)
    async with httpx.AsyncClient(transport=transport) as client:
        sb = Switchboard(node.control_url, client=client)
        opened = await sb.publish(channel, {"role": "assistant"}, message_id="r1", stream=True)
        assert opened.message_id == "r1"
        with pytest.raises(TransportError) as raised:
            await sb.append(channel, "r1", "Hello")
        assert raised.value.status is None and raised.value.code is None
        assert isinstance(raised.value.__cause__, httpx.ReadTimeout)
        assert len(transport.sent) == 1
        await sb.finish(channel, "r1")
        [message] = (await sb.history(channel)).messages
        assert message.text == "Hello"


async def test_without_retries_a_publish_carries_no_generated_id(node: Node, channel: str):
    async with Switchboard(node.control_url, retries=0) as sb:
        published = await sb.publish(channel, 1)
        assert published.message_id is None
        [message] = (await sb.history(channel)).messages
        assert message.message_id is None


async def test_a_batch_answers_each_command_in_order(node: Node, channel: str):
    other = f"{channel}.b"
    async with Switchboard(node.control_url) as sb:
        replies = await sb.batch(
            [
                {"publish": {"channel": channel, "data": {"id": 1}, "message_id": "m1"}},
                {"publish": {"channel": "bad channel!", "data": 2}},
                {"broadcast": {"channels": [channel, other], "data": {"id": 3}}},
                {"publish": {"channel": channel, "data": {"id": 1}, "message_id": "m1"}},
                {"update": {"channel": channel, "message_id": "missing", "data": 4}},
                {"delete": {"channel": channel, "message_id": "m1"}},
            ]
        )
        published, bad, broadcast, duplicate, missing, deleted = replies
        assert isinstance(published, Published) and published.message_id == "m1"
        assert isinstance(bad, BadRequestError) and bad.code == "bad_request"
        assert isinstance(broadcast, Broadcasted) and set(broadcast.offsets) == {channel, other}
        assert isinstance(duplicate, Published)
        assert duplicate.duplicate and duplicate.offset == published.offset
        assert isinstance(missing, NotFoundError) and missing.code == "not_found"
        assert isinstance(deleted, Published) and not deleted.duplicate

        history = await sb.history(channel)
        assert [m.status for m in history.messages] == ["deleted", None]

        with pytest.raises(BadRequestError) as raised:
            await sb.batch([])
        assert raised.value.status in (400, 422)


async def test_broadcast_reaches_every_channel(node: Node, channel: str):
    channels = [f"{channel}.{n}" for n in range(3)]
    async with watch(node, *channels) as watcher, Switchboard(node.control_url) as sb:
        sent = await sb.broadcast(channels, {"alert": True})
        assert set(sent.offsets) == set(channels)
        await watcher.wait_for(
            lambda frames: all(watcher.of(c) for c in channels), "the broadcast on each channel"
        )
        assert all(watcher.of(c)[0]["data"] == {"alert": True} for c in channels)


async def test_errors_raise_the_class_of_their_code(node: Node, channel: str):
    async with Switchboard(node.control_url) as sb:
        with pytest.raises(NotFoundError) as not_found:
            await sb.update(channel, "no-such-message", data=1)
        assert (not_found.value.status, not_found.value.code) == (404, "not_found")
        assert "message_id" in not_found.value.message

        await sb.publish(channel, {"role": "assistant"}, message_id="done", stream=True)
        await sb.finish(channel, "done")
        with pytest.raises(ConflictError) as conflict:
            await sb.append(channel, "done", "more")
        assert (conflict.value.status, conflict.value.code) == (409, "conflict")

        with pytest.raises(BadRequestError) as bad:
            await sb.publish("not a channel!", 1)
        assert (bad.value.status, bad.value.code) == (422, "bad_request")

        with pytest.raises(LimitExceededError) as too_big:
            await sb.publish(channel, "x" * 40_000)
        assert (too_big.value.status, too_big.value.code) == (413, "limit_exceeded")

        with pytest.raises(NotFoundError):
            await sb.disconnect(conn_id=1)
        with pytest.raises(ValueError):
            await sb.disconnect()

        # Every error is a SwitchboardError, and says what it was.
        assert isinstance(too_big.value, SwitchboardError)
        assert str(too_big.value).startswith("413 limit_exceeded: ")
        assert (await sb.history(channel)).messages[0].message_id == "done"


async def test_an_api_key_is_sent_as_a_bearer_token(node_factory, channel: str):
    key = "python-client-test-key-0123456789"
    keyed = node_factory(env={"SWITCHBOARD_CONTROL__API_KEYS": f'["{key}"]'})
    async with Switchboard(keyed.control_url) as anonymous:
        with pytest.raises(UnauthorizedError) as raised:
            await anonymous.publish(channel, 1)
        assert raised.value.status == 401
    async with Switchboard(keyed.control_url, api_key=key) as sb:
        assert (await sb.publish(channel, 1)).offset


async def test_a_rate_limit_says_when_to_come_back(node_factory, channel: str):
    limited = node_factory(
        env={
            "SWITCHBOARD_CONTROL__REQUESTS_PER_SECOND_PER_KEY": "1",
            "SWITCHBOARD_CONTROL__REQUEST_BURST_PER_KEY": "2",
        }
    )
    async with Switchboard(limited.control_url) as sb:
        # Past the burst of 2 within a second, unless each publish took a second or more.
        with pytest.raises(RateLimitedError) as raised:
            for n in range(20):
                await sb.publish(channel, n)
        assert raised.value.status == 429
        assert raised.value.retry_after is not None and raised.value.retry_after >= 1


async def test_presence_lists_subscribers_and_counts_them(node_factory):
    present = node_factory(
        config='[[namespaces]]\npattern = "room:*"\nsubscribe = "anonymous"\npublish = "none"\n'
        'history = "anonymous"\npresence = "anonymous"\n'
    )
    room = "room:py/7"
    async with (
        watch(present, room),
        watch(present, room) as second,
        Switchboard(present.control_url) as sb,
    ):
        stats = await sb.presence_stats(room)
        assert (stats.channel, stats.connections, stats.users) == (room, 2, 1)

        first_page = await sb.presence(room, limit=1)
        assert len(first_page.members) == 1 and first_page.next_cursor is not None
        rest = await sb.presence(room, cursor=first_page.next_cursor, limit=10)
        members = first_page.members + rest.members
        assert rest.next_cursor is None
        assert second.welcome["conn_id"] in {m.conn_id for m in members}
        assert {m.user for m in members} == {""}


async def test_disconnect_closes_a_connection_with_the_code_given(node: Node, channel: str):
    async with watch(node, channel) as watcher, Switchboard(node.control_url) as sb:
        closed = await sb.disconnect(conn_id=watcher.welcome["conn_id"], code=4321)
        assert closed.disconnected_here == 1
        await asyncio.wait_for(watcher.closed.wait(), WAIT)
        assert watcher.close_code == 4321


async def test_block_lists_and_lifts_a_user(node: Node):
    async with Switchboard(node.control_url) as sb:
        until = int(time.time()) + 600
        blocked = await sb.block("py-blocked", until=until)
        assert (blocked.user, blocked.until, blocked.disconnected_here) == ("py-blocked", until, 0)
        page = await sb.blocks(limit=10)
        assert Block(user="py-blocked", until=until) in page.blocks
        await sb.unblock("py-blocked")
        assert Block(user="py-blocked", until=until) not in (await sb.blocks()).blocks
        with pytest.raises(NotFoundError):
            await sb.unblock("py-blocked")
        with pytest.raises(BadRequestError):
            await sb.block("py-blocked", until=1)


async def test_revoke_a_token_and_a_users_older_tokens(node: Node):
    async with Switchboard(node.control_url) as sb:
        now = int(time.time())
        revoked = await sb.revoke(jti="py-jti", until=now + 600)
        assert (revoked.jti, revoked.until, revoked.checked_here) == ("py-jti", now + 600, 0)
        revoked = await sb.revoke(user="py-user", issued_before=now)
        assert (revoked.user, revoked.issued_before) == ("py-user", now)
        assert revoked.until >= now + 60
        with pytest.raises(ValueError):
            await sb.revoke()
        with pytest.raises(BadRequestError):
            await sb.revoke(jti="py-jti", until=1)
