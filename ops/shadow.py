"""Shadow quality sampling: a share of answers accepted below the last tier is re-run on the last tier.

The sampler is an engine observer: it sees each accepted step once, picks a job when a hash of its batch
and id falls under `[shadow] rate` (a redelivery decides the same), stores what the shadow run needs under
a key with a TTL, and hands a message carrying ids only to the shadow queue. The runner takes the payload
once (GETDEL: a redelivered message finds nothing and calls nothing), reserves the call's worst case against
the batch's shadow budget, calls the last tier through the tier's own limiter, compares the parsed outputs
and records the pair: the batch's shadow counters and a stream the ledger writers move into the ledger.
Shadow spend never touches the batch's cost or budget. A shadow job lost with a killed worker stays lost
(it is a sample); it is never run, nor paid, twice.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson

from cascade.models import Attempt, CompletionRequest, Job, Usage
from cascade.verifiers import VerifyContext
from cascade.verifiers.parsing import parse_output
from cascade.verifiers.registry import build_verifier
from cascade.worker.config.schema import Pipeline, Settings
from cascade.worker.events import StepRecorded
from cascade.worker.messages import JobRef
from cascade.worker.pricing import cost_nanos, estimate_tokens, reserve_rates
from cascade.worker.prompts import render
from cascade.worker.store.keys import Keys
from cascade.worker.verifier_calls import VerifierCalls

log = logging.getLogger("cascade.shadow")

PAYLOAD_TTL_S = 86_400      # a shadow job not run within a day is dropped (it is a sample, not work)
IDLE_POLL_S = 0.2           # how often a waiting shadow run looks whether real work still queues


def sampled(batch: str, job_id: str, rate: float) -> bool:
    """Whether a job is shadowed: a pure function of batch and id, so every delivery decides the same."""
    digest = hashlib.sha256(f"shadow\x1f{batch}\x1f{job_id}".encode()).digest()
    return rate > 0 and int.from_bytes(digest[:8], "big") / 2.0**64 < rate


def shadow_queue(settings: Settings, pipeline: Pipeline) -> str:
    """The queue shadow jobs of a pipeline go to: `[shadow] queue`, else shadow.<last tier>."""
    return settings.shadow.queue or f"shadow.{pipeline.ladder[-1]}"


def _canonical(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def _normalized(text: str | None) -> str:
    return re.sub(r"\s+", " ", (text or "")).strip().casefold()


def same_answer(output_format: str, accepted: tuple[str | None, Any], shadow: tuple[str | None, Any]) -> bool:
    """Agreement on the parsed output: label or canonical JSON equality; text: normalized exact match."""
    (text_a, parsed_a), (text_b, parsed_b) = accepted, shadow
    if output_format in ("json", "label"):
        return parsed_a is not None and parsed_b is not None and _canonical(parsed_a) == _canonical(parsed_b)
    return _normalized(text_a) == _normalized(text_b)


class ShadowStore:
    """Shadow payloads, the per-batch shadow budget and counters, and the pairs stream, over Redis."""

    def __init__(self, redis: Any, namespace: str = "cascade"):
        self.redis = redis
        self.keys = Keys(namespace)

    def put(self, batch: str, job_id: str, payload: dict[str, Any], ttl_s: int = PAYLOAD_TTL_S) -> bool:
        """Store a shadow payload unless one is there; True when this call stored it."""
        return bool(self.redis.set(self.keys.shadow_job(batch, job_id), orjson.dumps(payload), nx=True, ex=ttl_s))

    def take(self, batch: str, job_id: str) -> dict[str, Any] | None:
        """The payload, removed in the same step: only one delivery of a shadow message ever runs it."""
        raw = self.redis.getdel(self.keys.shadow_job(batch, job_id))
        return orjson.loads(raw) if raw else None

    def spent(self, batch: str) -> int:
        """Nano-USD spent and reserved by the batch's shadow calls."""
        cost, reserved = self.redis.hmget(self.keys.batch(batch), "shadow_cost", "shadow_reserved")
        return int(cost or 0) + int(reserved or 0)

    def reserve(self, batch: str, nanos: int, budget_nanos: int) -> bool:
        """Reserve a call's worst case against the shadow budget (0: none); False, reserving nothing, when it
        does not fit. Two racing reservations may both give way: the cap is never passed."""
        if budget_nanos <= 0:
            return True
        key = self.keys.batch(batch)
        reserved = self.redis.hincrby(key, "shadow_reserved", nanos)
        if int(self.redis.hget(key, "shadow_cost") or 0) + reserved > budget_nanos:
            self.redis.hincrby(key, "shadow_reserved", -nanos)
            return False
        return True

    def skipped(self, batch: str) -> None:
        """Count a sampled job the budget did not let through."""
        self.redis.hincrby(self.keys.batch(batch), "shadow_skipped", 1)

    def settle(self, batch: str, reserved: int, pair: dict[str, Any] | None, cost: int) -> None:
        """Release the reservation, add the cost, and (with a pair) count it and queue it for the ledger."""
        key = self.keys.batch(batch)
        pipe = self.redis.pipeline(transaction=True)
        if reserved:
            pipe.hincrby(key, "shadow_reserved", -reserved)
        pipe.hincrby(key, "shadow_cost", cost)
        if pair is not None:
            pipe.hincrby(key, "shadow_jobs", 1)
            pipe.hincrby(key, "shadow_agree", pair["agree"])
            pipe.xadd(self.keys.shadow_pairs, {"pair": orjson.dumps(pair)})
        else:
            pipe.hincrby(key, "shadow_failed", 1)
        pipe.execute()

    def pending_pairs(self, count: int = 1000) -> list[tuple[bytes, dict[str, Any]]]:
        """The oldest pairs not yet moved into the ledger."""
        return [(entry_id, orjson.loads(fields[b"pair"]))
                for entry_id, fields in self.redis.xrange(self.keys.shadow_pairs, count=count)]

    def delete_pairs(self, entry_ids: list[bytes]) -> None:
        """Drop pairs the ledger has committed (a pair written twice is stored once, so a crash between is safe)."""
        if entry_ids:
            self.redis.xdel(self.keys.shadow_pairs, *entry_ids)


