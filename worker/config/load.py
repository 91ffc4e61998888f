"""Read the TOML files, apply CASCADE_* overrides, validate, and cross-check references.

Precedence: command-line flag (passed in as `overrides`), then CASCADE_* environment, then file.
Every error is a ConfigError that names the file (or variable) and the key.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cascade.errors import ConfigError
from cascade.worker.config.schema import DEFAULT_NAMESPACE, Pipeline, Settings, Tier

#: where a command looks for the config when neither --config nor CASCADE_CONFIG names one:
#: `cascade init`'s layout (cascade.toml in the current folder), then a checkout's (config/cascade.toml)
DEFAULT_CONFIGS = (Path("cascade.toml"), Path("config/cascade.toml"))

#: CASCADE_* variables that set a top-level key: variable -> (section, key)
ENV_KEYS = {
    "CASCADE_REDIS_URL": ("redis", "url"),
    "CASCADE_NAMESPACE": ("redis", "namespace"),
    "CASCADE_VISIBILITY_TIMEOUT_S": ("redis", "visibility_timeout_s"),
    "CASCADE_HIGH_WATER": ("producer", "high_water"),
    "CASCADE_MAX_RETRIES": ("engine", "max_retries"),
    "CASCADE_LEDGER_URL": ("ledger", "url"),
    "CASCADE_ALERT_WEBHOOK_URL": ("alerts", "webhook_url"),
    "CASCADE_METRICS_PORT": ("metrics", "port"),
    "CASCADE_METRICS_BIND": ("metrics", "bind"),
    "CASCADE_LOG_FORMAT": ("metrics", "log_format"),
}
TIER_ENV_PREFIX = "CASCADE_TIER_"   # CASCADE_TIER_<NAME>_<KEY>=value, e.g. CASCADE_TIER_CHEAP_CONCURRENCY=8


def load_settings(
    path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    check_verifiers: bool = True,
) -> Settings:
    """Load cascade.toml and every pipeline beside it into one validated Settings.

    `check_verifiers=False` leaves the verifier chains unbuilt (and their calibration files unread):
    `cascade calibrate` fits a pipeline whose calibration file does not exist yet.
    """
    environ = os.environ if environ is None else environ
    path = config_path(path, environ)
    raw = _read_toml(path)
    from_env = _apply_env(raw, environ)
    for dotted, value in (overrides or {}).items():
        if value is not None:
            section, key = dotted.split(".", 1)
            raw.setdefault(section, {})[key] = value
            from_env[(section, key)] = f"option --{dotted.replace('.', '-').replace('_', '-')}"
    for section in ("tiers", "schedules"):
        for name, entry in raw.get(section, {}).items():
            if isinstance(entry, dict):
                entry["name"] = name
    _namespace_queues(raw)
    config_dir = path.parent
    raw["config_dir"] = config_dir
    raw["provider_base_url"] = environ.get("CASCADE_PROVIDER_BASE_URL", "")
    from_env[("provider_base_url",)] = "environment CASCADE_PROVIDER_BASE_URL"
    raw["pipelines"] = _load_pipelines(config_dir / "pipelines")
    settings = _validate(Settings, raw, str(path), from_env)
    _check_references(settings, str(path), check_verifiers)
    return settings


def _namespace_queues(raw: dict[str, Any]) -> None:
    """A namespace other than the default names its tiers' queues too (`NS.tier.NAME`): two deployments sharing
    a Redis must not consume each other's messages. The default keeps `tier.NAME`, so queues in flight stay."""
    redis = raw.get("redis", {})
    namespace = redis.get("namespace", DEFAULT_NAMESPACE) if isinstance(redis, dict) else DEFAULT_NAMESPACE
    if namespace == DEFAULT_NAMESPACE or not isinstance(namespace, str):
        return
    for name, entry in raw.get("tiers", {}).items():
        if isinstance(entry, dict) and not entry.get("queue"):
            entry["queue"] = f"{namespace}.tier.{name}"


