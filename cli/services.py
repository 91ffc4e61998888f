"""Commands that run services: `cascade worker`, `cascade ledger` and `cascade sim`."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import click

from cascade.cli.common import Command, Group, config_option, load, redact, redis_option
from cascade.errors import CascadeError
from cascade.ops.logs import configure_logging, secret_values
from cascade.worker.store import StoreError

metrics_port_option = click.option("--metrics-port", type=click.IntRange(0, 65535),
                                   help="Serve Prometheus metrics on this port (default: [metrics] port or "
                                        "$CASCADE_METRICS_PORT; 0: off).")

SIMULATOR_KEY = "sim-key"   # what `cascade sim exec` gives its command as the endpoint's key


@click.command(cls=Command)
@click.option("--tier", "-t", required=True, help="The tier whose queue this worker consumes.")
@click.option("--concurrency", "-c", type=int, help="Threads (default: the tier's concurrency in config; "
              "1 with --shadow).")
@click.option("--shadow", is_flag=True, help="Run shadow quality jobs on this (last) tier instead of real work: "
              "its own queue ([shadow] queue or shadow.TIER), after the tier's real queue is empty.")
@click.option("--loglevel", "-l", default="INFO", show_default=True)
@metrics_port_option
@click.option("--task-events", "-E", is_flag=True,
              help="Send Celery task events, for Flower (default: [metrics] task_events).")
@config_option
@redis_option
def worker(tier: str, concurrency: int | None, shadow: bool, loglevel: str, metrics_port: int | None,
           task_events: bool, config_path: str | None, redis_url: str | None) -> None:
    """Run a Celery worker for one tier's queue on the threads pool.

    Example: CASCADE_REDIS_URL=redis://localhost:6379/0 cascade worker --tier cheap --metrics-port 9101 -E
    (shadow sampling: cascade worker --tier frontier --shadow)
    """
    from celery import signals

    from cascade.worker.backends import worker_runtime
    from cascade.worker.celery_app import create_app

    settings = load(config_path, redis_url)
    if settings.embedded:
        raise click.UsageError("a worker needs a Redis URL (--redis-url or CASCADE_REDIS_URL)")
    if tier not in settings.tiers:
        raise click.BadParameter(f"unknown tier '{tier}' (known: {', '.join(sorted(settings.tiers))})",
                                 param_hint="--tier")
    configure_logging(loglevel, settings.metrics.log_format, secret_values(settings))
    tier_cfg = settings.tiers[tier]
    threads = concurrency or (1 if shadow else tier_cfg.concurrency)
    queue = (settings.shadow.queue or f"shadow.{tier}") if shadow else tier_cfg.queue_name
    box: dict[str, object] = {}
    app = create_app(settings, lambda: box["runtime"].engine, lambda: box["runtime"].shadow)
    try:
        runtime = box["runtime"] = worker_runtime(settings, app, tier, threads,   # builds the SDK client: checks the key
                                                  shadow=shadow)
        observe_worker(runtime, settings, tier, metrics_port)     # a taken metrics port fails before registering
        runtime.start()
    except CascadeError as e:
        raise click.ClickException(str(e)) from None
    except StoreError as e:
        raise click.ClickException(f"Redis {redact(settings.redis.url)}: {e}") from None
    signals.worker_shutting_down.connect(lambda **_: runtime.stopping(), weak=False)
    signals.worker_shutdown.connect(lambda **_: runtime.close(), weak=False)
    click.echo(f"cascade worker: tier {tier} ({tier_cfg.provider} {tier_cfg.model}), queue {queue}, "
               f"{threads} threads, broker {redact(settings.redis.url)}, id {runtime.info.worker_id}", err=True)
    app.worker_main([
        "worker", "--queues", queue, "--pool", "threads",
        "--concurrency", str(threads), "--prefetch-multiplier", "1",
        "--loglevel", loglevel, "--hostname", f"{'shadow-' if shadow else ''}{tier}@%h-{os.getpid()}",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
        *(["--task-events"] if task_events or settings.metrics.task_events else []),
    ])


def observe_worker(runtime, settings, tier: str, metrics_port: int | None) -> None:
    """The worker's job log line, and its metrics served on the port (flag, else [metrics] port; 0: none)."""
    from celery import signals

    from cascade.ops.logs import JobLog
    from cascade.ops.metrics import QueueDepth, process_metrics, serve

    runtime.engine.observers.append(JobLog())
    port = settings.metrics.port if metrics_port is None else metrics_port
    if not port:
        return
    metrics = process_metrics()
    metrics.instrument(runtime.engine)
    metrics.track_celery_tasks(tier)
    metrics.set_baselines(settings)
    try:
        serve(port, settings.metrics.bind, metrics, QueueDepth(settings.tiers, runtime.engine.dispatcher.backlog))
    except OSError as e:
        raise click.ClickException(f"metrics on {settings.metrics.bind}:{port}: {e.strerror or e}") from None
    signals.worker_shutdown.connect(lambda **_: metrics.close(), weak=False)


