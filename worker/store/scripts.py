"""The Lua scripts of lua/, registered on a client (redis-py reloads one that a restarted Redis forgot)."""

from __future__ import annotations

from importlib import resources
from typing import Any


def load_script(redis: Any, name: str) -> Any:
    """`lua/<name>.lua` registered on `redis` (real Redis or fakeredis)."""
    return redis.register_script(resources.files("cascade.worker.store").joinpath(f"lua/{name}.lua").read_text())
