"""Fixtures of the example tests: one migrated copy of the chat, its servers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ._chat import ChatSite, Server


@pytest.fixture(scope="session")
def chat_site(tmp_path_factory: pytest.TempPathFactory) -> ChatSite:
    return ChatSite(tmp_path_factory.mktemp("chat") / "site")


@pytest.fixture(scope="module")
def memory_server(chat_site: ChatSite) -> Iterator[Server]:
    """The chat with the default settings: in-memory layer, worker in the server."""
    with chat_site.serve(name="memory") as server:
        yield server


@pytest.fixture(scope="module")
def redis_servers(chat_site: ChatSite, redis_url: str) -> Iterator[tuple[Server, Server]]:
    """Two server processes sharing the Redis layer (``TIDINGS_REDIS_URL``)."""
    with (
        chat_site.serve(redis_url=redis_url, name="redis-a") as first,
        chat_site.serve(redis_url=redis_url, name="redis-b") as second,
    ):
        yield first, second
