"""Shared pytest fixtures.

Redis
-----
``redis_url`` (session) is the Redis the suite runs against, found by tests/redis_server.py:
``CASCADE_TEST_REDIS_URL`` if set, else redis://127.0.0.1:6379/0 if it answers PING (skipped when
``CASCADE_TEST_NO_LOCAL_REDIS=1``), else a private ``redis-server`` started on a free port for this
session and stopped when it ends (finalizer, atexit, and on Linux SIGTERM if pytest dies).
``redis_client`` (function) is ``redis.Redis.from_url(redis_url)``, closed after the test.

The database is never flushed: it may be a developer's or CI's shared Redis. Each test isolates
itself by key namespace (e.g. a unique ``cascade-test-<uuid>`` prefix) and deletes what it wrote.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

# `tests` is not an installed package; make `tests.redis_server` importable however pytest runs.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.redis_server import (  # noqa: E402
    ENV_URL,
    find_redis_url,
    ping,
    redact,
    start_redis_server,
    stop_redis_server,
)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = find_redis_url()
    if url is not None:
        if not ping(url):
            pytest.fail(f"{ENV_URL}={redact(url)} does not answer PING", pytrace=False)
        yield url
        return
    try:
        url, process = start_redis_server()
    except (OSError, RuntimeError) as e:
        pytest.fail(f"no Redis for the tests: {e}", pytrace=False)
    try:
        yield url
    finally:
        stop_redis_server(process)


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        client.close()
