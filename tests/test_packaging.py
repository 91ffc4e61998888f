"""The distribution stands on its own: one import name, a starter set, the demo from an empty folder."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parent.parent
BARE = ("worker", "producer", "verifiers", "simulator", "tuning", "cli", "config", "examples")
IGNORED = {".venv", ".git", "build", "dist", "out", ".pytest_cache", "__pycache__"}


def pyproject() -> dict:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def source_files() -> list[Path]:
    return [p for p in ROOT.rglob("*.py") if not IGNORED & set(p.relative_to(ROOT).parts)]


def test_every_package_folder_is_listed_under_its_cascade_name():
    setuptools = pyproject()["tool"]["setuptools"]
    expected = set()
    for name, folder in setuptools["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder)
            if not IGNORED & set(relative.parts):
                expected.add(".".join([name, *relative.parts]))
    listed = set(setuptools["packages"])
    assert expected <= listed
    # the rest are data folders (no __init__.py), each shipped by its package-data entry
    assert listed - expected <= set(setuptools["package-data"])


def test_no_module_imports_a_bare_top_level_name():
    pattern = re.compile(rf"^\s*(from|import)\s+({'|'.join(BARE)})(\.|\s|$)", re.MULTILINE)
    offenders = [f"{p.relative_to(ROOT)}: {m.group(0).strip()}" for p in source_files()
                 for m in pattern.finditer(p.read_text())]
    assert offenders == []


def _copy_source(target: Path) -> Path:
    """The project as a fresh clone would hold it (no venv, no build output)."""
    shutil.copytree(ROOT, target, ignore=lambda d, names: [n for n in names if n in IGNORED or n.endswith(
        ".egg-info") or n.startswith("demo-results")])
    return target


def _run(args: list, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    return result


def test_the_installed_wheel_runs_the_demo_from_an_empty_folder(tmp_path):
    # Given the wheel built from the sources, installed (not editable) with its dependencies into a new venv
    source = _copy_source(tmp_path / "src")
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp_path / "dist", source], tmp_path)
    assert built.returncode == 0, built.stderr[-3000:]
    [wheel] = (tmp_path / "dist").glob("cascade_batch-*.whl")
    venv = tmp_path / "venv"
    assert _run([sys.executable, "-m", "venv", venv], tmp_path).returncode == 0
    installed = _run([venv / "bin" / "pip", "install", "-q", "--disable-pip-version-check", wheel], tmp_path)
    assert installed.returncode == 0, installed.stderr[-3000:]
    # Then site-packages holds one name of ours: cascade (and its dist-info)
    [record] = (venv / "lib").glob("python3.*/site-packages/cascade_batch-*.dist-info/RECORD")
    top = {line.split(",")[0].split("/")[0] for line in record.read_text().splitlines()}
    assert {t for t in top if not t.endswith(".dist-info") and t != ".."} == {"cascade"}

    # When `cascade init` runs in an empty folder, away from any checkout
    work = tmp_path / "empty"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CASCADE_", "OPENAI_", "ANTHROPIC_"))}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    init = _run(["cascade", "init"], work, env)
    assert init.returncode == 0, init.stderr
    assert {str(p.relative_to(work)) for p in work.rglob("*") if p.is_file()} == {
        "cascade.toml", "pipelines/ticket-triage.toml", "schemas/ticket.json", "scenario.toml", "tickets.jsonl"}
    again = _run(["cascade", "init"], work, env)
    assert again.returncode == 1
    assert "not overwriting existing files: cascade.toml" in again.stderr and "--force" in again.stderr

    # Then the demo runs there against the simulator, one record per input row
    demo = _run(["cascade", "sim", "exec", "--scenario", "scenario.toml", "--", "cascade-submit", "tickets.jsonl",
                 "--pipeline", "ticket-triage", "--wait", "--out", "results.jsonl", "--no-progress"], work, env)
    assert demo.returncode == 0, demo.stderr[-3000:]
    rows = [orjson.loads(line) for line in (work / "tickets.jsonl").read_bytes().splitlines() if line.strip()]
    records = [orjson.loads(line) for line in (work / "results.jsonl").read_bytes().splitlines()]
    assert sorted(r["id"] for r in records) == sorted(r["id"] for r in rows)
    assert "savings" in demo.stderr
    where = _run([venv / "bin" / "python", "-c", "import cascade; print(cascade.__file__)"], work, env)
    assert where.stdout.strip().startswith(str(venv)), where.stdout


def test_without_a_config_every_command_says_how_to_get_one(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASCADE_")}
    result = _run([Path(sys.executable).parent / "cascade", "stats"], tmp_path, env)
    assert result.returncode == 1
    assert result.stderr.strip() == ("Error: no cascade.toml in this folder or in config/: run `cascade init` to "
                                     "write a starter configuration here, or set --config or CASCADE_CONFIG")


@pytest.mark.parametrize("force", [False, True])
def test_init_writes_nothing_over_an_existing_file_unless_forced(tmp_path, force):
    from click.testing import CliRunner

    from cascade.cli.main import cascade

    (tmp_path / "cascade.toml").write_text("# mine\n")
    result = CliRunner().invoke(cascade, ["init", str(tmp_path)] + (["--force"] if force else []))
    if force:
        assert result.exit_code == 0
        assert (tmp_path / "cascade.toml").read_bytes() == (ROOT / "config" / "cascade.toml").read_bytes()
    else:
        assert result.exit_code == 1
        assert (tmp_path / "cascade.toml").read_text() == "# mine\n"
        assert not (tmp_path / "pipelines").exists()
