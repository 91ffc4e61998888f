"""Options and helpers shared by the CLI commands."""

from __future__ import annotations

import re

import click

from cascade.errors import CascadeError
from cascade.worker.config import Settings, load_settings

config_option = click.option("--config", "config_path", type=click.Path(dir_okay=False),
                             help="cascade.toml to use (default: $CASCADE_CONFIG, else ./cascade.toml, "
                                  "else config/cascade.toml).")
redis_option = click.option("--redis-url", help="Redis URL; empty runs embedded (default: $CASCADE_REDIS_URL or config).")


MAX_USD = 1e9      # far above any batch; nano-USD amounts stay exact integers below it


class USD(click.ParamType):
    """An amount of US dollars: a positive, finite number (a budget of 0 would mean none at all)."""

    name = "usd"

    def convert(self, value, param, ctx) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of USD", param, ctx)
        if not 0 < number <= MAX_USD:   # NaN fails this too
            self.fail(f"{value!r}: give a positive amount of USD, at most {MAX_USD:g}", param, ctx)
        return number


def load(config_path: str | None, redis_url: str | None) -> Settings:
    """Settings with command-line flags taking precedence, or a ClickException naming the problem."""
    try:
        return load_settings(config_path, overrides={"redis.url": redis_url})
    except CascadeError as e:
        raise click.ClickException(str(e)) from None


def load_pipeline(settings: Settings, name: str):
    """A pipeline by name or a ClickException."""
    try:
        return settings.pipeline(name)
    except CascadeError as e:
        raise click.ClickException(str(e)) from None


def redact(url: str) -> str:
    """A Redis URL without its password, for messages."""
    return re.sub(r"//([^:@/]*):[^@/]*@", r"//\1:***@", url)




class Command(click.Command):
    """A command whose store and configuration errors end in one clear line, never a traceback."""

    def invoke(self, ctx: click.Context):
        """Run the command, turning Redis and Cascade errors into ClickException."""
        from cascade.worker.store import StoreError

        try:
            return super().invoke(ctx)
        except StoreError as e:
            raise click.ClickException(f"Redis: {e}") from None
        except CascadeError as e:
            raise click.ClickException(str(e)) from None


class Group(click.Group):
    """A group whose subcommands are `Command`s."""

    command_class = Command
    group_class = type


def state_left_redis(batch: str, row: dict, retention_days: float) -> str:
    """What to do about a batch the ledger holds but Redis no longer does: a finished one's keys expired; an
    unfinished one will not finish by itself, and submitting its input again under its id resumes it."""
    if row["state"] in ("finished", "cancelled"):
        return (f"the ledger has it ({row['state']}), but its live state is gone (it ran embedded, or its keys "
                f"expired {retention_days:g} days after it finished); submit its input again under a new --batch-id")
    return (f"the ledger has it ({row['state']}, {row['done']} of {row['total']} done), but its live state is gone "
            "from Redis (restarted without its data, or flushed): it will not finish by itself; submit its input "
            f"again under --batch-id {batch} (the jobs whose records the ledger holds are not run again)")
