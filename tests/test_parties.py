"""Persons and households (spark_app/parties.py): the contract of the parties table, number-change chains,
the party rollup with joint exits, the fit of the joint-exit share and the party intervals."""

from __future__ import annotations

import datetime as dt
import logging

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from spark_app.config import PathsConfig, load_settings
from spark_app.contract import InputContractError
from spark_app.errors import EXIT_USER_ERROR, UserError
from spark_app.parties import (
    APPROXIMATE_RHO,
    CUSTOMER,
    GENERATION,
    HOUSEHOLD_LEVEL,
    PERSON_LEVEL,
    Coverage,
    apply_party_interval,
    approximate_rho,
    attach_parties,
    continuation_roots,
    coverage_of,
    dedupe_continuations,
    fit_joint_exit_share,
    party_interval_edges,
    party_partition,
    party_rollup,
    party_scores_root,
    read_parties,
    validate_parties,
)

JAN, FEB, MAR, APR = (dt.date(2024, m, 1) for m in (1, 2, 3, 4))
SCHEMA = (
    "subscriber_id string, report_month date, person_id string, household_id string, "
    "previous_subscriber_id string"
)

# A valid table: a family (p1, household h1) whose line a becomes a2 in February, and p2 without household
VALID = [
    ("a", JAN, "p1", "h1", None),
    ("b", JAN, "p1", "h1", None),
    ("c", JAN, "p2", None, None),
    ("a2", FEB, "p1", "h1", "a"),
    ("b", FEB, "p1", "h1", None),
    ("c", FEB, "p2", None, None),
]


def parties(spark, rows, schema=SCHEMA):
    return spark.createDataFrame(rows, schema)


# ---------------------------------------------------------------- the contract
def test_a_valid_table_passes(spark):
    validate_parties(parties(spark, VALID), [JAN, FEB])


# One table that breaks every rule once, each with ids of its own (validated once for all the tests below)
BROKEN = {
    "null subscriber id": (
        [(None, JAN, "p3", None, None)],
        ["parties: column 'subscriber_id' is null: 1 rows in months [2024-01], e.g. 1 rows in 2024-01"],
    ),
    "null person id": (
        [("d", FEB, None, None, None)],
        ["parties: column 'person_id' is null: 1 rows in months [2024-02], e.g. d in 2024-02"],
    ),
    "duplicate key": (
        [("c", FEB, "p2", None, None)] + [(f"s{i}", FEB, f"q{i}", None, None) for i in range(8)] * 2,
        ["parties: duplicate (subscriber_id, report_month) keys: 9 keys in months [2024-02], e.g. ("],
    ),
    "subscriber in two persons": (
        [("b", FEB, "p9", "h1", None)],
        ["parties: a subscriber in two persons in one month: 1 subscriber-months in months [2024-02], "
         "e.g. b in 2024-02: p1, p9"],
    ),
    "person in two households": (
        [("e", FEB, "p1", "h7", None)],
        ["parties: a person in two households in one month (none counts as one): 2 person-months in months "
         "[2024-01, 2024-02]", "p1 in 2024-02: h1, h7"],
    ),
    "person with and without a household": (
        [("g", JAN, "pg", "h2", None), ("g2", JAN, "pg", None, None)],
        ["pg in 2024-01: h2, none"],
    ),
    "successor cycle": (
        [("x", JAN, "p5", None, "y"), ("y", FEB, "p5", None, "x")],
        ["parties: a successor cycle (an id continues itself through previous_subscriber_id): 3 ids in "
         "months [2024-01, 2024-02]", "x → y → x", "y → x → y"],
    ),
    "self-reference": ([("z", FEB, "p6", None, "z")], ["z → z"]),
    "an id continued by two subscribers": (
        [("f", FEB, "p7", None, "a")],
        ["parties: an id continued by two subscribers: 1 ids in months [2024-02], e.g. a: a2, f"],
    ),
    "a subscriber continuing two ids": (
        [("k", JAN, "p8", None, "m1"), ("k", FEB, "p8", None, "m2")],
        ["parties: a subscriber continuing two ids (two previous_subscriber_id values): 1 ids in months "
         "[2024-01], e.g. k: m1, m2"],
    ),
    "months missing": ([], ["parties: months missing [2024-03] (the table starts 2024-01"]),
}  # fmt: skip


