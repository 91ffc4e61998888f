"""The shared tier limiter: one suite over real Redis and fakeredis (the same Lua), plus processes on real Redis."""

from __future__ import annotations

import multiprocessing
import threading
import time
import uuid
from collections.abc import Iterator

import fakeredis
import pytest
import redis

from cascade.errors import RateLimited, ServerError
from cascade.models import Completion, CompletionRequest, Job, Usage
from cascade.worker.config import load_settings
from cascade.worker.config.schema import Tier
from cascade.worker.limiter import (
    MARGIN_S,
    WINDOW_S,
    CircuitPolicy,
    NoLimiter,
    RedisLimiter,
    request_bucket,
    token_bucket,
)
from cascade.worker.pricing import estimate_tokens
from cascade.worker.prompts import render
from cascade.worker.retrying import RetryPolicy
from cascade.worker.runtime import ProviderPool
from cascade.worker.tier_call import TierCaller
from tests.helpers import ScriptedProvider, copy_config, one_job


def tier(**limits) -> Tier:
    return Tier(name=limits.pop("name", "t"), provider="openai", model="m", max_tokens=100, timeout_s=5, **limits)


@pytest.fixture(params=["redis", "fakeredis"])
def client(request) -> Iterator[tuple[redis.Redis, str]]:
    """(client, namespace): a unique namespace on real Redis or fakeredis; its keys deleted afterwards."""
    ns = f"limtest-{uuid.uuid4().hex[:10]}"
    conn = redis.Redis.from_url(request.getfixturevalue("redis_url")) if request.param == "redis" \
        else fakeredis.FakeRedis()
    yield conn, ns
    conn.delete(*conn.scan_iter(f"{ns}:*"), f"{ns}:none")
    conn.close()


class Recorder:
    """A sleep that only records, and a clock that the recorded sleeps advance."""

    def __init__(self):
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    def clock(self) -> float:
        return 1000.0 + sum(self.sleeps)


def booked_limiter(conn, ns, rec: Recorder) -> RedisLimiter:
    return RedisLimiter(conn, ns, sleep=rec.sleep, clock=rec.clock, max_wait_s=300)


def book(limiter: RedisLimiter, rec: Recorder, t: Tier, tokens: int) -> tuple[object, float]:
    """Acquire once; return the lease and the wall-clock moment its booked slot starts."""
    before, now = len(rec.sleeps), time.time()
    return limiter.acquire(t, tokens), now + sum(rec.sleeps[before:])


# -- bucket sizing (no Redis) -----------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 2, 7, 60, 119, 1200, 10_000])
def test_greedy_callers_never_put_more_than_the_limit_in_any_rolling_window(limit):
    # Given callers that take every slot the requests bucket books, as early as it allows
    bucket = request_bucket(limit)
    per_s = bucket.per_ms * 1000
    starts, level, now = [], bucket.capacity, 0.0
    for _ in range(3 * limit + 5):
        level -= 1
        starts.append(now + max(0.0, -level / per_s))
    # Then no window of a minute plus the margin holds more than `limit` starts
    window, first, most = WINDOW_S + MARGIN_S - 1e-9, 0, 0
    for last, start in enumerate(starts):
        while start - starts[first] > window:
            first += 1
        most = max(most, last - first + 1)
    assert most <= limit
    # And the long-run rate stays close to the limit (>= 97% for limits of 60 rpm and up)
    if limit >= 60:
        assert (len(starts) - 1) / (starts[-1] - starts[0]) * 60 >= 0.97 * limit


# -- one suite over real Redis and fakeredis ---------------------------------------------------


def test_a_minute_of_requests_is_admitted_and_the_next_one_waits_past_it(client):
    conn, ns = client
    rec = Recorder()
    limiter = booked_limiter(conn, ns, rec)
    t = tier(rpm=120)
    # When 121 callers ask at once
    slots = [book(limiter, rec, t, 10)[1] for _ in range(121)]
    # Then the first is admitted at once and slots are booked in order
    assert rec.sleeps == [] or slots[0] == min(slots)
    assert slots == sorted(slots)
    # And 120 start within one minute of the first, while the 121st waits past it
    assert slots[119] - slots[0] < 60.0 + 0.05
    assert slots[120] - slots[0] >= 60.0 - 0.05


