"""docker-compose.yml and the Dockerfile agree with the CLI, the config and the package layout.

Docker cannot run here, so every command a service runs is parsed by the real `cascade` CLI (an
unknown option or command fails the test), every path it names is followed through the service's
volumes to a file of this repository, and the keyless recipe in the file's header is checked end to
end: its env file, the simulator's address, the submit line and its output folder.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path, PurePosixPath

import click
import pytest
import yaml

from cascade.cli.main import cascade
from cascade.cli.submit import submit_command
from tests import debian

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
CONFIG = ROOT / "config" / "cascade.toml"
WORKDIR = PurePosixPath("/app")           # the image's WORKDIR: relative paths in commands start here
KEY_VARS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY")
PROGRAMS = {"cascade": cascade, "cascade-submit": submit_command}


@pytest.fixture(scope="module")
def services() -> dict:
    with COMPOSE.open() as f:
        doc = yaml.safe_load(f)  # safe_load resolves the anchors and << merge keys
    assert "version" not in doc, "Compose spec files carry no version: key"
    return doc["services"]


@pytest.fixture(scope="module")
def tiers() -> dict:
    with CONFIG.open("rb") as f:
        return tomllib.load(f)["tiers"]


def argv(service: dict) -> list[str]:
    """What the container runs: entrypoint + command."""
    def listed(value):
        return shlex.split(value) if isinstance(value, str) else list(value or [])
    return listed(service.get("entrypoint")) + listed(service.get("command"))


def parse(service: dict, args: list[str]) -> click.Context:
    """Parse a container's command line with the real CLI, down to the leaf command (click.UsageError when it
    is wrong); paths are first followed through the service's volumes, so a file it names must exist here."""
    program, *rest = [str(host_path(service, a) or a) if a[:1] not in ("-", "$") else a for a in args]
    command = PROGRAMS[program]
    ctx = command.make_context(program, rest, resilient_parsing=False)
    while isinstance(command, click.Group):
        name, command, rest = command.resolve_command(ctx, ctx._protected_args + ctx.args)
        ctx = command.make_context(name, rest, parent=ctx)
    return ctx


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the KEY=value list form
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return env


def host_path(service: dict, container_path: str) -> Path | None:
    """The repository path a container path reads, through the service's volumes (None: not mounted)."""
    path = WORKDIR / container_path
    for volume in service.get("volumes", []):
        source, _, rest = volume.partition(":")
        target = rest.split(":")[0]
        if source.startswith("./") and (path == PurePosixPath(target) or PurePosixPath(target) in path.parents):
            return ROOT / source[2:] / path.relative_to(target)
    return None


def header_lines() -> list[str]:
    return [line[1:].strip() for line in COMPOSE.read_text().splitlines() if line.startswith("#")]


def documented(prefix: str) -> list[str]:
    """The header's command lines that start with `prefix`, split as a shell would."""
    return [shlex.split(line) for line in header_lines() if line.startswith(prefix)]


def test_every_configured_tier_has_a_worker_that_the_cli_accepts(services, tiers):
    workers = {name: s for name, s in services.items() if name.startswith("worker-")}
    assert set(workers) == {f"worker-{t}" for t in tiers}
    for tier_name, tier in tiers.items():
        service = workers[f"worker-{tier_name}"]
        ctx = parse(service, argv(service))
        assert ctx.command.name == "worker" and ctx.params["tier"] == tier_name
        env = environment(service)
        key_env = tier.get("api_key_env") or {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}[
            tier["provider"]]
        assert key_env in env, f"worker-{tier_name} lacks {key_env}"
        assert re.fullmatch(r"redis://redis:6379(/\d+)?", env["CASCADE_REDIS_URL"])
        assert host_path(service, env["CASCADE_CONFIG"]) == CONFIG
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        assert service.get("stop_grace_period"), "in-flight LLM calls need time to finish"


