"""benchmarks.tuning_study's diagnostic of where a fit's accuracy margin goes (`--buckets`)."""

from __future__ import annotations

import orjson

from benchmarks import tuning_study


def test_buckets_group_every_job_reaching_a_tier_by_its_calibrated_value(tmp_path, capsys):
    # Given: the two-tier synthetic set, split 300 / 1700
    profiles = tuning_study.synthetic_profiles(seed=2, costs=(5, 100), skills=(0.3, 1.5))
    train = [tuning_study.part(p, list(range(300))) for p in profiles]
    test = [tuning_study.part(p, list(range(300, 2000))) for p in profiles]
    # When: the buckets of the default fit are read
    found = tuning_study.buckets(train, test)
    # Then: every job reaches the first tier, once, and the groups it accepts are the highest values
    rows = found["t0"]
    assert sum(r["train"]["jobs"] for r in rows if "train" in r) == 300
    assert sum(r["test"]["jobs"] for r in rows if "test" in r) == 1700
    accepted = [r["value"] for r in rows if r["accepted"]]
    escalated = [r["value"] for r in rows if not r["accepted"]]
    assert accepted and min(accepted) >= max(escalated)
    # a rounded value on both sides is the one the threshold falls inside, split at it
    fit, _ = tuning_study.S.choose_ladder(train, tuning_study.calibrated(train, train), tuning_study.TARGET, True)
    assert set(accepted) & set(escalated) <= {round(fit.thresholds[0], 2)}
    # and the top group's figures are what its rows say (every job reaches the first tier)
    cal = tuning_study.calibrated(train, train)[0]
    top = [i for i, v in enumerate(cal) if round(v, 2) == rows[-1]["value"]]
    assert rows[-1]["train"] == {"jobs": len(top),
                                 "accuracy": round(sum(train[0].correct[i] for i in top) / len(top), 3),
                                 "last_tier": round(sum(train[1].correct[i] for i in top) / len(top), 3)}

    # When: the benchmark is asked for them on that case alone (no recorded sets in the folder)
    assert tuning_study.main(["--buckets", "--cases", "synthetic_2", "--datasets", str(tmp_path)]) == 0
    out = capsys.readouterr()
    summary = orjson.loads(out.out.splitlines()[-1])
    # Then: one JSON line with the case's tiers, and a table on stderr
    assert summary["study"] == "buckets" and list(summary["cases"]) == ["synthetic_2"]
    assert sum(r["train"]["jobs"] for r in summary["cases"]["synthetic_2"]["t0"] if "train" in r) == 300
    assert "synthetic_2: t0, jobs reaching it, by calibrated value" in out.err


def test_fixed_sequence_stops_at_the_first_threshold_that_fails_and_keeps_the_last_that_passed():
    from cascade.tuning import search as S
    from cascade.tuning.profile import TierProfile

    # Given: a cheap tier right on its 150 surest answers (calibrated 1.0) and wrong on the rest (0.0)
    n = 300
    right = [i < 150 for i in range(n)]
    cheap = TierProfile("cheap", True, [True] * n, [1.0 if r else 0.0 for r in right], [True] * n, [1] * n,
                        [1] * n, right, "cheap")
    last = TierProfile("last", True, [True] * n, [0.9] * n, [True] * n, [100] * n, [100] * n, [True] * n, "last")
    cal = [[1.0 if r else 0.0 for r in right], [0.9] * n]
    # When: the path is tested from the highest threshold down
    best = tuning_study.fixed_sequence([cheap, last], cal, tuning_study.TARGET)
    # Then: 1.0 passes (no loss), 0.0 fails (half the batch lost), so the cheap tier answers at 1.0
    assert best.kept == (0, 1) and best.thresholds == (1.0, S.FLAG_THRESHOLD)
    assert best.cost == n * 1 + 150 * 100 and best.correct == n
