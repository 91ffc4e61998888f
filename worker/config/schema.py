"""The shape of config/cascade.toml and config/pipelines/*.toml, with defaults and reasons."""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cascade.worker.config.urls import http_url, redis_url


class Frozen(BaseModel):
    """Base: immutable, and an unknown key is an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


DEFAULT_NAMESPACE = "cascade"


class RedisConfig(Frozen):
    """Where the queues and the batch records live."""

    url: str = ""                       # empty: embedded mode (in-process fakeredis, no server)
    socket_timeout_s: float = Field(30.0, gt=0)   # a command on a dead connection fails instead of hanging

    @field_validator("url")
    @classmethod
    def _has_scheme(cls, value: str) -> str:
        return redis_url(value)
    namespace: str = DEFAULT_NAMESPACE  # prefix of every key Cascade writes (and of the tier queues when not the
                                        # default), so deployments can share a Redis
    visibility_timeout_s: int = Field(3600, ge=1)  # far above the longest call: a slow job is not redelivered
    retention_days: float = Field(7.0, ge=0)       # a finished batch's keys expire this long after; 0 keeps them


class EngineConfig(Frozen):
    """How a worker treats a failing provider, a failing Redis and a lost message."""

    max_retries: int = Field(6, ge=0)   # quick retries of a transient error (429, 5xx, timeout); then every backoff_max_s
    backoff_base_s: float = Field(0.5, ge=0)
    backoff_max_s: float = Field(20.0, ge=0)  # capped: a thread never sleeps long between two tries
    transient_horizon_s: float = Field(21600.0, gt=0)  # 6 h: a job fails for a transient cause only after this
    circuit_failures: int = Field(5, ge=1)    # consecutive transient failures on a tier that open its circuit
    circuit_open_s: float = Field(1.0, gt=0)  # first open period; each failed probe doubles it
    circuit_max_open_s: float = Field(60.0, gt=0)
    lease_s: float = Field(15.0, gt=0)        # a killed worker's jobs are published again this long after its last heartbeat
    heartbeat_s: float = Field(2.0, gt=0)     # how often a worker renews its leases
    sweep_s: float = Field(2.0, gt=0)         # how often each worker looks for jobs whose message is gone
    max_deliveries: int = Field(10, ge=1)     # deliveries of one step without a recorded attempt before it is poison
    store_retries: int = Field(5, ge=0)       # tries of a write that Redis refuses (OOM, script error) before dead-letter


class ProducerConfig(Frozen):
    """How input is fed to the first tier."""

    high_water: int = Field(2000, ge=1)   # messages on the first queue before the producer waits
    chunk_size: int = Field(500, ge=1)    # rows registered and published per round trip
    max_row_bytes: int = Field(65536, ge=64)  # a row larger than this is rejected, not sent to a model


class LedgerConfig(Frozen):
    """Where result records, batches and their figures are kept for good."""

    url: str = ""                        # empty: SQLite file cascade-ledger.db beside cascade.toml; postgresql://...
    results_high_water: int = Field(50_000, ge=100)  # records waiting in Redis for the ledger before producers wait
    claim_idle_s: float = Field(30.0, gt=0)  # a writer's unacked records are taken over this long after it died


class Price(Frozen):
    """USD per million tokens for one model."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cached_input: float | None = Field(None, ge=0)   # None: same as input
    batch_discount: float = Field(0.0, ge=0, le=1)   # share off when the tier is billed at batch rates
    as_of: str = ""
    source: str = ""


