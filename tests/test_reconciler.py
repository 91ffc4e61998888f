"""The reconciler's three rules on real Redis and fakeredis: an expired lease, an overtaken message, a queue's
tail. Each job is published again once, and an escalation whose publish failed is found the same way."""

from __future__ import annotations

import time
import uuid

import fakeredis
import pytest
import redis

from cascade.models import Job
from cascade.worker.config import load_settings
from cascade.worker.messages import JobPayload, JobRef
from cascade.worker.reconciler import Reconciler
from cascade.worker.store import BatchStore, JobStore, Registration, SweepStore, WorkerInfo, pack_counters
from tests.helpers import ScriptedProvider, copy_config, one_job


class Sent:
    """A dispatcher that records what it publishes."""

    def __init__(self, fail: bool = False):
        self.refs: list[JobRef] = []
        self.fail = fail

    def send(self, ref, first=False):
        if self.fail:
            raise ConnectionError("broker down")
        self.refs.append(ref)

    def backlog(self, tier_name):
        return 0


@pytest.fixture(params=["redis", "fakeredis"])
def setup(request, tmp_path):
    ns = f"r{uuid.uuid4().hex[:10]}"
    client = redis.Redis.from_url(request.getfixturevalue("redis_url")) if request.param == "redis" \
        else fakeredis.FakeRedis()
    settings = load_settings(copy_config(tmp_path, lambda t: t.replace('namespace = "cascade"', f'namespace = "{ns}"')),
                             environ={})
    yield settings, client, ns
    keys = list(client.scan_iter(f"{ns}:*"))
    if keys:
        client.delete(*keys)


def submitted(settings, client, ns, n):
    store = BatchStore(client, ns)
    store.open_batch("b", "ticket-triage")
    regs = [Registration(f"j{i}", i, 0, JobPayload(Job(f"j{i}", {"subject": "s", "body": "b"}, i)).to_json())
            for i in range(n)]
    seqs = store.register_jobs("b", 1, "cheap", regs)
    store.mark_submitted("b", 0)
    return store, seqs


def reconciler(settings, client, ns, sent, queue_depth=lambda tier: 0, lease_s=15.0):
    sweeps = SweepStore(client, ns)
    sweeps.register_worker(WorkerInfo("cheap@h-1", "cheap", 4), liveness_ms=60_000)
    return Reconciler(settings, sweeps, sent, lease_s=lease_s, queue_depth=queue_depth)


def test_a_lease_nobody_renews_is_published_again_once(setup):
    settings, client, ns = setup
    submitted(settings, client, ns, 1)
    jobs = JobStore(client, ns)
    jobs.take_lease("b", "j0", 0, "cheap", 1, "dead@h-2", lease_ms=50, reserve_per_token=0.0, reserve_per_call=0,
                    max_deliveries=10)
    sent = Sent()
    sweeper = reconciler(settings, client, ns, sent, lease_s=0.01, queue_depth=lambda tier: 5)
    time.sleep(0.1)
    report = sweeper.sweep()
    assert report.expired == 1 and [r.job_id for r in sent.refs] == ["j0"]
    assert sent.refs[0].tier_index == 0 and sent.refs[0].seq == 0     # ahead of the queue: no number
    assert sweeper.sweep().total == 0                   # claimed once: a second sweep finds nothing


def test_a_message_overtaken_by_more_than_the_consumers_capacity_is_published_again(setup):
    settings, client, ns = setup
    _, seqs = submitted(settings, client, ns, 40)
    jobs = JobStore(client, ns)
    # the workers took every message but the first one (a killed worker had popped it)
    for i in range(1, 40):
        jobs.take_lease("b", f"j{i}", 0, "cheap", seqs[i], f"w{i}", lease_ms=60_000, reserve_per_token=0.0,
                        reserve_per_call=0, max_deliveries=10)
    sent = Sent()
    report = reconciler(settings, client, ns, sent, queue_depth=lambda tier: 3).sweep()
    assert report.overtaken == 1 and [r.job_id for r in sent.refs] == ["j0"]


def test_taking_a_job_published_again_does_not_make_the_messages_it_jumped_look_overtaken(setup):
    settings, client, ns = setup
    _, seqs = submitted(settings, client, ns, 40)
    jobs = JobStore(client, ns)
    sent = Sent()
    sweeper = reconciler(settings, client, ns, sent, queue_depth=lambda tier: 30)
    # one job is claimed (its message was lost), published ahead of the queue and taken at once
    [_] = sweeper.sweeps.claim(settings.pipeline("ticket-triage").ladder, [("b", "j0", f"Q{seqs[0]!r}")])
    jobs.take_lease("b", "j0", 0, "cheap", 0, "w0", lease_ms=60_000, reserve_per_token=0.0, reserve_per_call=0,
                    max_deliveries=10)
    # then the 39 ordinary messages behind it are not due
    assert sweeper.sweep().overtaken == 0 and sent.refs == []


def test_jobs_still_queued_at_an_empty_queue_on_two_sweeps_are_published_again(setup):
    settings, client, ns = setup
    submitted(settings, client, ns, 3)
    sent = Sent()
    sweeper = reconciler(settings, client, ns, sent)
    assert sweeper.sweep().total == 0                   # the first look only remembers them
    report = sweeper.sweep()
    assert report.tail == 3 and sorted(r.job_id for r in sent.refs) == ["j0", "j1", "j2"]
    assert sweeper.sweep().total == 0                   # new numbers: seen once again before anything else


def test_an_escalation_whose_publish_failed_is_recorded_and_published_by_the_reconciler(setup):
    settings, client, ns = setup
    provider = ScriptedProvider(lambda r, n: "not json")
    job = Job("j1", {"subject": "Refund", "body": "charged twice"}, 1)
    engine, store, ref = one_job(settings, {"cheap": provider}, job, client=client, dispatcher=Sent(fail=True),
                                 namespace=ns)
    # When the cheap answer is rejected and the broker refuses the escalation's message
    assert engine.handle(ref) == "escalated"
    # Then the attempt and its cost are counted, and the job waits on the next tier, where the reconciler finds it
    info = store.batch("b").counters
    assert info["attempts:cheap"] == 1 and info["cost"] == info["cost:cheap"] > 0
    sweeps = SweepStore(client, ns)
    sweeps.register_worker(WorkerInfo("mid@h-1", "mid", 2), liveness_ms=60_000)
    sent = Sent()
    sweeper = Reconciler(settings, sweeps, sent, lease_s=15.0, queue_depth=lambda tier: 0)
    sweeper.sweep()
    sweeper.sweep()
    assert [(r.job_id, r.tier_index) for r in sent.refs] == [("j1", 1)]


def test_record_pack_is_what_record_lua_reads():
    assert pack_counters([("a", 1), ("b", 0), ("c\td", -2)]) == "a\t1\nc d\t-2"
