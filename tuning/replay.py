"""Replay a pipeline over recorded responses: the real engine (embedded) decides, the recording answers.

Every job is a recorded row whose messages fill the pipeline's `{system}` / `{user}` template. The
embedded engine runs the pipeline's exact chain and ladder with replay providers, so the decisions
are the ones production would make on those answers; the report adds what only a recording knows:
accuracy, the last tier alone, and the oracle that stops at the first correct tier.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from cascade.errors import ConfigError
from cascade.producer.reader import RawRow
from cascade.producer.report import summarize
from cascade.producer.submit import Submitter
from cascade.recorded import RecordedRow, RecordedSet
from cascade.verifiers import build_chain
from cascade.worker.config.schema import Pipeline, RedisConfig, Settings, Tier
from cascade.worker.pricing import cost_nanos, to_usd
from cascade.worker.providers.replay import ReplayProvider
from cascade.worker.routing import routed_share
from cascade.worker.runtime import ProviderPool
from cascade.worker.store import ResultStream

#: the job fields a recorded row provides to a pipeline's prompt template
ROW_FIELDS = ("system", "user")
#: tier limits that mean nothing against a recording (and would only slow the replay down)
_LIMITS = ("rpm", "tpm", "max_in_flight")


@dataclass
class ReplayResult:
    """The records the engine wrote, one per row, and the report computed from them."""

    records: list[dict[str, Any]]
    report: dict[str, Any]
    decisions: dict[str, tuple[str, str]] = field(default_factory=dict)   # job id -> (status, final tier)


def replay_settings(settings: Settings, pipeline: Pipeline | None = None) -> Settings:
    """`settings` for an in-process replay: embedded store, no rate limits, only `pipeline` if given."""
    tiers = {name: tier.model_copy(update={k: 0 for k in _LIMITS if k in Tier.model_fields})
             for name, tier in settings.tiers.items()}
    update: dict[str, Any] = {"redis": RedisConfig(url="", namespace="replay"), "tiers": tiers}
    if pipeline is not None:
        update["pipelines"] = {pipeline.name: pipeline}
    return settings.model_copy(update=update)


def check_prompt_fields(pipeline: Pipeline) -> None:
    """ConfigError unless the pipeline's prompt uses only `{system}` and `{user}`, what a recorded row fills."""
    extra = [f for f in pipeline.prompt.fields if f not in ROW_FIELDS]
    if extra:
        raise ConfigError(f"{pipeline.source}: prompt: uses {', '.join(extra)}; a recorded row fills only "
                          "{system} and {user} (its messages)")


def check_replayable(settings: Settings, pipeline: Pipeline, recorded: RecordedSet) -> None:
    """ConfigError unless the prompt is `{system}`/`{user}` and every tier's model was recorded."""
    check_prompt_fields(pipeline)
    models = recorded.models
    for name in pipeline.ladder:
        if settings.tiers[name].model not in models:
            raise ConfigError(f"tier '{name}': model '{settings.tiers[name].model}' has no responses in "
                              f"{recorded.source} (recorded: {', '.join(models)})")


def complete_rows(settings: Settings, pipeline: Pipeline, recorded: RecordedSet,
                  rows: Iterable[RecordedRow]) -> tuple[list[RecordedRow], list[str]]:
    """The rows whose recording (the row the replay provider answers from) has a response of every model of
    the full ladder, and one note per model that some rows lack: they are left out, since nothing says what
    that model would have answered. ConfigError when no row is left, or a tier's model has no responses at all."""
    check_replayable(settings, pipeline, recorded)
    kept, lacking = [], {}
    for row in rows:
        served = recorded.find((row.system, row.user)) or row
        missing = [m for m in (settings.tiers[t].model for t in pipeline.full_ladder) if m not in served.responses]
        for model in missing:
            lacking.setdefault(model, []).append(row.id)
        if not missing:
            kept.append(row)
    notes = [f"{recorded.source}: {len(ids)} {'row has' if len(ids) == 1 else 'rows have'} no response of {model} "
             f"and {'is' if len(ids) == 1 else 'are'} left out (first: id {ids[0]})" for model, ids in lacking.items()]
    if lacking and not kept:
        raise ConfigError(f"{recorded.source}: no row has a response of every tier's model; " + "; ".join(notes))
    return kept, notes