def test_a_call_bigger_than_the_bucket_is_booked_not_refused_forever(client):
    conn, ns = client
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) > 3:
            raise RuntimeError("refused again and again")

    limiter = RedisLimiter(conn, ns, sleep=sleep)      # books at most 5 s ahead
    t = tier(tpm=10_000)                                # a bucket of 83 tokens, ~164 tokens/s
    # When one call needs more than five seconds of tokens (say 20 samples x 512 max_tokens on a small tier)
    limiter.acquire(t, 1_000)
    # Then it is booked as far ahead as its own size needs, once, instead of being refused forever
    [wait] = sleeps
    assert 5.0 < wait < 6.5


def test_tokens_are_reserved_then_refunded_or_debited_to_what_was_used(client):
    conn, ns = client
    rec = Recorder()
    limiter = booked_limiter(conn, ns, rec)
    t = tier(tpm=60_000)                  # bucket of 500 tokens, ~983 tokens/s
    per_s = token_bucket(60_000).per_ms * 1000
    first, _ = book(limiter, rec, t, 500)
    assert rec.sleeps == []              # a full bucket admits at once
    big, start = book(limiter, rec, t, 10 * int(per_s))
    assert start - time.time() > 8       # ten seconds of tokens: booked ~10 s ahead
    limiter.settle(t, first, 500)
    # When the big call used only 800 of its reservation, the rest comes back
    limiter.settle(t, big, 800)
    _, start = book(limiter, rec, t, 100)
    assert start - time.time() < 3
    # When a call overshoots its reservation by ten seconds of tokens, the overshoot is debited
    small, _ = book(limiter, rec, t, 100)
    limiter.settle(t, small, 100 + 10 * int(per_s))
    _, start = book(limiter, rec, t, 1)
    assert start - time.time() > 8


def test_in_flight_cap_holds_across_callers_and_frees_on_settle(client):
    conn, ns = client
    t = tier(max_in_flight=3)
    a, b = RedisLimiter(conn, ns), RedisLimiter(conn, ns)   # two worker processes, say
    leases = [a.acquire(t, 10), b.acquire(t, 10), a.acquire(t, 10)]
    assert a.store.in_flight("t") == 3
    # When a fourth caller asks, it waits
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(b.acquire(t, 10)), daemon=True)
    waiter.start()
    waiter.join(0.5)
    assert got == [] and waiter.is_alive()
    # Until one call settles
    a.settle(t, leases[0], 10)
    waiter.join(10)
    assert len(got) == 1
    assert a.store.in_flight("t") == 3
    for lease in [*leases[1:], *got]:
        a.settle(t, lease, 10)
    assert a.store.in_flight("t") == 0


def test_a_crashed_callers_lease_lapses(client):
    conn, ns = client
    limiter = RedisLimiter(conn, ns)
    none, store = token_bucket(0), limiter.store
    for i in range(2):
        assert store.acquire("t", none, none, 1, max_in_flight=2, lease_id=f"dead-{i}", lease_ttl_s=0.2).admitted
    assert not store.acquire("t", none, none, 1, max_in_flight=2, lease_id="live", lease_ttl_s=5).admitted
    time.sleep(0.4)
    assert store.acquire("t", none, none, 1, max_in_flight=2, lease_id="live", lease_ttl_s=5).admitted


def test_cooldown_is_shared_and_the_later_expiry_wins(client):
    conn, ns = client
    a, b = RedisLimiter(conn, ns), RedisLimiter(conn, ns)
    t = tier(rpm=600)
    a.cool_down(t, 5)
    assert 4 < b.store.cooldown_left("t") <= 5
    refused = b.store.acquire("t", request_bucket(600), token_bucket(0), 1)
    assert not refused.admitted and 4 < refused.wait_s <= 5
    # A shorter second 429 does not cut the cooldown short; a longer one extends it
    b.cool_down(t, 1)
    assert 4 < a.store.cooldown_left("t") <= 5
    b.cool_down(t, 8)
    assert 7 < a.store.cooldown_left("t") <= 8