@pytest.fixture(scope="module")
def every_rule_broken(spark) -> InputContractError:
    rows = VALID + [row for extra, _ in BROKEN.values() for row in extra]
    with pytest.raises(InputContractError) as err:
        validate_parties(parties(spark, rows), [JAN, FEB, MAR])
    return err.value


@pytest.mark.parametrize("rule", list(BROKEN))
def test_each_broken_rule_is_named_with_its_months_and_ids_in_one_exit_2_error(every_rule_broken, rule):
    assert every_rule_broken.exit_code == EXIT_USER_ERROR
    for text in BROKEN[rule][1]:
        assert text in str(every_rule_broken)


def test_a_rule_names_at_most_five_example_ids(every_rule_broken):
    line = next(x for x in str(every_rule_broken).splitlines() if "duplicate" in x)
    assert line.split("e.g. ")[1].count("(") == 5


def test_a_rule_broken_alone_is_the_one_problem_named(spark):
    extra, expected = BROKEN["person with and without a household"]
    with pytest.raises(InputContractError) as err:
        validate_parties(parties(spark, VALID + extra), [JAN, FEB])
    assert expected[0] in str(err.value) and len(str(err.value).splitlines()) == 2


def test_missing_and_mistyped_columns_are_named_before_any_data_check(spark):
    no_household = parties(spark, VALID).drop("household_id")
    with pytest.raises(InputContractError, match="parties: column 'household_id' is missing"):
        validate_parties(no_household, [JAN, FEB])
    numeric_person = parties(spark, VALID).withColumn("person_id", F.lit(1))
    with pytest.raises(InputContractError, match="parties: column 'person_id' has type int, expected string"):
        validate_parties(numeric_person, [JAN, FEB])


# ---------------------------------------------------------------- coverage
def test_months_before_the_first_month_fall_back_and_later_gaps_are_missing():
    cov = coverage_of([FEB, APR], [JAN, FEB, MAR, APR])
    assert cov == Coverage(first_month=FEB, covered=(FEB, APR), fallback=(JAN,), missing=(MAR,))
    assert "parties: months missing [2024-03] (the table starts 2024-02" in cov.problems()[0]
    assert coverage_of([], [JAN]).fallback == (JAN,) and not coverage_of([], [JAN]).problems()


def test_a_table_that_starts_late_is_valid_for_earlier_months(spark):
    validate_parties(parties(spark, [r for r in VALID if r[1] == FEB]), [JAN, FEB])


def test_a_table_that_stopped_arriving_is_an_error_for_the_new_month(spark):
    with pytest.raises(InputContractError, match=r"parties: months missing \[2024-03\]"):
        validate_parties(parties(spark, VALID), [MAR])


def test_read_parties_reads_the_covered_months_and_refuses_a_gap(spark, tmp_path):
    later = {JAN: FEB, FEB: MAR}
    table = parties(spark, [(s, later[m], p, h, prev) for s, m, p, h, prev in VALID])
    table.write.partitionBy("report_month").parquet(str(tmp_path / "parties"))
    got, cov = read_parties(spark, str(tmp_path / "parties"), [JAN, FEB, MAR])
    assert cov.fallback == (JAN,) and cov.covered == (FEB, MAR)
    assert sorted({r.report_month for r in got.select("report_month").collect()}) == [FEB, MAR]
    with pytest.raises(InputContractError, match=r"months missing \[2024-04\]"):
        read_parties(spark, str(tmp_path / "parties"), [MAR, APR])


