"""The store's Lua scripts, the same suite on real Redis and on fakeredis: registration, leases, recording,
reconciliation claims, budgets, retries and retention."""

from __future__ import annotations

import uuid

import fakeredis
import orjson
import pytest
import redis

from cascade.models import Job
from cascade.worker.messages import JobPayload
from cascade.worker.store import BatchStore, JobStore, LeaseCode, Registration, ResultStream, SweepStore, pack_counters

LADDER = ("cheap", "frontier")
A = "b\x1fa"        # job a of batch b in the due sets


class Stores:
    """The three stores over one client and namespace."""

    def __init__(self, client, ns: str):
        self.batches = BatchStore(client, ns)
        self.jobs = JobStore(client, ns)
        self.sweeps = SweepStore(client, ns)
        self.redis = client
        self.keys = self.batches.keys


@pytest.fixture(params=["redis", "fakeredis"])
def s(request):
    ns = f"t{uuid.uuid4().hex[:10]}"
    if request.param == "fakeredis":
        yield Stores(fakeredis.FakeRedis(), ns)
        return
    client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
    yield Stores(client, ns)
    keys = list(client.scan_iter(f"{ns}:*"))
    if keys:
        client.delete(*keys)


def register(s, batch, jobs, run=1, prompt_tokens=0):
    regs = [Registration(job_id, line, prompt_tokens, JobPayload(Job(job_id, {"n": line}, line)).to_json())
            for job_id, line in jobs]
    return s.batches.register_jobs(batch, run, "cheap", regs)


def take(s, job, tier=0, token="w1", seq=1, per_token=0.0, per_call=0, max_deliveries=10):
    return s.jobs.take_lease("b", job, tier, LADDER[tier], seq, token, lease_ms=15000, reserve_per_token=per_token,
                             reserve_per_call=per_call, max_deliveries=max_deliveries)


def final(s, job, token="w1", tier=0, cost=100, record=b"{}", counters=(), keep=""):
    return s.jobs.record_final("b", "p", job, token, tier_index=tier, cost_nanos=cost, record=record,
                               counters=pack_counters([("cost", cost), *counters]), keep=keep)


def escalate(s, job, token="w1", cost=100, payload=b'{"f": {}, "h": [{"tier": "cheap"}]}'):
    return s.jobs.record_escalation("b", "p", job, token, tier_index=0, next_tier="frontier", cost_nanos=cost,
                                    payload=payload, counters=pack_counters([("cost", cost)]))


def test_register_numbers_new_jobs_and_names_duplicates_by_line(s):
    run = s.batches.open_batch("b", "p")
    assert register(s, "b", [("a", 1), ("c", 2), ("a", 3)], run) == [1, 2, -1]
    assert s.batches.batch("b").total == 2
    assert s.batches.queued_jobs("cheap") == 2


def test_a_second_run_registers_only_new_rows_and_leaves_the_rest_to_the_reconciler(s):
    run1 = s.batches.open_batch("b", "p")
    register(s, "b", [("a", 1), ("c", 2)], run1)
    run2 = s.batches.open_batch("b", "p")
    assert run2 == run1 + 1
    assert register(s, "b", [("a", 1), ("c", 2), ("d", 3)], run2) == [0, 0, 3]
    assert s.batches.batch("b").total == 3


def test_reopening_for_another_pipeline_or_after_a_cancel_is_refused(s):
    s.batches.open_batch("b", "p")
    with pytest.raises(Exception, match="batch 'b' already exists for pipeline 'p'"):
        s.batches.open_batch("b", "other")
    s.batches.cancel("b")
    with pytest.raises(Exception, match="batch 'b' was cancelled; submit under another --batch-id"):
        s.batches.open_batch("b", "p")


def test_cancelling_a_finished_batch_leaves_it_finished(s):
    # Given a batch whose whole input was submitted and every job has its result (none here)
    s.batches.open_batch("b", "p")
    s.batches.mark_submitted("b", 0)
    # When it is cancelled: it stays as it was, and says it had finished
    record = s.batches.cancel("b")
    assert record.finished and s.batches.batch("b").state == "submitted"


