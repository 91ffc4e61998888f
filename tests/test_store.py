"""The batch store's Lua scripts, the same suite on real Redis and on fakeredis."""

from __future__ import annotations

import uuid

import fakeredis
import pytest
import redis

from cascade.worker.store import BatchStore, Begin


@pytest.fixture(params=["redis", "fakeredis"])
def store(request):
    ns = f"t{uuid.uuid4().hex[:10]}"
    if request.param == "fakeredis":
        yield BatchStore(fakeredis.FakeRedis(), ns)
        return
    client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
    yield BatchStore(client, ns)
    keys = list(client.scan_iter(f"{ns}:*"))
    if keys:
        client.delete(*keys)


def finish(store, job, tier, final, cost=100, record=b"{}", counters=()):
    return store.finish_attempt("b", "p", job, tier_index=tier, release_nanos=0, cost_nanos=cost, final=final,
                                record=record, counters=[("cost", cost), *counters])


def test_register_publishes_new_ids_and_names_duplicates_by_line(store):
    run = store.open_batch("b", "p")
    assert store.register_jobs("b", run, [("a", 1), ("b", 2), ("a", 3)]) == [1, 1, -1]
    assert store.batch("b").counters["total"] == 2


def test_a_second_run_skips_what_the_first_published(store):
    run1 = store.open_batch("b", "p")
    store.register_jobs("b", run1, [("a", 1), ("b", 2)])
    store.mark_published("b", run1, 2)
    run2 = store.open_batch("b", "p")
    assert run2 == run1 + 1
    assert store.register_jobs("b", run2, [("a", 1), ("b", 2), ("c", 3)]) == [0, 0, 1]
    assert store.batch("b").counters["total"] == 3


def test_rows_registered_but_never_confirmed_published_are_republished(store):
    # Given a run that registered two rows and stopped before confirming the publish of the second
    run1 = store.open_batch("b", "p")
    store.register_jobs("b", run1, [("a", 1), ("b", 2)])
    store.mark_published("b", run1, 1)
    # When the batch is resubmitted
    run2 = store.open_batch("b", "p")
    # Then only the unconfirmed row is published again, and it counts once in the total
    assert store.register_jobs("b", run2, [("a", 1), ("b", 2)]) == [0, 1]
    assert store.batch("b").counters["total"] == 2


def test_reopening_a_batch_for_another_pipeline_is_refused(store):
    store.open_batch("b", "p")
    with pytest.raises(Exception, match="batch 'b' already exists for pipeline 'p'"):
        store.open_batch("b", "other")


def test_finalize_happens_once_and_a_duplicate_counts_only_its_cost(store):
    run = store.open_batch("b", "p")
    store.register_jobs("b", run, [("a", 1)])
    assert store.begin_attempt("b", "a", 0, 0) is Begin.GO
    assert finish(store, "a", 0, final=True, record=b'{"id":"a"}') is True
    assert store.begin_attempt("b", "a", 0, 0) is Begin.DONE
    assert finish(store, "a", 0, final=True, cost=70) is False
    info = store.batch("b").counters
    assert info["done"] == 1 and info["cost"] == 100 and info["cost_duplicate"] == 70
    assert [r for _, r in store.read_results("b")] == [b'{"id":"a"}']
    assert store.pipeline_counters("p")["cost"] == 100


def test_an_escalated_tier_is_not_run_again_on_redelivery(store):
    run = store.open_batch("b", "p")
    store.register_jobs("b", run, [("a", 1)])
    assert finish(store, "a", 0, final=False) is True
    assert store.begin_attempt("b", "a", 0, 0) is Begin.COUNTED
    assert store.begin_attempt("b", "a", 1, 0) is Begin.GO


def test_an_escalation_recorded_after_the_next_tier_finished_still_counts(store):
    # the next tier's worker can finish before this one records its escalation (dispatch comes first)
    run = store.open_batch("b", "p")
    store.register_jobs("b", run, [("a", 1)])
    assert finish(store, "a", 1, final=True, cost=500) is True
    assert finish(store, "a", 0, final=False, cost=100) is True
    info = store.batch("b").counters
    assert info["cost"] == 600 and info["done"] == 1 and info.get("cost_duplicate", 0) == 0