@pytest.mark.parametrize("limits", [{"rpm": 600}, {}], ids=["limited", "unlimited"])
def test_acquire_waits_out_another_processs_cooldown(client, limits):
    conn, ns = client
    a, b = RedisLimiter(conn, ns), RedisLimiter(conn, ns)
    t = tier(**limits)
    a.cool_down(t, 0.4)
    started = time.monotonic()
    b.settle(t, b.acquire(t, 10), 10)
    assert time.monotonic() - started >= 0.3


def test_low_rate_limit_hints_pause_the_tier_briefly(client):
    conn, ns = client
    limiter = RedisLimiter(conn, ns)
    t = tier(rpm=600)
    limiter.observe(t, {"remaining_requests": 50, "reset_requests_s": 5.0, "remaining_tokens": 9000})
    assert limiter.store.cooldown_left("t") == 0
    limiter.observe(t, {"remaining_requests": 1, "reset_requests_s": 0.8})
    assert 0.5 < limiter.store.cooldown_left("t") <= 0.8
    limiter.observe(t, {"remaining_tokens": 20, "reset_tokens_s": 40.0})   # below one call's max_tokens
    assert 1.5 < limiter.store.cooldown_left("t") <= 2.0                   # capped: a short pause


# -- the engine drives the limiter ------------------------------------------------------------


def test_engine_pauses_the_tier_on_429_and_on_low_hints(tmp_path):
    settings = load_settings(copy_config(tmp_path), environ={})
    conn = fakeredis.FakeRedis()
    limiter = RedisLimiter(conn, "e")
    good = '{"category": "billing", "priority": "low"}'
    answers = iter([RateLimited("slow down", retry_after=0.2),
                    Completion(good, Usage(100, 10), "stop", "gpt-4o-mini", 5.0,
                               rate_limit={"remaining_requests": 0, "reset_requests_s": 1.5})])
    provider = ScriptedProvider(lambda request, n: next(answers))
    job = Job("j", {"subject": "Refund", "body": "charged twice"}, 1)
    engine, _, ref = one_job(settings, {"cheap": provider}, job, limiter=limiter, client=conn)
    assert engine.handle(ref) == "accepted"
    assert len(provider.calls) == 2               # the 429 was retried after its cooldown
    assert 1.0 < limiter.store.cooldown_left("cheap") <= 1.5



@pytest.mark.parametrize("error, expected_s", [
    (RateLimited("slow down", retry_after=3.0), 3.0),            # retry-after is honoured
    (RateLimited("overloaded", status=529), 1.0),                 # none given: a short pause
    (ServerError("boom", status=500), 0.0),                       # not a rate limit: no pause for others
])
def test_a_rate_limited_call_pauses_every_worker_of_the_tier(tmp_path, error, expected_s):
    settings = load_settings(copy_config(tmp_path), environ={})
    limiter = RedisLimiter(fakeredis.FakeRedis(), "e")
    provider = ScriptedProvider(lambda request, n: error)
    caller = TierCaller(ProviderPool(settings, {"cheap": provider}), limiter,
                        RetryPolicy(max_retries=0, horizon_s=0.0), sleep=lambda s: None)
    result = caller.call(settings.tiers["cheap"], CompletionRequest("m", "sys", "user", 16), 10)
    assert result.completion is None
    assert limiter.store.cooldown_left("cheap") == pytest.approx(expected_s, abs=0.1)

# -- several processes share one limit on real Redis ------------------------------------------


