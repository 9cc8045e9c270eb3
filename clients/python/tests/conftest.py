"""Fixtures: nodes of the real binary (see harness.py) and channels of each test's own."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import Node, start_node


def pytest_configure(config: pytest.Config) -> None:
    if not os.environ.get("SWITCHBOARD_BIN"):
        raise pytest.UsageError(
            "SWITCHBOARD_BIN must name the switchboard binary: `cargo build`, then "
            "SWITCHBOARD_BIN=$CARGO_TARGET_DIR/debug/switchboard (tests/run.sh does it all)"
        )
    # A venv shared between checkouts may hold another checkout's editable install: test
    # the package beside these tests, or say how to get it.
    import switchboard_client

    here = Path(__file__).resolve().parents[1] / "src" / "switchboard_client"
    imported = Path(switchboard_client.__file__).resolve().parent
    if imported != here:
        raise pytest.UsageError(
            f"switchboard_client is imported from {imported}, not from {here}: run tests/run.sh "
            "(or pip install -e 'clients/python[test]' in this checkout)"
        )


@pytest.fixture
def anyio_backend() -> str:
    # ReplyStream is built on asyncio's queue and tasks.
    return "asyncio"


@pytest.fixture(scope="session")
def node() -> Iterator[Node]:
    """One node for the session: each test uses channels of its own."""
    started = start_node()
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def node_factory() -> Iterator[Callable[..., Node]]:
    """Nodes with a configuration of their own, stopped at the end of the test."""
    started: list[Node] = []

    def factory(env: dict[str, str] | None = None, config: str | None = None) -> Node:
        started.append(start_node(env, config))
        return started[-1]

    try:
        yield factory
    finally:
        for each in started:
            each.stop()


_counter = iter(range(1_000_000))


@pytest.fixture
def channel(request: pytest.FixtureRequest) -> str:
    """A channel no other test uses."""
    return f"py:{request.node.name[:60]}.{next(_counter)}".replace("[", "-").replace("]", "")