def test_a_job_is_leased_once_recorded_once_and_a_repeated_write_is_not_counted_twice(s):
    run = s.batches.open_batch("b", "p")
    register(s, "b", [("a", 1)], run)
    lease = take(s, "a", token="w1")
    assert lease.code is LeaseCode.GO and JobPayload.from_json("a", lease.payload).job.fields == {"n": 1}
    assert take(s, "a", token="w2").code is LeaseCode.HELD        # a duplicate message: nothing to do
    assert final(s, "a", "w1", record=b'{"id":"a"}').counted
    again = final(s, "a", "w1", record=b'{"id":"a"}')             # the same write retried after a lost reply
    assert again.counted and again.repeated
    late = final(s, "a", "w2", cost=70)                           # a delivery that lost its lease
    assert not late.counted
    assert take(s, "a", token="w3").code is LeaseCode.DONE
    info = s.batches.batch("b").counters
    assert info["done"] == 1 and info["cost"] == 100 and info["cost_duplicate"] == 70
    assert ResultStream(s.redis, s.keys.namespace).read_all() == [b'{"id":"a"}']
    assert s.batches.pipeline_counters("p")["cost"] == 100
    assert s.redis.zcard(s.keys.leased) == 0 and not s.redis.hexists(s.keys.live("b"), "a")


def test_an_escalation_moves_the_job_to_the_next_tier_with_its_new_payload(s):
    run = s.batches.open_batch("b", "p")
    register(s, "b", [("a", 1)], run)
    take(s, "a", token="w1")
    recorded = escalate(s, "a", "w1")
    assert recorded.counted and recorded.seq == 1                 # the first message of the frontier queue
    assert take(s, "a", tier=0, token="w2").code is LeaseCode.STALE   # the cheap step is recorded
    lease = take(s, "a", tier=1, token="w3", seq=recorded.seq)
    assert lease.code is LeaseCode.GO and orjson.loads(lease.payload)["h"] == [{"tier": "cheap"}]
    assert s.batches.queued_jobs("frontier") == 0 and int(s.redis.get(s.keys.tier_taken("frontier"))) == 1


def test_a_reservation_belongs_to_the_job_a_redelivery_replaces_it_and_recording_releases_it(s):
    run = s.batches.open_batch("b", "p", budget_nanos=1000)
    register(s, "b", [("a", 1), ("c", 2)], run, prompt_tokens=10)
    # 10 prompt tokens at 20 nanos + 400 per call: 600 each
    assert take(s, "a", token="w1", per_token=20.0, per_call=400).reserved_nanos == 600
    assert take(s, "c", token="w2", per_token=20.0, per_call=400).code is LeaseCode.NO_BUDGET
    # the first lease is lost (its worker died) and the reconciler takes it over: the reservation is released
    expiry = s.redis.zscore(s.keys.leased, A)
    [claimed] = s.sweeps.claim(LADDER, [("b", "a", f"L{expiry!r}")])
    assert claimed.job_id == "a" and claimed.step == 0
    assert s.batches.batch("b").counters["reserved"] == 0
    assert take(s, "a", token="w3", per_token=20.0, per_call=400).reserved_nanos == 600
    assert s.batches.batch("b").counters["reserved"] == 600       # replaced, not added
    final(s, "a", "w3", cost=200)
    assert s.batches.batch("b").counters["reserved"] == 0


def test_a_released_job_waits_again_without_counting_the_delivery(s):
    run = s.batches.open_batch("b", "p", budget_nanos=10_000)
    register(s, "b", [("a", 1)], run)
    take(s, "a", token="w1", per_call=300)
    assert s.jobs.release("b", "a", "cheap", "w1", seq=1)
    assert not s.jobs.release("b", "a", "cheap", "w1", seq=1)     # only the holder can, once
    assert s.batches.batch("b").counters["reserved"] == 0
    assert s.redis.zscore(s.keys.queued("cheap"), A) == 1
    assert take(s, "a", token="w2").deliveries == 1