class ShadowSampler:
    """The engine observer: picks accepted early answers and hands them to the shadow queue."""

    def __init__(self, settings: Settings, store: ShadowStore, publish: Callable[[JobRef], None]):
        self.settings = settings
        self.store = store
        self.publish = publish

    def __call__(self, event: StepRecorded) -> None:
        """Sample one recorded step (only accepted answers below the last tier are candidates)."""
        shadow = self.settings.shadow
        if event.outcome != "accepted" or event.attempt is None or not sampled(event.batch, event.job_id, shadow.rate):
            return
        pipeline = self.settings.pipeline(event.pipeline)
        last = len(pipeline.ladder) - 1
        if event.tier_index >= last:
            return
        budget = round(shadow.budget_usd * 1e9)
        if budget and self.store.spent(event.batch) >= budget:
            self.store.skipped(event.batch)
            return
        attempt = event.attempt.to_dict()
        attempt.pop("text", None)
        payload = {"pipeline": pipeline.name, "tier": event.tier, "fields": event.fields or {},
                   "output": event.attempt.text, "parsed": event.attempt.parsed, "attempt": attempt}
        if self.store.put(event.batch, event.job_id, payload):
            self.publish(JobRef(event.batch, pipeline.name, event.job_id, last))


class ShadowRunner:
    """Runs shadow jobs on the last tier with the engine's caller (so the tier's limiter and retries apply)."""

    def __init__(self, engine: Any, store: ShadowStore, idle: Callable[[str], bool],
                 sleep: Callable[[float], None] = time.sleep):
        self.engine = engine
        self.settings: Settings = engine.settings
        self.store = store
        self.idle = idle            # whether the tier has no real work waiting (shadows go last)
        self.sleep = sleep

    def run(self, ref: JobRef) -> str:
        """Run one shadow job: "agree", "disagree", "failed", "over_budget" or "gone" (run or expired)."""
        pipeline = self.settings.pipeline(ref.pipeline)
        tier = self.settings.tiers[pipeline.ladder[-1]]
        while not self.idle(tier.name):
            self.sleep(IDLE_POLL_S)
        payload = self.store.take(ref.batch, ref.job_id)
        if payload is None:
            return "gone"
        system, user = render(pipeline.prompt, payload["fields"])
        prompt_tokens = estimate_tokens(system) + estimate_tokens(user)
        per_token, per_call = reserve_rates(self.settings.price(tier), tier)
        reserved = round(per_token * prompt_tokens) + per_call
        if not self.store.reserve(ref.batch, reserved, round(self.settings.shadow.budget_usd * 1e9)):
            self.store.skipped(ref.batch)
            return "over_budget"
        request = CompletionRequest(model=tier.model, system=system, user=user, max_tokens=tier.max_tokens,
                                    temperature=tier.temperature, n=1, timeout=tier.timeout_s, job_id=ref.job_id)
        try:
            result = self.engine.caller.call(tier, request, prompt_tokens if tier.tpm else 0)
        except BaseException:
            self.store.settle(ref.batch, reserved, None, 0)
            raise
        price = self.settings.price(tier)
        if result.completion is None:
            self.store.settle(ref.batch, reserved, None, cost_nanos(price, result.spent))
            log.warning("shadow %s/%s on %s failed: %s", ref.batch, ref.job_id, tier.name, result.error)
            return "failed"
        text = result.completion.text
        cost = cost_nanos(price, result.completion.usage)
        parsed = parse_output(text, pipeline.output, pipeline.labels)
        agree, judge_cost = self._agree(pipeline, payload, text, parsed, request)
        pair = {"batch_id": ref.batch, "job_id": ref.job_id, "pipeline": pipeline.name, "tier": payload["tier"],
                "shadow_tier": tier.name, "output": payload["output"], "shadow_output": text, "agree": int(agree),
                "cost_nanos": cost + judge_cost, "attempt": payload["attempt"], "at": round(time.time(), 3)}
        self.store.settle(ref.batch, reserved, pair, cost + judge_cost)
        return "agree" if agree else "disagree"

    def _agree(self, pipeline: Pipeline, payload: dict[str, Any], text: str, parsed: Any,
               request: CompletionRequest) -> tuple[bool, int]:
        """(agreement, nano-USD the judge spent): free text goes to the pipeline's judge when it has one."""
        judge = _judge_spec(pipeline)
        if pipeline.output != "text" or judge is None:
            return same_answer(pipeline.output, (payload["output"], payload["parsed"]), (text, parsed)), 0
        rubric = (f"{judge.get('rubric', '')}\nThe answer must say the same as this reference answer from a "
                  f"stronger model:\n{text}")
        verifier = build_verifier({**judge, "rubric": rubric}, self.settings.config_dir,
                                  f"{pipeline.source}: shadow judge")
        tier = self.settings.tiers[pipeline.ladder[-1]]
        calls = VerifierCalls(self.settings, self.engine.caller, tier)
        ctx = VerifyContext(completion=None, output_format=pipeline.output, labels=pipeline.labels,
                            config_dir=self.settings.config_dir, request=request, call=calls)
        summary = payload["attempt"]
        accepted = Attempt(payload["tier"], summary.get("model", ""), payload["output"] or "", "stop", Usage(), 0.0, 0.0)
        verdict = verifier.check(Job("shadow", payload["fields"], 0), accepted, ctx)
        return verdict.passed, round(verdict.cost_usd * 1e9)


