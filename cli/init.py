"""`cascade init`: write a commented starter configuration into a folder, ready for the keyless demo."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import click

#: (package holding the file, its path there, where it goes in the new folder)
STARTER_FILES = (
    ("cascade.config", "cascade.toml", "cascade.toml"),
    ("cascade.config", "pipelines/ticket-triage.toml", "pipelines/ticket-triage.toml"),
    ("cascade.config", "schemas/ticket.json", "schemas/ticket.json"),
    ("cascade.examples", "scenario.toml", "scenario.toml"),
    ("cascade.examples", "tickets.jsonl", "tickets.jsonl"),
)


def write_starter(directory: Path, force: bool = False) -> list[Path]:
    """Copy the starter files into `directory`; FileExistsError (nothing written) when one exists and not `force`."""
    targets = [(package, source, directory / target) for package, source, target in STARTER_FILES]
    existing = [target for _, _, target in targets if target.exists()]
    if existing and not force:
        raise FileExistsError(", ".join(str(p) for p in existing))
    for package, source, target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(resources.files(package).joinpath(source).read_bytes())
    return [target for _, _, target in targets]


@click.command("init")
@click.argument("directory", default=".", type=click.Path(file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite starter files that already exist.")
def init(directory: Path, force: bool) -> None:
    """Write a starter configuration: cascade.toml, a pipeline, its schema, a simulator scenario, example input.

    Example: cascade init my-cascade && cd my-cascade && cascade sim exec --scenario scenario.toml --
    cascade-submit tickets.jsonl --pipeline ticket-triage --wait --out results.jsonl
    """
    try:
        written = write_starter(directory, force)
    except FileExistsError as e:
        raise click.ClickException(f"not overwriting existing files: {e} (give --force to replace them)") from None
    except OSError as e:
        raise click.ClickException(f"cannot write into {directory}: {e.strerror or e}") from None
    for path in written:
        click.echo(f"wrote {path}", err=True)
    where = "" if directory == Path(".") else f"cd {directory} && "
    click.echo("\nTry it against the bundled simulator (no keys, no servers):\n"
               f"  {where}cascade sim exec --scenario scenario.toml -- "
               "cascade-submit tickets.jsonl --pipeline ticket-triage --wait --out results.jsonl", err=True)