def config_path(path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """The cascade.toml to read: `path`, else $CASCADE_CONFIG, else the first of DEFAULT_CONFIGS that exists."""
    environ = os.environ if environ is None else environ
    given = path or environ.get("CASCADE_CONFIG")
    if given:
        return Path(given)
    found = next((p for p in DEFAULT_CONFIGS if p.is_file()), None)
    if found is None:
        raise ConfigError("no cascade.toml in this folder or in config/: run `cascade init` to write a starter "
                          "configuration here, or set --config or CASCADE_CONFIG")
    return found


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found (set --config or CASCADE_CONFIG)") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None


def _apply_env(raw: dict[str, Any], environ: Mapping[str, str]) -> dict[tuple[str, ...], str]:
    """Put CASCADE_* values into the raw config; return which key each variable set, as error messages name
    it ("environment CASCADE_REDIS_URL")."""
    from_env: dict[tuple[str, ...], str] = {}
    for var, (section, key) in ENV_KEYS.items():
        if var in environ:
            raw.setdefault(section, {})[key] = environ[var]
            from_env[(section, key)] = f"environment {var}"
    tiers = raw.get("tiers", {})
    # Longest name first: with tiers `cheap` and `cheap_fast`, CASCADE_TIER_CHEAP_FAST_CONCURRENCY is
    # `concurrency` of `cheap_fast`, never `fast_concurrency` of `cheap`.
    by_env_name = sorted(((name.upper().replace("-", "_"), name) for name in tiers), key=lambda p: -len(p[0]))
    for var, value in environ.items():
        if not var.startswith(TIER_ENV_PREFIX):
            continue
        rest = var[len(TIER_ENV_PREFIX):]
        matches = [(env_name, n) for env_name, n in by_env_name if rest.startswith(env_name + "_")]
        if not matches:
            raise ConfigError(f"environment {var}: no tier matches (tiers: {', '.join(sorted(tiers))})")
        env_name, name = next(((e, n) for e, n in matches if rest[len(e) + 1:].lower() in Tier.model_fields),
                              matches[0])
        key = rest[len(env_name) + 1:].lower()
        if key not in Tier.model_fields or key == "name":
            raise ConfigError(f"environment {var}: unknown key '{key}' for tier '{name}'")
        tiers[name][key] = value
        from_env[("tiers", name, key)] = f"environment {var}"
    return from_env


def _load_pipelines(folder: Path) -> dict[str, Pipeline]:
    pipelines = {}
    for file in sorted(folder.glob("*.toml")):
        raw = _read_toml(file)
        raw.setdefault("name", file.stem)
        raw["source"] = file
        pipeline = _validate(Pipeline, raw, str(file), {})
        if pipeline.name != file.stem:
            raise ConfigError(f"{file}: name: '{pipeline.name}' differs from the file name '{file.stem}'")
        pipelines[pipeline.name] = _apply_skips(pipeline, folder.parent)
    return pipelines


def _apply_skips(pipeline: Pipeline, config_dir: Path) -> Pipeline:
    """The pipeline without the tiers its calibration files skip (`cascade calibrate` decides; never the last)."""
    from cascade.verifiers.calibration import skipped_tiers

    files = {spec["calibration"] for specs in pipeline.verifiers.values() for spec in specs
             if isinstance(spec.get("calibration"), str)}
    skip = {t for f in sorted(files) for t in skipped_tiers(config_dir / f, pipeline.name)}
    ladder = tuple(t for t in pipeline.ladder[:-1] if t not in skip) + pipeline.ladder[-1:]
    if ladder == pipeline.ladder:
        return pipeline
    return pipeline.model_copy(update={"ladder": ladder, "declared_ladder": pipeline.ladder})


def _validate(model: type, raw: dict[str, Any], where: str, from_env: Mapping[tuple[str, ...], str]):
    """The validated model, or a ConfigError naming the file and key (or the variable or option that set it)."""
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        loc = tuple(str(part) for part in first["loc"])
        source = next((v for key, v in from_env.items() if loc[:len(key)] == key), None)
        if source is not None:
            raise ConfigError(f"{source}: {_problem(first)}") from None
        raise ConfigError(f"{where}: {_dotted(first['loc'])}: {_problem(first)}") from None


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _problem(error: Mapping[str, Any]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "missing required key"
    if kind == "value_error":
        return error["msg"].removeprefix("Value error, ")
    return error["msg"]


def _check_references(settings: Settings, where: str, check_verifiers: bool = True) -> None:
    from cascade.verifiers.registry import build_verifier

    for name, tier in settings.tiers.items():
        if tier.model not in settings.prices:
            raise ConfigError(f"{where}: tiers.{name}.model: no price for '{tier.model}' in [prices]")
    known = ", ".join(sorted(settings.tiers))
    for pipeline in settings.pipelines.values():
        file = pipeline.source
        for i, tier in enumerate(pipeline.full_ladder):
            if tier not in settings.tiers:
                raise ConfigError(f"{file}: ladder[{i}]: unknown tier '{tier}' ({where} has: {known})")
        if pipeline.output == "label" and not pipeline.labels:
            raise ConfigError(f"{file}: labels: a label pipeline needs its list of labels")
        for key, specs in pipeline.verifiers.items():
            if key != "default" and key not in pipeline.full_ladder:
                raise ConfigError(f"{file}: verifiers.{key}: '{key}' is neither 'default' nor a tier of the ladder")
            for i, spec in enumerate(specs if check_verifiers else ()):
                build_verifier(spec, settings.config_dir, f"{file}: verifiers.{key}[{i}]")
        if check_verifiers:
            _check_verifier_tiers(settings, pipeline)
    for key in settings.alerts.baselines:
        name, _, tier = key.rpartition(".")
        pipeline = settings.pipelines.get(name)
        if pipeline is None or tier not in pipeline.full_ladder:
            raise ConfigError(f"{where}: alerts.baselines.\"{key}\": no pipeline '{name}' with a tier '{tier}' "
                              f"(pipelines: {', '.join(sorted(settings.pipelines)) or 'none'})")
    for name, schedule in settings.schedules.items():
        if schedule.pipeline not in settings.pipelines:
            raise ConfigError(f"{where}: schedules.{name}.pipeline: unknown pipeline '{schedule.pipeline}' "
                              f"(known: {', '.join(sorted(settings.pipelines)) or 'none'})")


def _check_verifier_tiers(settings: Settings, pipeline: Pipeline) -> None:
    """Each verifier fits the tiers it runs on (a logprob check needs a provider that gives logprobs)."""
    from cascade.verifiers.base import TierFacts
    from cascade.verifiers.registry import build_verifier
    from cascade.worker.providers import PROVIDERS

    for tier_name in pipeline.ladder:
        tier = settings.tiers[tier_name]
        key = tier_name if tier_name in pipeline.verifiers else "default"
        facts = TierFacts(tier_name, tier.provider, bool(getattr(PROVIDERS.get(tier.provider), "supports_logprobs",
                                                                      False)), tuple(settings.tiers))
        for i, spec in enumerate(pipeline.verifier_specs(tier_name)):
            where = f"{pipeline.source}: verifiers.{key}[{i}]"
            verifier = build_verifier(spec, settings.config_dir, where)
            problem = verifier.check_tier(facts)
            if problem:
                raise ConfigError(f"{where}: {problem}")
            samples = verifier.options.samples if verifier.name == "self_consistency" else 1
            if tier.batched and tier.provider == "anthropic" and samples > 1:
                raise ConfigError(f"{where}: '{verifier.name}' samples {samples} answers, and a message batch "
                                  f"request has no n: give tier '{tier_name}' mode = \"live\", or drop the check")