class Tier(Frozen):
    """One model endpoint with its own queue and limits."""

    name: str = ""
    provider: Literal["openai", "anthropic"]
    model: str
    base_url: str = ""                  # empty: the provider's public endpoint
    api_key_env: str = ""               # empty: OPENAI_API_KEY / ANTHROPIC_API_KEY by provider
    max_tokens: int = Field(512, ge=1)
    temperature: float = Field(0.0, ge=0, le=2)
    timeout_s: float = Field(60.0, gt=0)
    concurrency: int = Field(4, ge=1)   # threads per worker process for this tier's queue
    context_window: int = Field(128000, ge=1)
    rpm: int = Field(0, ge=0)           # provider requests/minute for the whole cluster; 0 = no limit
    tpm: int = Field(0, ge=0)           # provider tokens/minute; 0 = no limit
    max_in_flight: int = Field(0, ge=0)  # calls in flight for the whole cluster (provider concurrency cap); 0 = none
    mode: Literal["live", "batch"] = "live"   # batch: calls go through the provider's Batch API (half price, hours)
    batch_max_requests: int = Field(0, ge=0)   # requests per provider batch; 0: the provider's cap
    batch_max_age_s: float = Field(60.0, gt=0)   # a provider batch is sent once its oldest job waited this long
    batch_poll_s: float = Field(30.0, gt=0)     # how often open provider batches are polled
    queue: str = ""                     # empty: tier.<name>

    @model_validator(mode="before")
    @classmethod
    def _no_batch_pricing(cls, data: Any) -> Any:
        if isinstance(data, dict) and "batch_pricing" in data:
            raise ValueError('batch_pricing was removed: it billed live calls at the batch price. Set mode = "batch" '
                             "to send the tier's calls through the provider's Batch API at that price")
        return data

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        return http_url(value)

    @property
    def batched(self) -> bool:
        """Whether the tier's calls go through the provider's Batch API (billed at the batch discount)."""
        return self.mode == "batch"

    @property
    def queue_name(self) -> str:
        """The Celery queue this tier's workers consume."""
        return self.queue or f"tier.{self.name}"

    @property
    def key_env(self) -> str:
        """The environment variable that holds this tier's API key."""
        return self.api_key_env or {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}[self.provider]


class Prompt(Frozen):
    """System and user templates with {field} placeholders."""

    system: str = ""
    user: str

    @field_validator("system", "user")
    @classmethod
    def _valid_template(cls, value: str) -> str:
        template_fields(value)
        return value

    @property
    def fields(self) -> tuple[str, ...]:
        """Every job field the templates use, in order of first use."""
        seen: dict[str, None] = {}
        for text in (self.system, self.user):
            for name in template_fields(text):
                seen.setdefault(name, None)
        return tuple(seen)


def template_fields(text: str) -> list[str]:
    """The {field} names in a template; raises ValueError on a malformed or non-simple placeholder."""
    names = []
    for _, name, spec, _ in string.Formatter().parse(text):
        if name is None:
            continue
        if not name.isidentifier():
            raise ValueError(f"placeholder {{{name}}} is not a plain field name (write {{{{ and }}}} for braces)")
        if spec and ("{" in spec or "}" in spec):
            raise ValueError(f"placeholder {{{name}:{spec}}}: a format spec cannot name another field")
        try:
            format("", spec)                        # fields render as text: the spec must format a string
        except ValueError as e:
            raise ValueError(f"placeholder {{{name}:{spec}}}: bad format spec for text ({e})") from None
        names.append(name)
    return names


class Pipeline(Frozen):
    """One task definition: prompt, output format, ladder of tiers, verifiers per tier."""

    name: str
    description: str = ""
    prompt: Prompt
    output: Literal["text", "json", "label"] = "text"
    labels: tuple[str, ...] = ()
    ladder: tuple[str, ...] = Field(min_length=1)
    on_last_failure: Literal["accept_flagged", "fail"] = "accept_flagged"
    tags: tuple[str, ...] = ()           # input fields copied into each result (team, feature...): `stats --by`
    verifiers: dict[str, tuple[dict[str, Any], ...]] = Field(default_factory=dict)  # "default" or a tier name
    source: Path = Path(".")            # the file it came from (set by the loader)
    declared_ladder: tuple[str, ...] = ()   # the file's ladder when a calibration skips tiers (set by the loader)

    @field_validator("labels")
    @classmethod
    def _distinct_labels(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not label.strip() for label in value):
            raise ValueError("a label must not be empty")
        twice = sorted({label for label in value if value.count(label) > 1})
        if twice:
            raise ValueError(f"listed twice: {', '.join(repr(t) for t in twice)}")
        return value

    def verifier_specs(self, tier: str) -> tuple[dict[str, Any], ...]:
        """The verifier chain for a tier: its own list, else the pipeline's default list."""
        return self.verifiers.get(tier, self.verifiers.get("default", ()))

    @property
    def full_ladder(self) -> tuple[str, ...]:
        """The ladder as the file declares it, tiers a calibration skips included."""
        return self.declared_ladder or self.ladder

    def next_tier(self, index: int) -> str | None:
        """The tier after ladder position `index`, or None at the last."""
        return self.ladder[index + 1] if index + 1 < len(self.ladder) else None


