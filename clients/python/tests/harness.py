"""Real nodes for the client's tests: the `switchboard` binary named by SWITCHBOARD_BIN
(tests/it/python_client.rs sets it) on free loopback ports, killed by PID; a WebSocket
subscriber (`watch`) that sees what a browser would."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

# Every wait in these tests is bounded by this many seconds (times SWITCHBOARD_TEST_PATIENCE,
# as in the Rust tests).
PATIENCE = float(os.environ.get("SWITCHBOARD_TEST_PATIENCE", "1"))
WAIT = 10.0 * PATIENCE


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Node:
    """One running `switchboard` process."""

    process: subprocess.Popen[bytes]
    control_url: str
    ws_url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """Kills the process (by its PID) and removes its directory."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=WAIT)
        shutil.rmtree(self.log_path.parent, ignore_errors=True)


def start_node(env: dict[str, str] | None = None, config: str | None = None) -> Node:
    """Starts a node on free loopback ports, configured through the environment (and
    `config`, TOML written to a file, for what the environment cannot say), and waits for
    `GET /readyz` 200."""
    binary = os.environ.get("SWITCHBOARD_BIN")
    if not binary:
        pytest.fail(
            "SWITCHBOARD_BIN must name the switchboard binary: `cargo build`, then "
            "SWITCHBOARD_BIN=$CARGO_TARGET_DIR/debug/switchboard (tests/run.sh does it all)",
            pytrace=False,
        )
    # Absolute: the node runs in a directory of its own.
    binary = os.path.abspath(binary)
    if not os.access(binary, os.X_OK):
        pytest.fail(f"SWITCHBOARD_BIN={binary} is not an executable: build it with `cargo build`")
    workdir = Path(tempfile.mkdtemp(prefix="sb-py-"))
    ws_port, control_port = free_port(), free_port()
    variables = {
        **os.environ,
        "SWITCHBOARD_SERVER__LISTEN": f"127.0.0.1:{ws_port}",
        "SWITCHBOARD_CONTROL__LISTEN": f"127.0.0.1:{control_port}",
        "SWITCHBOARD_LOG__LEVEL": "warn",
        # Two workers: this machine has two cores, and the tests run one node at a time.
        "SWITCHBOARD_SERVER__WORKER_THREADS": "2",
        **(env or {}),
    }
    args = [binary]
    if config is not None:
        path = workdir / "switchboard.toml"
        path.write_text(config)
        args += ["--config", str(path)]
    log_path = workdir / "switchboard.log"
    with log_path.open("wb") as log_file:
        # Run in an empty directory: no config/switchboard.toml is picked up by accident.
        process = subprocess.Popen(
            args, cwd=workdir, env=variables, stdout=log_file, stderr=subprocess.STDOUT
        )
    node = Node(
        process=process,
        control_url=f"http://127.0.0.1:{control_port}",
        ws_url=f"ws://127.0.0.1:{ws_port}/ws",
        log_path=log_path,
    )
    deadline = time.monotonic() + WAIT
    while True:
        if process.poll() is not None:
            log = node.log()
            node.stop()
            pytest.fail(f"switchboard exited with {process.returncode}:\n{log}")
        try:
            if httpx.get(f"{node.control_url}/readyz", timeout=1.0).status_code == 200:
                return node
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            log = node.log()
            node.stop()
            pytest.fail(f"switchboard not ready within {WAIT} s:\n{log}")
        time.sleep(0.05)


@dataclass
class Watcher:
    """A WebSocket subscriber: records every frame it receives."""

    ws: Any
    welcome: dict[str, Any]
    frames: list[dict[str, Any]] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    close_code: int | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _reader: asyncio.Task[None] | None = None

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                self.frames.append(json.loads(raw))
                self._changed.set()
        except websockets.ConnectionClosed:
            pass
        finally:
            self.close_code = self.ws.close_code
            self.closed.set()
            self._changed.set()

    async def wait_for(
        self, check: Callable[[list[dict[str, Any]]], bool], what: str, timeout: float = WAIT
    ) -> None:
        """Waits until ``check(frames)`` holds, for at most ``timeout`` seconds."""

        async def until() -> None:
            while not check(self.frames):
                if self.closed.is_set():
                    raise AssertionError(f"the socket closed while waiting for {what}")
                self._changed.clear()
                await self._changed.wait()

        try:
            await asyncio.wait_for(until(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(
                f"timed out waiting for {what}; frames: {json.dumps(self.frames)[:4000]}"
            ) from None

    async def subscribe(self, channel: str) -> None:
        request_id = len(self.frames) + 1000
        await self.ws.send(json.dumps({"type": "subscribe", "id": request_id, "channel": channel}))
        await self.wait_for(
            lambda frames: any(
                frame.get("id") == request_id and frame["type"] in ("subscribed", "error")
                for frame in frames
            ),
            f"the reply to subscribing to {channel}",
        )
        reply = next(frame for frame in self.frames if frame.get("id") == request_id)
        assert reply["type"] == "subscribed", reply

    def of(self, channel: str, message_id: str | None = None) -> list[dict[str, Any]]:
        """The frames of a channel (and of one message)."""
        return [
            frame
            for frame in self.frames
            if frame.get("channel") == channel
            and frame["type"] not in ("subscribed", "unsubscribed")
            and (message_id is None or frame.get("message_id") == message_id)
        ]


class watch:
    """``async with watch(node, channel) as watcher``: a WebSocket subscribed to ``channel``
    (anonymous subscribe is the default namespace's rule)."""

    def __init__(self, node: Node, *channels: str):
        self.node = node
        self.channels = channels
        self.watcher: Watcher | None = None

    async def __aenter__(self) -> Watcher:
        ws = await asyncio.wait_for(websockets.connect(self.node.ws_url), WAIT)
        welcome = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
        assert welcome["type"] == "welcome", welcome
        self.watcher = Watcher(ws=ws, welcome=welcome)
        self.watcher._reader = asyncio.get_running_loop().create_task(self.watcher._read())
        for channel in self.channels:
            await self.watcher.subscribe(channel)
        return self.watcher

    async def __aexit__(self, *exc: object) -> None:
        assert self.watcher is not None
        await asyncio.wait_for(self.watcher.ws.close(), WAIT)
        if self.watcher._reader is not None:
            await asyncio.wait_for(self.watcher._reader, WAIT)


def rebuild(frames: list[dict[str, Any]]) -> str:
    """A message's text as a viewer rebuilds it from its frames."""
    text = ""
    for frame in frames:
        if frame["type"] == "message":
            text = frame.get("text", "")
        elif frame["type"] == "append":
            text += frame["text"]
        elif frame["type"] == "update" and "text" in frame:
            text = frame["text"]
    return text


def ended(message_id: str) -> Callable[[list[dict[str, Any]]], bool]:
    """True once the message was finished or abandoned."""
    return lambda frames: any(
        frame.get("message_id") == message_id and frame["type"] in ("finish", "abandon")
        for frame in frames
    )