# ---------------------------------------------------------------- chains
def test_a_chain_of_number_changes_resolves_to_its_first_id(spark):
    rows = [
        ("a", JAN, "p1", None, None),
        ("b", FEB, "p1", None, "a"),
        ("c", MAR, "p1", None, "b"),
        ("n", MAR, "p2", None, "o"),  # o is known only as n's predecessor
        ("solo", MAR, "p3", None, None),
    ]
    roots = continuation_roots(parties(spark, rows))
    got = {r.subscriber_id: (r[CUSTOMER], r[GENERATION]) for r in roots.collect()}
    assert got == {
        "a": ("a", 0), "b": ("a", 1), "c": ("a", 2), "o": ("o", 0), "n": ("o", 1), "solo": ("solo", 0)
    }  # fmt: skip


def test_a_successor_cycle_is_an_exit_2_error_naming_its_ids(spark):
    rows = [("a", JAN, "p1", None, "b"), ("b", FEB, "p1", None, "a"), ("c", FEB, "p2", None, None)]
    with pytest.raises(InputContractError) as err:
        continuation_roots(parties(spark, rows))
    assert err.value.exit_code == EXIT_USER_ERROR
    assert "a successor cycle" in str(err.value) and "a → b → a" in str(err.value)


def test_a_chain_longer_than_the_bound_is_an_error_naming_it(spark):
    rows = [("a", JAN, "p", None, None), ("b", FEB, "p", None, "a"), ("c", MAR, "p", None, "b")]
    assert continuation_roots(parties(spark, rows), max_chain=2).count() == 3
    with pytest.raises(
        InputContractError, match=r"a chain of more than 1 number changes: 1 ids .* c → b → a"
    ):
        continuation_roots(parties(spark, rows), max_chain=1)


def test_old_and_new_id_in_one_month_count_once_keeping_the_newest(spark):
    table = parties(
        spark,
        [
            ("a", JAN, "p1", None, None),
            ("b", FEB, "p1", None, "a"),
            ("c", MAR, "p1", None, "b"),
            ("x", FEB, "p2", None, None),
        ],
    )
    base = spark.createDataFrame(
        [("a", JAN, 1.0), ("a", FEB, 2.0), ("b", FEB, 3.0), ("x", FEB, 4.0), ("a", MAR, 5.0), ("b", MAR, 6.0),
         ("c", MAR, 7.0)],
        "subscriber_id string, feature_month date, amount double",
    )  # fmt: skip
    got = dedupe_continuations(base, continuation_roots(table), "feature_month")
    assert got.columns == ["subscriber_id", "feature_month", "amount", CUSTOMER]
    rows = sorted((r.feature_month, r.subscriber_id, r[CUSTOMER], r.amount) for r in got.collect())
    assert rows == [
        (JAN, "a", "a", 1.0),
        (FEB, "b", "a", 3.0),  # a and b in February: b continues a
        (FEB, "x", "x", 4.0),
        (MAR, "c", "a", 7.0),  # a, b and c in March: c, whom nobody continues
    ]


# ---------------------------------------------------------------- rollup
SCORES = (
    "subscriber_id string, score_month date, release_version int, cltv double, cltv_24m double, "
    "p_active_12m double"
)
MEMBER_SCORES = [
    ("s1", FEB, 7, 100.0, 40.0, 0.9),
    ("s2", FEB, 7, 50.0, 20.0, 0.5),
    ("s3", FEB, 7, 10.0, 5.0, 0.2),
    ("s4", FEB, 7, 30.0, 12.0, 0.6),
    ("s5", FEB, 7, 8.0, 3.0, 0.7),  # no party row: its own person, no household
]
MEMBER_PARTIES = [
    ("s1", FEB, "p1", "h1", None),
    ("s2", FEB, "p1", "h1", None),
    ("s3", FEB, "p2", "h1", None),
    ("s4", FEB, "p3", None, None),
]


def rollup(spark, level, rho):
    scores = spark.createDataFrame(MEMBER_SCORES, SCORES)
    month = parties(spark, MEMBER_PARTIES).drop("report_month")
    return party_rollup(
        scores, month, level, ["cltv", "cltv_24m"], {"p_active_12m": "p_active_12m"}, {"p_active_12m": rho}
    )