@click.group(cls=Group)
def sim() -> None:
    """The provider simulator: OpenAI and Anthropic wire protocols on 127.0.0.1.

    Example: cascade sim exec --scenario examples/scenario.toml -- cascade-submit in.jsonl -p ticket-triage
    """


@sim.command("serve")
@click.option("--scenario", "-s", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True, help="0 picks a free port.")
@click.option("--port-file", type=click.Path(dir_okay=False), help="Write the chosen port here.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on: loopback, or 0.0.0.0 inside a container (docker-compose.yml's sim service).")
def sim_serve(scenario: str, port: int, port_file: str | None, host: str) -> None:
    """Serve the simulator until interrupted.

    Example: cascade sim serve --scenario examples/scenario.toml --port 8900
    """
    from cascade.simulator.server import serve_forever

    try:
        serve_forever(scenario, host, port, port_file)
    except (CascadeError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:
        raise click.ClickException(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


@sim.command("exec", context_settings={"ignore_unknown_options": True})
@click.option("--scenario", "-s", required=True, type=click.Path(exists=True, dir_okay=False))
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def sim_exec(scenario: str, command: tuple[str, ...]) -> None:
    """Start the simulator, run COMMAND with every tier pointed at it, stop it; exit with COMMAND's status.

    Example: cascade sim exec -s examples/scenario.toml -- cascade-submit examples/tickets.jsonl -p ticket-triage --wait
    """
    from cascade.simulator.scenario import load_scenario
    from cascade.simulator.server import SimServer

    try:
        server = SimServer(load_scenario(scenario)).start()
    except CascadeError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"simulator: {server.url} (scenario {scenario})", err=True)
    try:
        # the simulator's own key: the tiers' real keys (if any are set) never reach it
        env = dict(os.environ, CASCADE_PROVIDER_BASE_URL=server.url, CASCADE_PROVIDER_API_KEY=SIMULATOR_KEY)
        try:
            code = subprocess.call(list(command), env=env)
        except OSError as e:
            raise click.ClickException(f"cannot run {command[0]}: {e.strerror or e}") from None
    finally:
        server.stop()
    sys.exit(code)


@click.command("ledger", cls=Command)
@click.option("--once", is_flag=True, help="Move the records waiting now, then exit.")
@click.option("--migrate", "migrate_only", is_flag=True, help="Only bring the database to the newest schema.")
@click.option("--loglevel", "-l", default="INFO", show_default=True)
@metrics_port_option
@config_option
@redis_option
def ledger(once: bool, migrate_only: bool, loglevel: str, metrics_port: int | None, config_path: str | None,
           redis_url: str | None) -> None:
    """Run a ledger writer: result records from Redis into the ledger database, each exactly once.

    Run one or more anywhere that reaches both; they share the work. Stops on SIGTERM or Ctrl-C.

    Example: CASCADE_REDIS_URL=redis://localhost:6379/0 CASCADE_LEDGER_URL=postgresql://cascade@db/cascade cascade ledger
    """
    import signal

    from cascade.ledger.database import LedgerError, open_ledger, redact_url
    from cascade.ledger.writer import LedgerWriter
    from cascade.worker.backends import redis_client

    settings = load(config_path, redis_url)
    configure_logging(loglevel, settings.metrics.log_format, secret_values(settings))
    if settings.embedded and not migrate_only:     # before the database is opened: nothing is created for nothing
        raise click.UsageError("the ledger service needs a Redis URL (--redis-url or CASCADE_REDIS_URL); in "
                               "embedded mode cascade-submit writes the ledger itself")
    store = open_ledger(settings)
    try:
        store.migrate()
        if migrate_only:
            click.echo(f"ledger {redact_url(store.url)}: schema is current", err=True)
            return
        writer = LedgerWriter(settings, redis_client(settings), store)
        writer.start()
        _serve_ledger_metrics(settings, metrics_port, once)
        click.echo(f"cascade ledger: {redact(settings.redis.url)} -> {redact_url(store.url)} as {writer.consumer}",
                   err=True)
        if once:
            click.echo(f"cascade ledger: {writer.drain()} records moved", err=True)
            return
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        writer.run(stop)
        click.echo(f"cascade ledger: stopped after {writer.written} records", err=True)
    except LedgerError as e:
        raise click.ClickException(str(e)) from None
    finally:
        store.close()


def _serve_ledger_metrics(settings, metrics_port: int | None, once: bool) -> None:
    """The ledger process's metrics (the alert and shadow gauges it sets), when a port is given."""
    from cascade.ops.metrics import process_metrics, serve

    port = settings.metrics.port if metrics_port is None else metrics_port
    if not port or once:
        return
    metrics = process_metrics()
    metrics.set_baselines(settings)
    try:
        serve(port, settings.metrics.bind, metrics)
    except OSError as e:
        raise click.ClickException(f"metrics on {settings.metrics.bind}:{port}: {e.strerror or e}") from None
