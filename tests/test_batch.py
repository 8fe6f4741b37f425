"""What the scoring pass counts as it goes (no Spark): the summary statistics that replaced re-reading the
month must agree with a direct computation."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from spark_app.batch import HOLDOUT, BatchStats, StatsAccumulator, inputs_from_arrow, merged


def test_cltv_quantiles_from_the_histogram_within_half_a_percent_of_exact():
    rng = np.random.default_rng(7)
    cltv = np.concatenate([rng.lognormal(6.5, 1.2, 40_000), -rng.lognormal(3.0, 1.0, 2_000), np.zeros(500)])
    stats = BatchStats()
    for chunk in np.array_split(rng.permutation(cltv), 7):  # batch by batch, as the tasks add them
        stats.add_cltv(chunk)
    got = stats.quantiles((0.01, 0.1, 0.5, 0.9, 0.99))
    for q, value in got.items():
        exact = float(np.quantile(cltv, int(q[1:]) / 100, method="inverted_cdf"))
        assert value == pytest.approx(exact, rel=0.005, abs=0.01), q
    assert stats.cltv_sum == pytest.approx(cltv.sum())


def test_non_finite_cltv_is_left_out_of_the_sum_and_histogram():
    stats = BatchStats()
    stats.add_cltv(np.array([1.0, np.nan, np.inf, 3.0]))
    assert stats.cltv_sum == 4.0
    assert int(stats.cltv_histogram.sum()) == 2


def test_task_stats_merge_and_a_retried_task_replaces_its_partition():
    first, retried, other = BatchStats(rows=10, null_ids=1), BatchStats(rows=12), BatchStats(rows=5)
    acc = StatsAccumulator()
    total = acc.addInPlace(acc.addInPlace(acc.addInPlace(acc.zero({}), {0: first}), {1: other}), {0: retried})
    assert merged(total).rows == 17
    assert merged(total).null_ids == 0


def test_inputs_count_missing_non_finite_and_unseen_values():
    seen = {"region": {"north"}}
    plan_like = SimpleNamespace(input_cols=("arpu", "region"), categorical=("region",), seen=seen)
    batch = pa.RecordBatch.from_arrays(
        [
            pa.array(["a", "b", None, "d"]),
            pa.array([1.0, None, float("inf"), 1e300]),
            pa.array(["north", "south", None, "south"]),
            pa.array([False, True, False, False]),
        ],
        names=["subscriber_id", "arpu", "region", HOLDOUT],
    )
    stats = BatchStats()
    inputs = inputs_from_arrow(batch, plan_like, stats)
    assert stats.null_ids == 1
    assert stats.missing == {"arpu": 1, "region": 1}
    assert stats.non_finite == {"arpu": 2}  # inf, and a double beyond float32
    assert stats.unseen == {"region": 2}
    assert np.isnan(inputs.numeric["arpu"][1:]).all()
    codes, values = inputs.categorical["region"]
    assert [values[c] if c >= 0 else None for c in codes] == ["north", "south", None, "south"]


def test_subscribers_beyond_the_training_ranges_are_counted_per_horizon_and_feature():
    """Ranges are the 0.5..99.5 % quantiles per horizon; a tenure longer than any seen at h is counted."""
    from spark_app.batch import BatchStats, FeatureRanges

    rng = np.random.default_rng(0)
    train = pd.DataFrame({"horizon": np.repeat([1, 2], 1000), "tenure": np.concatenate(
        [rng.uniform(0, 10, 1000), rng.uniform(0, 20, 1000)]), "price": rng.uniform(5, 6, 2000)})  # fmt: skip
    ranges = FeatureRanges.fit(train, ["tenure", "price"], 2)
    again = FeatureRanges.from_json(json.loads(json.dumps(ranges.to_json())))
    stats = BatchStats()
    numeric = {"tenure": np.array([5.0, 15.0, 30.0, np.nan]), "price": np.array([5.5, 5.5, 5.5, 9.0])}
    again.count_outside(numeric, stats)
    # h1: 15 and 30 beyond tenure, the 4th row's price; h2: 30, and the price
    assert list(stats.outside_by_horizon) == [3, 2]
    assert stats.outside_by_feature == {"tenure": 2, "price": 1}
    merged = BatchStats().merge(stats).merge(stats)
    assert list(merged.outside_by_horizon) == [6, 4]