def test_a_job_delivered_too_often_is_poison_and_a_cancelled_batch_cancels(s):
    run = s.batches.open_batch("b", "p")
    register(s, "b", [("a", 1), ("c", 2)], run)
    for token in ("w1", "w2"):
        take(s, "a", token=token, max_deliveries=2)
        s.jobs.release("b", "a", "cheap", token, 1)
        s.redis.hset(s.keys.live("b"), "a", s.redis.hget(s.keys.live("b"), "a").replace(b"|0|0|", b"|2|0|"))
    assert take(s, "a", token="w3", max_deliveries=2).code is LeaseCode.POISON
    s.batches.cancel("b")
    assert take(s, "c", token="w4").code is LeaseCode.CANCELLED
    assert take(s, "nope", token="w5").code is LeaseCode.UNKNOWN


def test_a_claim_takes_a_job_over_once_and_skips_one_that_finished(s):
    run = s.batches.open_batch("b", "p")
    register(s, "b", [("a", 1), ("c", 2), ("d", 3)], run)
    take(s, "a", token="w1")
    expiry = s.redis.zscore(s.keys.leased, A)
    due = [("b", "a", f"L{expiry!r}"), ("b", "c", "Q2.0")]
    first = s.sweeps.claim(LADDER, due)
    assert [(c.job_id, c.step, c.seq) for c in first] == [("a", 0, 4), ("c", 0, 5)]
    assert s.sweeps.claim(LADDER, due) == []                      # a second sweeper finds nothing left
    assert s.batches.batch("b").counters["republished"] == 2
    take(s, "d", token="w2")
    final(s, "d", "w2")
    assert s.sweeps.claim(LADDER, [("b", "d", "L0")]) == []


def test_retry_puts_failed_jobs_back_where_they_stopped_and_takes_their_final_counters_back(s):
    run = s.batches.open_batch("b", "p")
    register(s, "b", [("a", 1), ("c", 2)], run)
    take(s, "a", token="w1")
    escalate(s, "a", "w1", cost=10)
    take(s, "a", tier=1, token="w2", seq=1)
    final(s, "a", "w2", tier=1, cost=500, counters=[("status:failed", 1), ("final:frontier", 1),
                                                    ("counterfactual", 900)], keep="failed|1|frontier|900")
    take(s, "c", token="w3")
    final(s, "c", "w3", counters=[("status:accepted", 1)])
    s.batches.mark_submitted("b", 0)
    assert s.batches.batch("b").finished
    [kept] = list(s.batches.kept_jobs("b", ["failed"]))
    assert (kept.job_id, kept.status, kept.step) == ("a", "failed", 1)
    payload = JobPayload.from_json("a", kept.payload).retried().to_json()
    assert s.batches.retry_jobs("b", "p", LADDER, [(kept, payload)]) == [("a", 1, 2)]
    info = s.batches.batch("b").counters
    assert info["done"] == 1 and info["status:failed"] == 0 and info["counterfactual"] == 0
    assert info["cost"] == 610 and info["retried"] == 1            # what was spent stays spent
    assert not s.batches.batch("b").finished
    lease = take(s, "a", tier=1, token="w4", seq=2)
    assert lease.code is LeaseCode.GO and orjson.loads(lease.payload)["r"] == 1
    assert s.batches.retry_jobs("b", "p", LADDER, [(kept, payload)]) == []   # taken once


def test_results_reach_the_writers_group_in_order_and_leave_once_acked(s):
    run = s.batches.open_batch("b", "p")
    register(s, "b", [(str(i), i + 1) for i in range(5)], run)
    stream = ResultStream(s.redis, s.keys.namespace)
    stream.ensure_group()
    for i in range(5):
        take(s, str(i), token=f"w{i}")
        final(s, str(i), f"w{i}", record=str(i).encode())
    first = stream.read("writer-1", count=3, block_ms=0)
    assert [r for _, r in first] == [b"0", b"1", b"2"]
    assert [r for _, r in stream.read("writer-2", block_ms=0)] == [b"3", b"4"]
    stream.ack([i for i, _ in first])
    assert stream.length() == 2
    assert s.batches.keys.ledger_batches and stream.batches_to_sync() == ["b"]