class Schedule(Frozen):
    """A batch submitted on a cron schedule by `cascade beat` (one instance) or `cascade schedules run`."""

    name: str = ""
    pipeline: str
    kind: Literal["batch", "audit"] = "batch"  # audit: `cascade audit` of `input` (a labelled recorded set) instead
    input: str                            # a path; {date} is the run date (YYYY-MM-DD), relative to cascade.toml
    split: str = ""                       # audit only: the rows of this split
    cron: str = ""                        # five fields: minute hour day-of-month month day-of-week (once a day at most)
    every_s: int | None = Field(None, ge=1)   # instead of cron: every N seconds, one run per clock-aligned slot (tests)
    timezone: str = "UTC"                 # IANA name: cron fields and {date} are read in it
    budget_usd: float = Field(0.0, ge=0)  # 0: no budget
    export: str = ""                      # optional results file ({date}, {batch}; .jsonl or .csv)

    @field_validator("input")
    @classmethod
    def _only_date_placeholder(cls, value: str) -> str:
        for name in template_fields(value):
            if name != "date":
                raise ValueError(f"placeholder {{{name}}}: only {{date}} is known")
        return value

    @field_validator("export")
    @classmethod
    def _export_placeholders(cls, value: str) -> str:
        for name in template_fields(value):
            if name not in ("date", "batch"):
                raise ValueError(f"placeholder {{{name}}}: only {{date}} and {{batch}} are known")
        return value

    @field_validator("export")
    @classmethod
    def _export_format(cls, value: str) -> str:
        if value and not value.lower().endswith((".jsonl", ".csv")):
            raise ValueError(f"'{value}' must end in .jsonl or .csv (the format of the results file)")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from cascade.ops.cron import zone

        zone(value)
        return value

    @model_validator(mode="after")
    def _one_timing(self) -> Schedule:
        from cascade.ops.cron import CronError, fires_per_day, parse_cron

        if bool(self.cron) == (self.every_s is not None):
            raise ValueError("give exactly one of cron (e.g. \"0 2 * * *\") and every_s")
        if self.cron:
            try:
                cron = parse_cron(self.cron, self.timezone)
            except CronError as e:
                raise ValueError(f"cron: {e}") from None
            if fires_per_day(cron) > 1:
                raise ValueError(f"cron: '{self.cron}' fires {fires_per_day(cron)} times a day, but a scheduled "
                                 "run is one per date (its batch id is NAME-DATE): give one minute and one hour")
        fields = template_fields(self.export)
        if self.export and "batch" not in fields and (self.every_s is not None or "date" not in fields):
            needed = "{batch}" if self.every_s is not None else "{date} or {batch}"
            raise ValueError(f"export: '{self.export}' would be overwritten by the next run: put {needed} in it "
                             f"(e.g. out/{self.name or 'results'}-{needed.split()[0]}.jsonl)")
        return self