def test_secrets_only_come_from_the_host_environment(services):
    for name, service in services.items():
        for var, value in environment(service).items():
            if var.endswith("_KEY") or "SECRET" in var or "TOKEN" in var or "PASSWORD" in var:
                # ${VAR}, ${VAR:-default}: interpolated from the host; never a literal value
                assert value is None or re.fullmatch(r"\$\{[A-Z_]+(:?-[^}]*)?\}", str(value)), (
                    f"{name}: {var} must come from the environment, not {value!r}")


def test_redis_is_durable_never_evicts_and_is_published_where_the_header_says(services):
    redis = services["redis"]
    args = " ".join(argv(redis))
    assert "--appendonly yes" in args and "--appendfsync everysec" in args
    assert "--maxmemory-policy noeviction" in args
    assert any(str(v).endswith(":/data") for v in redis.get("volumes", [])), "named volume for /data"
    [published] = redis["ports"]
    host, port, container = re.fullmatch(r"(127\.0\.0\.1):\$\{CASCADE_REDIS_PORT:-(\d+)\}:(\d+)", published).groups()
    assert container == "6379"
    assert any(f"redis://{host}:{port}/0" in line for line in header_lines()), "the header names the host URL"


def test_the_simulator_serves_the_scenario_where_the_env_file_points_the_workers(services):
    sim = services["sim"]
    ctx = parse(sim, argv(sim))     # the scenario must exist (click checks it) in the mounted folder
    assert ctx.command.name == "serve" and ctx.params["host"] == "0.0.0.0"
    assert Path(ctx.params["scenario"]).is_relative_to(ROOT)
    [up] = [cmd for cmd in documented("docker compose --env-file") if cmd[4:5] == ["up"]]
    env_file = ROOT / up[3]
    settings = dict(line.split("=", 1) for line in env_file.read_text().splitlines()
                    if line and not line.startswith("#"))
    assert set(sim["profiles"]) <= set(settings["COMPOSE_PROFILES"].split(","))
    assert settings["CASCADE_PROVIDER_BASE_URL"] == f"http://sim:{ctx.params['port']}"
    for name in services:
        if name.startswith("worker-"):
            assert environment(services[name])["CASCADE_PROVIDER_BASE_URL"] == "${CASCADE_PROVIDER_BASE_URL:-}"


def test_the_documented_submit_line_is_a_valid_submission_with_a_mounted_output(services):
    [run] = [cmd for cmd in documented("docker compose") if "run" in cmd]
    service_name = run[run.index("--rm") + 1]
    service = services[service_name]
    args = argv({**service, "command": run[run.index("--rm") + 2:]})
    ctx = parse(service, args)
    assert ctx.command is submit_command and ctx.params["wait"]
    source = Path(ctx.params["source"])
    assert source.is_relative_to(ROOT) and source.is_file(), f"{source} is not mounted from the repository"
    assert (ROOT / "config" / "pipelines" / f"{ctx.params['pipeline']}.toml").is_file()
    out_dir = PurePosixPath(args[args.index("--out") + 1]).parent
    assert any(v.startswith("./") and v.split(":")[1] == str(out_dir) and not v.endswith(":ro")
               for v in service["volumes"]), f"{out_dir} is not a writable host folder"


def test_dockerfile_copies_every_folder_of_the_package():
    with (ROOT / "pyproject.toml").open("rb") as f:
        folders = set(tomllib.load(f)["tool"]["setuptools"]["package-dir"].values())
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY\s+(\S+)\s+\./\1$", dockerfile, re.MULTILINE))
    assert folders <= copied, f"Dockerfile does not COPY {sorted(folders - copied)}"


