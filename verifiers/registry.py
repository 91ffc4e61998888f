"""Verifier names to classes, and building one verifier from its config table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pydantic import ValidationError

from cascade.errors import ConfigError
from cascade.verifiers.base import OptionError, Verifier
from cascade.verifiers.chain import VerifierChain
from cascade.verifiers.choices import ChoicesVerifier
from cascade.verifiers.custom import CustomVerifier
from cascade.verifiers.json_schema import JsonVerifier
from cascade.verifiers.judge import JudgeVerifier
from cascade.verifiers.length import LengthVerifier
from cascade.verifiers.logprob import LogprobVerifier
from cascade.verifiers.refusal import RefusalVerifier
from cascade.verifiers.regex import RegexVerifier
from cascade.verifiers.self_consistency import SelfConsistencyVerifier
from cascade.verifiers.truncation import TruncationVerifier

_CLASSES: tuple[type[Verifier], ...] = (
    ChoicesVerifier, CustomVerifier, JsonVerifier, JudgeVerifier, LengthVerifier, LogprobVerifier, RefusalVerifier,
    RegexVerifier, SelfConsistencyVerifier, TruncationVerifier,
)


def registry() -> dict[str, type[Verifier]]:
    """A fresh name -> class mapping of every verifier (callers may not mutate a shared one)."""
    return {cls.name: cls for cls in _CLASSES}


#: Read-only view for lookups; `registry()` gives a dict to extend (tests, plugins) without touching this one.
REGISTRY: Mapping[str, type[Verifier]] = MappingProxyType(registry())


def known_verifiers() -> list[str]:
    """Names a pipeline may use, sorted."""
    return sorted(registry())


def build_verifier(spec: Mapping[str, Any], config_dir: Path, where: str) -> Verifier:
    """Build and eagerly validate one verifier from a table like {name = "json", schema = "ticket.json"}.

    `where` prefixes every ConfigError, e.g. "config/pipelines/triage.toml: verifiers.cheap[1]".
    """
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: a verifier is a table like {{ name = \"json\" }}")
    name = spec.get("name")
    if name is None or name == "":
        raise ConfigError(f"{where}.name: missing verifier name")
    classes = registry()
    cls = classes.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ConfigError(f"{where}.name: unknown verifier {name!r} (known: {', '.join(sorted(classes))})")
    raw = {key: value for key, value in spec.items() if key != "name"}
    try:
        options = cls.Options.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_option_problem(e, where, cls.name)) from e
    try:
        return cls(options, config_dir)
    except OptionError as e:
        raise ConfigError(f"{where}.{e.key}: {e.problem}") from e


def _option_problem(error: ValidationError, where: str, name: str) -> str:
    """The message for the most useful pydantic error: a misspelt key beats the missing one it was meant to be."""
    errors = sorted(error.errors(), key=lambda e: e["type"] != "extra_forbidden")
    first = errors[0]
    key = _key(first["loc"])
    if first["type"] == "extra_forbidden":
        return f"{where}.{key}: unknown option for verifier '{name}'"
    if first["type"] == "missing":
        return f"{where}.{key}: required option for verifier '{name}' is missing"
    return f"{where}.{key}: {first['msg']}"


def _key(loc: tuple[int | str, ...]) -> str:
    """("flags", 0) -> "flags[0]"; nested dict keys joined with dots."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def build_chain(specs: Sequence[Mapping[str, Any]], config_dir: Path, where: str) -> VerifierChain:
    """The chain of `specs` (one tier's list in a pipeline); errors name `where[i]` and the option."""
    return VerifierChain([build_verifier(spec, config_dir, f"{where}[{i}]") for i, spec in enumerate(specs)])