def run_pipeline(settings: Settings, pipeline: Pipeline, recorded: RecordedSet,
                 rows: Iterable[RecordedRow] | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The engine's result records for `rows` (default: every recorded row) in row order, and the batch counters."""
    from cascade.worker.backends import open_backend

    check_replayable(settings, pipeline, recorded)
    run_settings = replay_settings(settings, pipeline)
    providers = ProviderPool(run_settings, {name: ReplayProvider(recorded) for name in run_settings.tiers})
    backend = open_backend(run_settings, providers=providers)
    batch = f"replay-{uuid.uuid4().hex[:12]}"
    jobs = [RawRow(line, {"id": row.id, "system": row.system, "user": row.user})
            for line, row in enumerate(rows if rows is not None else recorded.rows, start=1)]
    try:
        submitter = Submitter(backend, run_settings, pipeline, batch)
        submitter.open()
        result = submitter.run(jobs)
        if result.rejected:
            raise ConfigError(f"{recorded.source}: {result.rejected[0]}")
        while not backend.store.batch(batch).finished:     # an in-process run: no ledger, the stream is read whole
            time.sleep(0.02)
        counters = backend.store.batch(batch).counters
        raw = ResultStream(backend.store.redis, run_settings.redis.namespace).read_all()
    finally:
        backend.close()
    order = {job.value["id"]: i for i, job in enumerate(jobs)}
    records = sorted((orjson.loads(record) for record in raw), key=lambda r: order[r["id"]])
    return records, counters


def replay(settings: Settings, pipeline: Pipeline, recorded: RecordedSet,
           rows: Iterable[RecordedRow] | None = None) -> ReplayResult:
    """Run the pipeline over the recording and report accuracy, cost and escalation against the references."""
    chosen, notes = complete_rows(settings, pipeline, recorded, rows if rows is not None else recorded.rows)
    records, counters = run_pipeline(settings, pipeline, recorded, chosen)
    summary = summarize(counters, settings, pipeline)
    report = evaluate(settings, pipeline, recorded, chosen, records)
    report["tiers"] = [{k: t[k] for k in ("tier", "model", "attempts", "accepted", "escalated", "escalation_rate",
                                          "final_jobs", "cost_usd", "verify_cost_usd")} for t in summary["tiers"]]
    report["statuses"] = summary["statuses"]
    report["routed"] = routed_share(records, pipeline.ladder[:-1])    # sent past a tier by the pre-router, no call
    if notes:
        report["left_out"] = notes
    decisions = {r["id"]: (r["status"], r["tier"]) for r in records}
    return ReplayResult(records, report, decisions)


def tier_samples(settings: Settings, pipeline: Pipeline) -> dict[str, int]:
    """How many samples each tier of the ladder answers with in one call (its checks decide: 1 or n)."""
    return {tier: (build_chain([uncalibrated(s) for s in pipeline.verifier_specs(tier)], settings.config_dir,
                               f"{pipeline.source}: verifiers.{tier}").sampling or (1, 0.0))[0]
            for tier in pipeline.full_ladder}


def uncalibrated(spec: dict[str, Any]) -> dict[str, Any]:
    """A verifier spec that reads no calibration file (its sampling and checks unchanged)."""
    if "calibration" not in spec:
        return spec
    return {k: v for k, v in spec.items() if k not in ("calibration", "key")} | {"threshold": spec.get("threshold") or 0.0}


def tier_cost(settings: Settings, tier_name: str, row: RecordedRow, n: int = 1, live: bool = False) -> int:
    """What the call of a tier for `n` samples cost on a row, in nano-USD: recorded usage at the price table
    (at the batch price for a batch-mode tier, unless `live`: the last tier alone is priced live)."""
    tier = settings.tiers[tier_name]
    usage = row.responses[tier.model].completion(n).usage
    return cost_nanos(settings.price(tier), usage, tier.batched and not live)


def evaluate(settings: Settings, pipeline: Pipeline, recorded: RecordedSet, rows: list[RecordedRow],
             records: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy, cost ratio to the last tier alone, and the oracle, from the records of a replay."""
    by_id = {r["id"]: r for r in records}
    last = settings.tiers[pipeline.ladder[-1]]
    samples = tier_samples(settings, pipeline)
    n = len(rows)
    cost = correct = graded = last_cost = last_correct = oracle_cost = oracle_correct = 0
    for row in rows:
        served = recorded.find((row.system, row.user)) or row   # the row the replay provider answered from
        record = by_id[row.id]
        cost += round(record["cost_usd"] * 1e9)
        last_cost += tier_cost(settings, last.name, served, samples[last.name], live=True)
        final = served.responses.get(record.get("model") or "") if record["output"] is not None else None
        last_answer = served.responses[last.model]
        last_ok = last_answer.answer_correct(last_answer.text, served.gold)
        if last_ok is not None:
            graded += 1
            last_correct += last_ok
            correct += bool(final.answer_correct(record["output"], served.gold)) if final is not None else 0
        for name in pipeline.full_ladder:    # tiers a calibration skips included: what the recording could give
            response = served.responses[settings.tiers[name].model]
            oracle_cost += tier_cost(settings, name, served, samples[name])
            # a sampled tier answers with its majority, which the recording's `correct` grades
            sampled_ok = response.correct if samples[name] > 1 and response.correct is not None else None
            if sampled_ok if sampled_ok is not None else response.answer_correct(response.text, served.gold):
                oracle_correct += 1
                break
    escalated = {name: sum(1 for r in records if any(a["tier"] == name for a in r["attempts"][:-1]))
                 for name in pipeline.ladder[:-1]}
    return {
        "pipeline": pipeline.name,
        "recorded": recorded.source,
        "jobs": n,
        "accuracy": correct / graded if graded else None,
        "last_tier": last.name,
        "last_tier_accuracy": last_correct / graded if graded else None,
        "cost_usd": to_usd(cost),
        "last_tier_cost_usd": to_usd(last_cost),
        "cost_ratio": cost / last_cost if last_cost else None,
        "escalation": {name: count / n for name, count in escalated.items()} if n else {},
        "oracle_accuracy": oracle_correct / n if n and graded else None,
        "oracle_cost_ratio": oracle_cost / last_cost if last_cost else None,
    }