def _hammer(redis_url: str, ns: str, limits: dict, go, deadline: float, hold_s: float, out, active, peak) -> None:
    """Child process: 3 threads acquire / hold / settle until `deadline`; report admissions that started by then."""
    conn = redis.Redis.from_url(redis_url)
    limiter = RedisLimiter(conn, ns)
    t = tier(**limits)
    starts: list[float] = []

    def loop() -> None:
        while time.time() < deadline:
            lease = limiter.acquire(t, 10)
            starts.append(time.time())
            with active.get_lock():
                active.value += 1
                peak.value = max(peak.value, active.value)
            time.sleep(hold_s)
            with active.get_lock():
                active.value -= 1
            limiter.settle(t, lease, 10)

    go.wait()
    threads = [threading.Thread(target=loop) for _ in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    out.put([s for s in starts if s <= deadline])


def _run_processes(redis_url: str, limits: dict, seconds: float, hold_s: float) -> tuple[list[float], float, int]:
    ctx = multiprocessing.get_context("fork")
    ns = f"limtest-{uuid.uuid4().hex[:10]}"
    go, out = ctx.Event(), ctx.Queue()
    active, peak = ctx.Value("i", 0), ctx.Value("i", 0)
    begin = time.time() + 1.0
    procs = [ctx.Process(target=_hammer, args=(redis_url, ns, limits, go, begin + seconds, hold_s, out, active, peak))
             for _ in range(4)]
    for p in procs:
        p.start()
    time.sleep(max(0.0, begin - time.time()))
    go.set()
    started = time.time()
    starts = [s for _ in procs for s in out.get(timeout=60)]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    conn = redis.Redis.from_url(redis_url)
    conn.delete(*conn.scan_iter(f"{ns}:*"), f"{ns}:none")
    return starts, begin + seconds - started, peak.value


def test_processes_sharing_an_rpm_limit_never_exceed_it(redis_url):
    # Given 4 processes x 3 threads calling as fast as the limiter lets them, for 3 seconds
    starts, span, _ = _run_processes(redis_url, {"rpm": 600}, seconds=3.0, hold_s=0.0)
    bucket = request_bucket(600)
    allowed = bucket.capacity + bucket.per_ms * 1000 * span
    # Then the admissions never exceed the bucket, and the limit is not starved either
    assert len(starts) <= allowed + 1
    assert len(starts) >= 0.5 * allowed


def test_processes_sharing_an_in_flight_cap_never_exceed_it(redis_url):
    starts, _, peak = _run_processes(redis_url, {"max_in_flight": 4}, seconds=2.0, hold_s=0.05)
    assert peak <= 4
    assert len(starts) >= 20


class RecordingLimiter(NoLimiter):
    """Admits everything and records what the engine reserved and settled."""

    def __init__(self):
        self.reserved: list[int] = []
        self.settled: list[int] = []

    def acquire(self, tier, tokens):
        self.reserved.append(tokens)
        return tokens

    def settle(self, tier, lease, used_tokens):
        self.settled.append(used_tokens)


SAMPLED = """output = "json"
ladder = ["cheap"]
[prompt]
system = "Triage."
user = "{subject}"
[verifiers]
default = [{ name = "self_consistency", samples = 3, field = "category" }]
"""


@pytest.mark.parametrize(("counts_max_tokens", "pipeline", "n", "one_call"),
                         [(True, "ticket-triage", 1, True), (False, "ticket-triage", 1, True),
                          (True, "sampled", 3, True), (False, "sampled", 3, False)])
def test_engine_reserves_max_tokens_per_sample_and_settles_as_the_provider_counts(tmp_path, counts_max_tokens,
                                                                                   pipeline, n, one_call):
    # Given a provider that counts max_tokens against tpm (OpenAI) or the output it produced (Anthropic)
    config = copy_config(tmp_path)
    (config.parent / "pipelines" / "sampled.toml").write_text(SAMPLED)
    settings = load_settings(config, environ={"CASCADE_TIER_CHEAP_TPM": "1000000"})
    limiter = RecordingLimiter()
    good = '{"category": "billing", "priority": "low"}'
    provider = ScriptedProvider(lambda request, _: Completion(good, Usage(90, 12 * request.n), "stop", "gpt-4o-mini",
                                                              5.0, samples=(good,) * request.n))
    provider.tpm_counts_max_tokens = counts_max_tokens
    provider.supports_n = one_call          # without `n` (Anthropic), every sample is a request of its own
    # When one job is answered (with n samples in one call)
    job = Job("j", {"subject": "Refund", "body": "charged twice"}, 1)
    engine, _, ref = one_job(settings, {"cheap": provider}, job, pipeline=pipeline, limiter=limiter)
    assert engine.handle(ref) == "accepted"
    # Then each request's reservation covers its samples, and its settlement is what the provider counts
    requests = 1 if one_call else n
    per_request = n // requests
    assert [r.n for r in provider.calls] == [per_request] * requests
    max_tokens = settings.tiers["cheap"].max_tokens
    system, user = render(settings.pipeline(pipeline).prompt, job.fields)
    assert limiter.reserved == [estimate_tokens(system) + estimate_tokens(user) + max_tokens * per_request] * requests
    assert limiter.settled == [90 + (max_tokens * per_request if counts_max_tokens else 12 * per_request)] * requests


# -- the circuit, and cooldowns that reach calls already booked --------------------------------


def test_a_booked_call_does_not_go_out_into_a_cooldown_another_process_set(client):
    # Given a tier at 600 rpm whose bucket is spent, so the next call books a slot a tenth of a second ahead
    conn, ns = client
    t = tier(rpm=600)
    other = RedisLimiter(conn, ns)
    slept: list[float] = []
    clock = [0.0]
    armed = [False]

    def sleep(seconds):
        slept.append(seconds)
        clock[0] += seconds
        if armed[0] and len(slept) == 1:    # while this call sleeps to its slot, another process meets a 429
            other.cool_down(t, 2)

    limiter = RedisLimiter(conn, ns, sleep=sleep, clock=lambda: clock[0])
    for _ in range(int(request_bucket(600).capacity)):
        limiter.settle(t, limiter.acquire(t, 1), 1)
    slept.clear()
    armed[0] = True
    # When the next call is admitted to its booked slot
    lease = limiter.acquire(t, 1)
    # Then it waited out the 2 s cooldown before going out, instead of calling at its slot
    assert 0 < slept[0] < 0.5 and sum(slept) >= 1.9
    limiter.settle(t, lease, 1)


def test_the_circuit_opens_after_a_run_of_failures_lets_one_probe_through_and_closes_on_its_success(client, caplog):
    conn, ns = client
    policy = CircuitPolicy(failures_to_open=3, first_open_s=0.3, max_open_s=5)
    a, b = RedisLimiter(conn, ns, circuit=policy), RedisLimiter(conn, ns, circuit=policy)
    t = tier()
    # Given three transient failures in a row, from two processes
    for limiter in (a, b, a):
        limiter.report(t, limiter.acquire(t, 1), ok=False, cause="server_error: 503 upstream down")
    # Then the circuit is open, the log says so with the last failure, and nobody calls for its first period
    assert ("tier t: circuit open for 0.3 s after repeated failures (the last: server_error: 503 upstream down); "
            "its jobs wait") in caplog.messages
    left, circuit = a.store.pause("t")
    assert circuit and 0.1 < left <= 0.3
    time.sleep(0.35)
    # When it half-opens, one caller is the probe and the others wait for its result
    probe = a.acquire(t, 1)
    assert probe.circuit
    refused = b.store.acquire("t", request_bucket(0), token_bucket(0), 1, probe="someone-else")
    assert not refused.admitted and refused.circuit
    # A failed probe opens it again for twice as long
    a.report(t, probe, ok=False)
    left, circuit = a.store.pause("t")
    assert circuit and 0.4 < left <= 0.6
    time.sleep(0.65)
    # and a successful one closes it for everyone
    probe = b.acquire(t, 1)
    b.report(t, probe, ok=True)
    assert b.store.pause("t") == (0.0, False)
    assert a.store.acquire("t", request_bucket(0), token_bucket(0), 1, probe="x").admitted


def test_the_engine_waits_for_an_outage_to_pass_instead_of_failing_jobs(tmp_path):
    # Given a provider down for its first 12 calls, and a circuit that opens after 3 failures
    settings = load_settings(copy_config(tmp_path), environ={"CASCADE_MAX_RETRIES": "2"})
    conn = fakeredis.FakeRedis()
    clock = [0.0]

    def sleep(seconds):
        clock[0] += seconds

    limiter = RedisLimiter(conn, "e", sleep=sleep, clock=lambda: clock[0], circuit=CircuitPolicy(3, 0.001, 0.002))
    good = '{"category": "billing", "priority": "low"}'
    provider = ScriptedProvider(lambda request, n: ServerError("openai 503: down", status=503) if n <= 12 else good)
    job = Job("j", {"subject": "Refund", "body": "charged twice"}, 1)
    engine, store, ref = one_job(settings, {"cheap": provider}, job, limiter=limiter, client=conn, sleep=sleep)
    # When the job runs, it waits and retries until the provider answers, and is accepted
    assert engine.handle(ref) == "accepted"
    assert len(provider.calls) == 13
    assert store.batch("b").counters["retries:cheap"] == 12