def _judge_spec(pipeline: Pipeline) -> dict[str, Any] | None:
    """The first judge verifier any tier of the pipeline uses, as configured."""
    for specs in pipeline.verifiers.values():
        for spec in specs:
            if spec.get("name") == "judge":
                return dict(spec)
    return None


class LocalShadows:
    """Embedded mode's shadow queue: one thread runs shadow jobs in this process after the real work."""

    def __init__(self, runner_factory: Callable[[], ShadowRunner]):
        self._factory = runner_factory
        self._runner: ShadowRunner | None = None
        self._queue: queue.Queue[JobRef | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def publish(self, ref: JobRef) -> None:
        """Queue one shadow job (the thread starts with the first)."""
        with self._lock:
            if self._thread is None:
                self._runner = self._factory()
                self._thread = threading.Thread(target=self._work, name="cascade-shadow", daemon=True)
                self._thread.start()
        self._queue.put(ref)

    def _work(self) -> None:
        while (ref := self._queue.get()) is not None:
            try:
                self._runner.run(ref)
            except Exception:
                log.exception("shadow %s failed", ref.label)
            finally:
                self._queue.task_done()
        self._queue.task_done()

    def finish(self) -> None:
        """Wait until every queued shadow job ran."""
        if self._thread is not None:
            self._queue.join()

    def close(self) -> None:
        """Stop the thread once the queue is empty."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=60)


def celery_publisher(app: Any, settings: Settings) -> Callable[[JobRef], None]:
    """Publish shadow messages (ids only) to each pipeline's shadow queue through a Celery app."""
    from cascade.worker.celery_app import SHADOW_TASK

    def publish(ref: JobRef) -> None:
        app.send_task(SHADOW_TASK, args=(ref.to_wire(),), queue=shadow_queue(settings, settings.pipeline(ref.pipeline)),
                      argsrepr=ref.label, kwargsrepr="{}", ignore_result=True)

    return publish


def attach_sampler(engine: Any, client: Any, publish: Callable[[JobRef], None]) -> None:
    """Add the shadow sampler to an engine's observers when `[shadow] rate` is above 0."""
    settings: Settings = engine.settings
    if settings.shadow.rate > 0:
        engine.observers.append(ShadowSampler(settings, ShadowStore(client, settings.redis.namespace), publish))