def test_person_rollup_sums_values_and_counts_members(spark):
    got = rollup(spark, PERSON_LEVEL, 0.0)
    assert got.columns == [
        "party_id", "score_month", "release_version", "members", "cltv", "cltv_24m", "p_active_12m"
    ]  # fmt: skip
    rows = {
        r.party_id: (r.members, r.cltv, r.cltv_24m, r.score_month, r.release_version) for r in got.collect()
    }
    assert rows == {
        "p1": (2, 150.0, 60.0, FEB, 7),
        "p2": (1, 10.0, 5.0, FEB, 7),
        "p3": (1, 30.0, 12.0, FEB, 7),
        "s5": (1, 8.0, 3.0, FEB, 7),  # without a party row: the subscriber is the person
    }


def test_subscribers_without_household_are_absent_from_the_household_level(spark):
    rows = rollup(spark, HOUSEHOLD_LEVEL, 0.0).collect()
    assert [(r.party_id, r.members, r.cltv) for r in rows] == [("h1", 3, 160.0)]


@pytest.mark.parametrize(
    ("rho", "expected"),
    [
        (0.0, 1 - 0.1 * 0.5 * 0.8),  # independent: 1 − Π(1 − p)
        (1.0, 0.9),  # comonotone: the most loyal member
        (0.4, 0.4 * 0.9 + 0.6 * (1 - 0.1 * 0.5 * 0.8)),
    ],
)
def test_household_survival_mixes_joint_and_independent_exits(spark, rho, expected):
    (row,) = rollup(spark, HOUSEHOLD_LEVEL, rho).collect()
    assert row.p_active_12m == pytest.approx(expected, abs=1e-12)


def test_a_single_member_party_survives_as_its_member_under_any_rho(spark):
    for rho in (0.0, 1.0):
        rows = {r.party_id: r.p_active_12m for r in rollup(spark, PERSON_LEVEL, rho).collect()}
        assert rows["p2"] == pytest.approx(0.2) and rows["s5"] == pytest.approx(0.7)


def test_each_level_rolls_up_in_one_shuffle(spark):
    scores = attach_parties(
        spark.createDataFrame(MEMBER_SCORES, SCORES), parties(spark, MEMBER_PARTIES).drop("report_month")
    ).localCheckpoint()
    for level in (PERSON_LEVEL, HOUSEHOLD_LEVEL):
        got = party_rollup(scores, None, level, ["cltv"], {"p_active_12m": "p_12"}, {"p_active_12m": 0.5})
        plan = got._jdf.queryExecution().executedPlan().toString()
        assert plan.count("Exchange") == 1, plan


def test_a_survival_column_without_rho_is_refused(spark):
    scores = spark.createDataFrame(MEMBER_SCORES, SCORES)
    with pytest.raises(ValueError, match="no joint-exit share rho"):
        party_rollup(scores, None, PERSON_LEVEL, ["cltv"], {"p_active_12m": "p_active_12m"}, {})


