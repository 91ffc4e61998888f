"""Shared pytest fixtures.

Redis
-----
``redis_url`` (session) is the Redis the suite runs against, found by tests/redis_server.py:
``CASCADE_TEST_REDIS_URL`` if set (used as given), else a free database of the Redis on
127.0.0.1:6379 if it answers PING (claimed for this session, emptied when it ends; skipped when
``CASCADE_TEST_NO_LOCAL_REDIS=1``), else a private ``redis-server`` started on a free port for this
session and stopped when it ends (finalizer, atexit, and on Linux SIGTERM if pytest dies).
``redis_client`` (function) is ``redis.Redis.from_url(redis_url)``, closed after the test.

Each test still isolates itself by key namespace (a unique prefix) and deletes what it wrote, so
the suite also runs against a database given by ``CASCADE_TEST_REDIS_URL``.
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

from cascade.simulator import SimServer, load_scenario
from tests.cluster import SCENARIO
from tests.redis_server import (
    ENV_URL,
    LOCAL_URL,
    claim_database,
    find_redis_url,
    ping,
    redact,
    release_database,
    start_redis_server,
    stop_redis_server,
)


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    """The simulator on the example scenario, one per test module (a module may give its own)."""
    with SimServer(load_scenario(SCENARIO)) as server:
        yield server


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = find_redis_url()
    if url is not None:
        if not ping(url):
            pytest.fail(f"{ENV_URL}={redact(url)} does not answer PING", pytrace=False)
        if url != LOCAL_URL:
            yield url           # given by CASCADE_TEST_REDIS_URL: used as given
            return
        try:
            url = claim_database(url)
        except RuntimeError as e:
            pytest.fail(str(e), pytrace=False)
        try:
            yield url
        finally:
            release_database(url)
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


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL database of this session's own (tests/postgres_server.py), dropped when it ends."""
    from tests.postgres_server import TestDatabase

    try:
        database = TestDatabase()
    except Exception as e:
        pytest.fail(f"no PostgreSQL for the tests: {e}", pytrace=False)
    try:
        yield database.url
    finally:
        database.drop()