def test_batch_ids_that_would_make_unsafe_keys_are_refused(s):
    with pytest.raises(Exception, match="batch id 'a b': use 1-128 letters"):
        s.batches.open_batch("a b", "p")


def test_counters_travel_packed_and_free_text_names_cannot_break_them(s):
    s.batches.open_batch("b", "p")
    register(s, "b", [("a", 1)])
    take(s, "a")
    # a reject reason is free text: a tab or line break in it must not split or merge counters
    assert final(s, "a", cost=7, counters=[("reject:cheap:json:bad\tthing\nhere", 2), ("zero", 0),
                                           ("negative", -3)]).counted
    info = s.batches.batch("b").counters
    assert info["reject:cheap:json:bad thing here"] == 2 and info["negative"] == -3 and info["cost"] == 7
    assert "zero" not in info
    assert s.batches.pipeline_counters("p")["reject:cheap:json:bad thing here"] == 2


@pytest.mark.parametrize("last", ["job", "producer"])
def test_a_finished_batch_expires_after_its_retention_and_a_resubmission_keeps_it(s, last):
    # Given stores that keep finished batches for an hour, and a batch of two jobs
    s.batches.retention_ms = s.jobs.retention_ms = 3_600_000
    keys = [s.keys.batch("b"), s.keys.jobs("b")]
    s.batches.open_batch("b", "p")
    register(s, "b", [("a", 1), ("c", 2)])
    if last == "job":
        s.batches.mark_submitted("b", 0)
    take(s, "a", token="w1")
    final(s, "a", "w1")
    assert [s.redis.pttl(k) for k in keys] == [-1, -1]          # not finished: kept
    # When the last job finishes (or the producer marks the input read after it did)
    take(s, "c", token="w2")
    final(s, "c", "w2")
    if last == "producer":
        assert s.redis.pttl(keys[0]) == -1
        s.batches.mark_submitted("b", 0)
    # Then the record and the job states expire together, an hour later
    assert all(3_590_000 < s.redis.pttl(k) <= 3_600_000 for k in keys)
    # and a resubmission under the same id makes them permanent again until it finishes
    s.batches.open_batch("b", "p")
    assert [s.redis.pttl(k) for k in keys] == [-1, -1]


def test_workers_register_beat_and_vanish_when_their_heartbeat_stops(s):
    from cascade.worker.store import WorkerInfo

    s.sweeps.register_worker(WorkerInfo("cheap@h-1", "cheap", 4), liveness_ms=60_000)
    s.sweeps.register_worker(WorkerInfo("mid@h-2", "mid", 2), liveness_ms=60_000)
    assert {w.worker_id for w in s.sweeps.live_workers()} == {"cheap@h-1", "mid@h-2"}
    s.redis.delete(s.keys.worker("mid@h-2"))                       # its heartbeat lapsed
    assert [w.worker_id for w in s.sweeps.live_workers()] == ["cheap@h-1"]
    assert not s.redis.hexists(s.keys.workers, "mid@h-2")


def test_a_stopped_tier_is_stopped_once_and_a_registering_worker_clears_it(s):
    from cascade.worker.store import WorkerInfo

    assert s.sweeps.stop_tier("cheap", "openai 401: bad key")
    assert not s.sweeps.stop_tier("cheap", "openai 401: bad key")   # said once
    assert s.sweeps.stopped_tiers(["cheap", "mid"]) == {"cheap": "openai 401: bad key"}
    s.sweeps.register_worker(WorkerInfo("cheap@h-3", "cheap", 4), liveness_ms=60_000)
    assert s.sweeps.tier_stopped("cheap") is None