class AlertsConfig(Frozen):
    """When the cascade's own figures page someone, and where the alert goes."""

    escalation_points: float = Field(5.0, gt=0)    # |rolling - baseline| escalation rate, in points, that fires
    clear_points: float = Field(3.0, ge=0)         # hysteresis: it clears once back within this many points
    window_attempts: int = Field(2000, ge=10)      # rolling window of recent attempts per pipeline and tier
    min_sample: int = Field(500, ge=1)             # no verdict on fewer attempts than this
    baseline_batches: int = Field(5, ge=1)         # baseline from the ledger's last N finished batches when unset
    baselines: dict[str, float] = Field(default_factory=dict)   # "pipeline.tier" -> escalation rate 0..1
    cost_share: float = Field(0.60, gt=0)          # cascade cost / last-tier-alone cost over the window that fires
    cost_clear_share: float | None = Field(None, gt=0)  # hysteresis: clears once back below this (None: share - 0.05)
    agreement_points: float = Field(5.0, gt=0)     # shadow agreement drop below its baseline, in points
    agreement_baseline: float = Field(0.0, ge=0, le=1)  # 0: taken from the first min_shadow pairs
    min_shadow: int = Field(100, ge=1)             # shadow pairs before agreement is judged
    shadow_window: int = Field(500, ge=1)          # rolling window of recent shadow pairs per pipeline
    webhook_url: str = ""                          # POST JSON here (CASCADE_ALERT_WEBHOOK_URL sets it)
    webhook_secret_env: str = ""                   # variable holding an HMAC-SHA256 key: X-Cascade-Signature
    webhook_retries: int = Field(5, ge=0)          # tries after the first on a 5xx or connection error, backing off

    @field_validator("webhook_url")
    @classmethod
    def _http(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https:// (the URL is not shown: it may hold a token)")
        return value

    @field_validator("baselines")
    @classmethod
    def _rates(cls, value: dict[str, float]) -> dict[str, float]:
        for key, rate in value.items():
            if "." not in key:
                raise ValueError(f"'{key}': name a pipeline and a tier, as \"pipeline.tier\"")
            if not 0 <= rate <= 1:
                raise ValueError(f"'{key}': an escalation rate between 0 and 1 (got {rate:g})")
        return value

    @model_validator(mode="after")
    def _hysteresis(self) -> AlertsConfig:
        if self.clear_points > min(self.escalation_points, self.agreement_points):
            raise ValueError(f"clear_points ({self.clear_points:g}) must not exceed escalation_points "
                             f"({self.escalation_points:g}) or agreement_points ({self.agreement_points:g})")
        if self.cost_clear > self.cost_share:
            raise ValueError(f"cost_clear_share ({self.cost_clear:g}) must not exceed cost_share ({self.cost_share:g})")
        return self

    @property
    def cost_clear(self) -> float:
        """The cost share below which a cost creep alert clears."""
        return self.cost_clear_share if self.cost_clear_share is not None else round(self.cost_share - 0.05, 6)


class ShadowConfig(Frozen):
    """Re-run a share of answers accepted below the last tier on the last tier, off the critical path."""

    rate: float = Field(0.0, ge=0, le=1)           # 0.02: 2% of early accepts; 0 turns shadowing off
    budget_usd: float = Field(0.0, ge=0)           # per batch; 0: no cap beyond rate
    queue: str = ""                                # empty: shadow.<last tier>


class MetricsConfig(Frozen):
    """Prometheus metrics served by each worker process."""

    port: int = Field(0, ge=0, le=65535)           # 0: off; `cascade worker --metrics-port` overrides
    bind: str = "127.0.0.1"
    task_events: bool = False                      # Celery task events for Flower (`cascade worker -E`)
    log_format: Literal["text", "json"] = "text"


class Settings(Frozen):
    """Everything a process needs, parsed once."""

    redis: RedisConfig = RedisConfig()
    engine: EngineConfig = EngineConfig()
    producer: ProducerConfig = ProducerConfig()
    ledger: LedgerConfig = LedgerConfig()
    tiers: dict[str, Tier] = Field(default_factory=dict)
    prices: dict[str, Price] = Field(default_factory=dict)
    pipelines: dict[str, Pipeline] = Field(default_factory=dict)
    schedules: dict[str, Schedule] = Field(default_factory=dict)
    alerts: AlertsConfig = AlertsConfig()
    shadow: ShadowConfig = ShadowConfig()
    metrics: MetricsConfig = MetricsConfig()
    config_dir: Path = Path("config")
    provider_base_url: str = ""         # CASCADE_PROVIDER_BASE_URL: every tier to one endpoint (the simulator)

    @field_validator("provider_base_url")
    @classmethod
    def _provider_url(cls, value: str) -> str:
        return http_url(value)

    @property
    def embedded(self) -> bool:
        """True when no Redis URL is configured: everything runs in this process."""
        return not self.redis.url

    def price(self, tier: Tier) -> Price:
        """The price of a tier's model (validated to exist at load time)."""
        return self.prices[tier.model]

    def pipeline(self, name: str) -> Pipeline:
        """A pipeline by name, or a ConfigError listing the known ones."""
        from cascade.errors import ConfigError

        try:
            return self.pipelines[name]
        except KeyError:
            known = ", ".join(sorted(self.pipelines)) or "none"
            raise ConfigError(f"unknown pipeline '{name}' (in {self.config_dir / 'pipelines'}: {known})") from None