def test_budget_reservations_block_calls_that_do_not_fit(store):
    run = store.open_batch("b", "p", budget_nanos=1000)
    store.register_jobs("b", run, [("a", 1), ("c", 2)])
    assert store.begin_attempt("b", "a", 0, 600) is Begin.GO
    assert store.begin_attempt("b", "c", 0, 600) is Begin.NO_BUDGET     # 600 reserved + 600 > 1000
    store.finish_attempt("b", "p", "a", tier_index=0, release_nanos=600, cost_nanos=200, final=True,
                         counters=[("cost", 200)])
    assert store.batch("b").counters["reserved"] == 0
    assert store.begin_attempt("b", "c", 0, 600) is Begin.GO            # 200 spent + 600 <= 1000


def test_results_are_read_in_order_and_deleted_once_written(store):
    run = store.open_batch("b", "p")
    store.register_jobs("b", run, [(str(i), i + 1) for i in range(5)])
    for i in range(5):
        finish(store, str(i), 0, final=True, record=str(i).encode())
    first = store.read_results("b", count=3)
    assert [r for _, r in first] == [b"0", b"1", b"2"]
    rest = store.read_results("b", after=first[-1][0])
    assert [r for _, r in rest] == [b"3", b"4"]
    store.delete_results("b", [i for i, _ in first])
    assert [r for _, r in store.read_results("b")] == [b"3", b"4"]


def test_batch_ids_that_would_make_unsafe_keys_are_refused(store):
    with pytest.raises(Exception, match="batch id 'a b': use 1-128 letters"):
        store.open_batch("a b", "p")


def test_counters_travel_packed_and_free_text_names_cannot_break_them(store):
    store.open_batch("b", "p")
    store.register_jobs("b", 1, [("a", 1)])
    # a reject reason is free text: a tab or line break in it must not split or merge counters
    assert finish(store, "a", 0, True, cost=7, counters=[("reject:cheap:json:bad\tthing\nhere", 2),
                                                         ("zero", 0), ("negative", -3)])
    info = store.batch("b").counters
    assert info["reject:cheap:json:bad thing here"] == 2 and info["negative"] == -3 and info["cost"] == 7
    assert "zero" not in info
    assert store.pipeline_counters("p")["reject:cheap:json:bad thing here"] == 2


@pytest.mark.parametrize("last", ["job", "producer"])
def test_a_finished_batch_expires_after_its_retention_and_a_resubmission_keeps_it(store, last):
    # Given a store that keeps finished batches for an hour, and a batch of two jobs
    store.retention_ms = 3_600_000
    keys = [store.keys.batch("b"), store.keys.jobs("b"), store.keys.results("b")]
    store.open_batch("b", "p")
    store.register_jobs("b", 1, [("a", 1), ("c", 2)])
    if last == "job":
        store.mark_submitted("b", 0)
    finish(store, "a", 0, True)
    assert [store.redis.pttl(k) for k in keys] == [-1, -1, -1]      # not finished: kept
    # When the last job finishes (or the producer marks the input read after it did)
    finish(store, "c", 0, True)
    if last == "producer":
        assert store.redis.pttl(keys[0]) == -1
        store.mark_submitted("b", 0)
    # Then the record, the job states and the results expire together, an hour later
    assert all(3_590_000 < store.redis.pttl(k) <= 3_600_000 for k in keys)
    # and a resubmission under the same id makes them permanent again until it finishes
    store.open_batch("b", "p")
    assert [store.redis.pttl(k) for k in keys] == [-1, -1, -1]


def test_without_retention_a_finished_batch_stays(store):
    store.open_batch("b", "p")
    store.register_jobs("b", 1, [("a", 1)])
    store.mark_submitted("b", 0)
    finish(store, "a", 0, True)
    assert store.redis.pttl(store.keys.batch("b")) == -1