# ---------------------------------------------------------------- the joint-exit share
def simulated_history(rho: float, households: int, seed: int) -> pd.DataFrame:
    """Households of 2–5 members, each in the base h months later with probability p (calibrated); with
    probability rho the household's exit is joint (one uniform draw decides every member), else each
    member's own draw does."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, 6, households)
    party = np.repeat(np.arange(households), sizes)
    p = rng.uniform(0.3, 0.7, len(party))
    joint = (rng.random(households) < rho)[party]
    draw = np.where(joint, rng.random(households)[party], rng.random(len(party)))
    return pd.DataFrame(
        {
            "party_id": [f"h{i}" for i in party],
            "subscriber_id": [f"s{i}" for i in range(len(party))],
            "p_in_base_h": p,
            "in_base_h": (draw < p).astype(int),
        }
    )


@pytest.mark.parametrize("rho", [0.25, 0.75])
def test_the_joint_exit_share_is_recovered_from_simulated_households(spark, rho):
    history = spark.createDataFrame(simulated_history(rho, households=5000, seed=int(rho * 100)))
    assert fit_joint_exit_share(history, 12) == pytest.approx(rho, abs=0.05)


def test_single_member_parties_carry_no_information_on_the_joint_share(spark, caplog):
    history = spark.createDataFrame(
        [("h1", "s1", 0.5, 0), ("h2", "s2", 0.4, 1)],
        "party_id string, subscriber_id string, p_in_base_h double, in_base_h int",
    )
    with caplog.at_level(logging.WARNING, logger="spark_app.parties"):
        assert fit_joint_exit_share(history, 12) == APPROXIMATE_RHO
    assert "approximated as rho = 0.5" in caplog.text


def test_a_release_without_parties_approximates_rho_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="spark_app.parties"):
        assert approximate_rho() == APPROXIMATE_RHO
    assert "trained without parties" in caplog.text


# ---------------------------------------------------------------- party intervals
def test_party_intervals_cover_new_parties_at_their_level():
    rng = np.random.default_rng(5)

    def parties_of(n: int) -> tuple[np.ndarray, np.ndarray]:
        predicted = rng.lognormal(5.0, 1.0, n)
        return predicted * rng.lognormal(0.0, 0.4, n) - 20 * rng.random(n), predicted

    edges = party_interval_edges(*parties_of(2000), level=0.8)
    realized, predicted = parties_of(50_000)
    inside = (realized >= predicted + predicted * edges[0]) & (realized <= predicted + predicted * edges[1])
    assert 0.78 <= inside.mean() <= 0.83


def test_few_held_out_parties_widen_the_edges_to_the_extremes():
    """19 residuals at 90 %: ranks ⌊20·0.05⌋ = 1 and ⌈20·0.95⌉ = 19 are the extremes, not the 5 %/95 %
    quantiles."""
    predicted = np.full(19, 100.0)
    realized = predicted * (1 + np.linspace(-0.5, 0.4, 19))
    assert party_interval_edges(realized, predicted, 0.9) == pytest.approx((-0.5, 0.4))


def test_apply_party_interval_scales_the_edges_by_the_party_value(spark):
    df = spark.createDataFrame([("h1", 100.0), ("h2", -50.0)], "party_id string, cltv double")
    got = {
        r.party_id: (r.cltv_lower, r.cltv_upper)
        for r in apply_party_interval(df, (-0.2, 0.3), "cltv").collect()
    }
    assert got == {"h1": pytest.approx((80.0, 130.0)), "h2": pytest.approx((-60.0, -35.0))}


# ---------------------------------------------------------------- where party scores live
@pytest.mark.parametrize(
    ("scores", "expected"),
    [
        ("work/scores", "work/party_scores"),
        ("hdfs://nn/x/scores/", "hdfs://nn/x/party_scores"),
        ("file:///scores", "file:///party_scores"),
        ("/scores", "/party_scores"),
        ("scores", "party_scores"),
    ],
)
def test_party_scores_default_beside_the_scores(scores, expected):
    assert party_scores_root(PathsConfig(scores=scores)) == expected


def test_a_configured_party_scores_path_wins_but_never_inside_the_scores():
    assert party_scores_root(PathsConfig(scores="s/scores", party_scores="hdfs://nn/p/")) == "hdfs://nn/p"
    with pytest.raises(UserError, match=r"must not be inside paths\.scores"):
        party_scores_root(PathsConfig(scores="s/scores", party_scores="s/scores/parties"))
    with pytest.raises(UserError, match="filesystem root"):
        party_scores_root(PathsConfig(scores="hdfs://nn"))


def test_party_partition_is_level_then_score_month():
    assert party_partition("w/party_scores/", HOUSEHOLD_LEVEL, FEB) == (
        "w/party_scores/level=household/score_month=2024-02-01"
    )
    with pytest.raises(ValueError, match="level"):
        party_partition("w", "family", FEB)


def test_parties_are_unset_by_default():
    paths = load_settings(None, environ={}).paths
    assert paths.parties is None and paths.party_scores is None