def compose_command() -> list[str] | None:
    """`docker compose` (v2) if installed, else `docker-compose` (v1, Debian's package), else None."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy is None and debian.install("docker-compose"):
        legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


@pytest.mark.parametrize("env_file", [None, "examples/sim.env"])
def test_docker_compose_config_validates(env_file):
    command = compose_command()
    if command is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    # `config` only parses, validates and interpolates: no daemon needed.
    options = ["--env-file", env_file] if env_file else []
    result = subprocess.run([*command, "-f", str(COMPOSE), *options, "config", "-q"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_the_ledger_service_writes_to_the_postgres_service_every_process_is_given(services):
    ledger = services["ledger"]
    assert parse(ledger, argv(ledger)).command.name == "ledger"
    assert {name: d["condition"] for name, d in ledger["depends_on"].items()} == {
        "redis": "service_healthy", "postgres": "service_healthy"}
    postgres = services["postgres"]
    assert "pg_isready" in postgres["healthcheck"]["test"]
    assert any(str(v).endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])
    env = environment(postgres)
    url = environment(ledger)["CASCADE_LEDGER_URL"]
    assert url == (f"postgresql://{env['POSTGRES_USER']}:{env['POSTGRES_PASSWORD']}@postgres:5432/"
                   f"{env['POSTGRES_DB']}")
    assert environment(services["submit"])["CASCADE_LEDGER_URL"] == url     # --wait reads results from it


def test_workers_serve_metrics_and_task_events_that_the_monitoring_profile_reads(services):
    prometheus, flower = services["prometheus"], services["flower"]
    assert prometheus["profiles"] == flower["profiles"] == ["monitoring"]
    # Prometheus reads the shipped config and rules, mounted from the repository
    mounts = {v.split(":")[1]: ROOT / v.split(":")[0][2:] for v in prometheus["volumes"] if v.startswith("./")}
    assert mounts["/etc/prometheus/prometheus.yml"] == ROOT / "deploy" / "prometheus" / "prometheus.yml"
    assert mounts["/etc/prometheus/alerts.yml"] == ROOT / "deploy" / "prometheus" / "alerts.yml"
    assert all(path.is_file() for path in mounts.values())
    scrape = yaml.safe_load(mounts["/etc/prometheus/prometheus.yml"].read_text())
    [workers] = {job["job_name"]: job for job in scrape["scrape_configs"]}["cascade-workers"]["dns_sd_configs"]
    # every worker serves /metrics where Prometheus looks, reachable from its container, and sends task events
    for name in (n for n in services if n.startswith("worker-")):
        ctx = parse(services[name], argv(services[name]))
        assert ctx.params["metrics_port"] == workers["port"] and ctx.params["task_events"], name
        assert environment(services[name])["CASCADE_METRICS_BIND"] == "0.0.0.0", name
        assert name in workers["names"]
    ledger = parse(services["ledger"], argv(services["ledger"]))
    assert f"ledger:{ledger.params['metrics_port']}" in scrape["scrape_configs"][1]["static_configs"][0]["targets"]
    # Flower listens to the broker the workers use
    broker = next(a for a in argv(flower) if a.startswith("--broker="))
    assert broker == f"--broker={environment(services['worker-cheap'])['CASCADE_REDIS_URL']}"
    assert argv(flower)[0] == "celery" and "flower" in argv(flower)


def test_one_beat_submits_the_schedules_to_redis_and_records_runs_in_postgres(services):
    beat = services["beat"]
    ctx = parse(beat, argv(beat))
    assert ctx.command.name == "beat"
    assert beat.get("deploy", {}).get("replicas") == 1, "exactly one beat per cluster"
    assert {name: d["condition"] for name, d in beat["depends_on"].items()} == {
        "redis": "service_healthy", "postgres": "service_healthy"}
    env = environment(beat)
    assert env["CASCADE_LEDGER_URL"] == environment(services["ledger"])["CASCADE_LEDGER_URL"]
    assert env["CASCADE_REDIS_URL"] == environment(services["worker-cheap"])["CASCADE_REDIS_URL"]
    assert host_path(beat, env["CASCADE_CONFIG"]) == CONFIG
    # relative schedule paths start beside cascade.toml: in/ is mounted there, out/ writable
    assert host_path(beat, "/app/config/in/tickets-2026-12-02.jsonl") == ROOT / "config" / "in" / \
        "tickets-2026-12-02.jsonl"
    assert "./config/out:/app/config/out" in beat["volumes"]
