"""docker-compose.yml and Dockerfile stay consistent with the config and the package layout."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
CONFIG = ROOT / "config" / "cascade.toml"
TIERS = ("cheap", "mid", "frontier")
KEY_VARS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY")


@pytest.fixture(scope="module")
def services() -> dict:
    with COMPOSE.open() as f:
        doc = yaml.safe_load(f)  # safe_load resolves the x-worker anchor / << merge keys
    assert "version" not in doc, "Compose spec files carry no version: key"
    return doc["services"]


def _command(service: dict) -> list[str]:
    command = service["command"]
    return command.split() if isinstance(command, str) else list(command)


def _environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the KEY=value list form
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return env


def _worker_name(tier: str) -> str:
    return f"worker-{tier}"


def test_services_exist(services):
    assert {"redis", *map(_worker_name, TIERS)} <= set(services)


def test_redis_is_durable_and_never_evicts(services):
    redis = services["redis"]
    args = " ".join(_command(redis))
    assert "--appendonly yes" in args
    assert "--appendfsync everysec" in args
    assert "--maxmemory-policy noeviction" in args
    assert any(str(v).endswith(":/data") for v in redis.get("volumes", [])), "named volume for /data"
    assert "redis-cli" in str(redis["healthcheck"]["test"]) and "ping" in str(redis["healthcheck"]["test"])


@pytest.mark.parametrize("tier", TIERS)
def test_worker_service(services, tier):
    service = services[_worker_name(tier)]
    assert _command(service) == ["cascade", "worker", "--tier", tier]
    env = _environment(service)
    assert re.fullmatch(r"redis://redis:6379(/\d+)?", env["CASCADE_REDIS_URL"])
    assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "./config:/app/config:ro" in service["volumes"]
    assert service.get("stop_grace_period"), "in-flight LLM calls need time to finish"


@pytest.mark.parametrize("tier", TIERS)
def test_api_keys_come_from_the_host_environment(services, tier):
    env = _environment(services[_worker_name(tier)])
    for var in KEY_VARS:
        assert var in env, f"{var} not passed to worker-{tier}"
    for var, value in env.items():
        if var.endswith("_KEY") or "SECRET" in var or "TOKEN" in var:
            # ${VAR}, ${VAR:-} or ${VAR-}: interpolated from the host; never a literal value
            assert value is None or re.fullmatch(rf"\$\{{{var}(:?-)?\}}", str(value)), (
                f"worker-{tier}: {var} must come from the environment, not {value!r}"
            )


def test_every_configured_tier_has_a_worker(services):
    if not CONFIG.exists():
        pytest.skip(f"{CONFIG.relative_to(ROOT)} does not exist yet")
    with CONFIG.open("rb") as f:
        tiers = tomllib.load(f).get("tiers", {})
    assert tiers, "config/cascade.toml names no [tiers.NAME]"
    for name, tier in tiers.items():
        service = services.get(_worker_name(name))
        assert service is not None, f"tier {name!r} has no {_worker_name(name)} service"
        assert _command(service) == ["cascade", "worker", "--tier", name]
        key_env = tier.get("api_key_env") or {"openai": "OPENAI_API_KEY",
                                              "anthropic": "ANTHROPIC_API_KEY"}.get(tier.get("provider"))
        if key_env:
            assert key_env in _environment(service), f"{_worker_name(name)} lacks {key_env}"


def test_dockerfile_copies_every_package():
    with (ROOT / "pyproject.toml").open("rb") as f:
        include = tomllib.load(f)["tool"]["setuptools"]["packages"]["find"]["include"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    for pattern in include:
        package = pattern.rstrip("*").rstrip(".")
        assert re.search(rf"^COPY\s+{re.escape(package)}\b", dockerfile, re.M), (
            f"Dockerfile does not COPY package {package!r}"
        )


def test_docker_compose_config_validates():
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("docker CLI not installed")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("docker compose plugin not installed")
    # `config` only parses and interpolates: no daemon needed.
    result = subprocess.run([docker, "compose", "-f", str(COMPOSE), "config", "-q"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
