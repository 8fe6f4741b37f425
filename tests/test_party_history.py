"""History follows the customer across number changes, and households stay on one side of every split
(issue 22 steps 2 and 5), on DataFrames of a few rows built here.

The story of every test: customer "a" joined in 2023-03 (tenure 10 in 2024-01) and changed its number in
2024-06 — the new id "b" continues it (previous_subscriber_id = a), both ids in the base in 2024-06, "a"
gone after. "c" shares a's household (another person, a home-internet line). "z" is alone.
"""

from __future__ import annotations

import datetime as dt

import pytest
from pyspark.sql import functions as F

from spark_app.catalog import (
    PARTY_HOME_INTERNET,
    PARTY_HOUSEHOLD_LINES,
    PARTY_HOUSEHOLD_TENURE,
    PARTY_PERSON_LINES,
    ModelCatalog,
    ModelEntry,
)
from spark_app.dataset import DatasetPlan, PartyInputs, training_rows
from spark_app.parties import (
    CUSTOMER,
    carry_tenure,
    chain_members,
    continued_in_month,
    customer_starts,
    newest_per_customer,
    party_feature_rows,
    with_customer,
)

D = dt.date
MONTHS = [D(2024, m, 1) for m in range(1, 11)]
CHANGE = D(2024, 6, 1)

CATALOG = ModelCatalog(
    (
        ModelEntry("paid", "classification", "in_paid_base", ("tenure", "segment")),
        ModelEntry("sm", "regression", "sm", ("tenure",), carrier="paid"),
    ),
    categorical=("segment",),
    tenure_column="tenure",
    home_internet=("segment", ("fmc", "fttb")),
)


def feature_rows() -> list[tuple]:
    rows = []
    for i, m in enumerate(MONTHS):
        if m <= CHANGE:
            rows.append(("a", m, 10.0 + i, "mobile"))
        if m >= CHANGE:
            rows.append(("b", m, float(MONTHS.index(m) - MONTHS.index(CHANGE)), "mobile"))
        rows.append(("c", m, 30.0 + i, "fmc"))
        rows.append(("z", m, 5.0 + i, "mobile"))
    return rows


def party_rows() -> list[tuple]:
    rows = []
    for sid, m, *_ in feature_rows():
        person = {"a": "P1", "b": "P1", "c": "P2", "z": "P9"}[sid]
        household = None if sid == "z" else "H1"
        rows.append((sid, m, person, household, "a" if sid == "b" else None))
    return rows


def fact_rows() -> list[tuple]:
    return [(sid, m, 1, 1, 30.0) for sid, m, *_ in feature_rows() if not (sid == "a" and m == CHANGE)]


@pytest.fixture(scope="module")
def tables(spark):
    features = spark.createDataFrame(
        feature_rows(), "subscriber_id string, report_month date, tenure double, segment string"
    )
    parties = spark.createDataFrame(
        party_rows(),
        "subscriber_id string, report_month date, person_id string, household_id string, "
        "previous_subscriber_id string",
    )
    facts = spark.createDataFrame(
        fact_rows(),
        "subscriber_id string, report_month date, in_paid_base int, in_active_base int, sm double",
    )
    chains = chain_members(parties).localCheckpoint()
    starts = customer_starts(features, parties, chains, "tenure").localCheckpoint()
    return features, parties, facts, chains, starts


def plan(target: dt.date, horizon: int, *, test_share: float = 0.1) -> DatasetPlan:
    """One target month and one horizon: every customer's slot is (target, horizon)."""
    return DatasetPlan((target,), (horizon,), "cltv", 1.0, "base", 0.1, test_share, 0.5)


def test_a_chain_maps_every_id_to_its_first_and_the_customer_started_when_its_first_id_did(tables):
    _, _, _, chains, starts = tables
    assert {tuple(r) for r in chains.collect()} == {("b", "a", 1), ("a", "a", 0)}
    (start,) = starts.collect()
    assert start[CUSTOMER] == "a"
    assert start["customer_start"] == 2023 * 12 + 2  # 2023-03: 2024-01 (index 2024*12) − tenure 10


def test_a_continuing_id_carries_its_customers_tenure_and_the_first_id_keeps_its_own(spark, tables):
    features, _, _, chains, starts = tables
    carried = features.transform(with_customer, chains=chains).transform(
        carry_tenure, starts=starts, tenure_column="tenure", month_col="report_month"
    )
    got = {(r.subscriber_id, r.report_month): r.tenure for r in carried.collect()}
    assert got[("b", D(2024, 8, 1))] == 17.0  # 2023-03 → 2024-08, not the new id's own 2
    assert got[("a", D(2024, 3, 1))] == 12.0  # unchanged
    assert got[("z", D(2024, 8, 1))] == 12.0  # not in a chain: unchanged


def test_an_old_and_a_new_id_in_one_month_count_once_as_the_newest(spark, tables):
    features, _, _, chains, _ = tables
    month = features.where(F.col("report_month") == CHANGE)
    kept = month.transform(with_customer, chains=chains).transform(
        newest_per_customer, month_col="report_month"
    )
    assert sorted(r.subscriber_id for r in kept.collect()) == ["b", "c", "z"]
    dropped = continued_in_month(month.select("subscriber_id"), chains)
    assert [r.subscriber_id for r in dropped.collect()] == ["a"]


def rows_of(spark, tables, target: dt.date, horizon: int, party: bool = True) -> dict[str, dict]:
    features, parties, facts, chains, starts = tables
    inputs = PartyInputs(parties, chains, starts) if party else None
    built = training_rows(features, facts, plan=plan(target, horizon), catalog=CATALOG, party=inputs)
    return {r.subscriber_id: r.asDict() for r in built.collect()}


def test_the_target_follows_the_customer_to_its_new_id(spark, tables):
    # features of 2024-04 (id a), target 2024-08 (only id b is in the base): the customer is still there
    with_parties = rows_of(spark, tables, D(2024, 8, 1), 4)
    assert with_parties["a"]["paid_fact"] == 1 and with_parties["a"]["sm_fact"] == pytest.approx(30.0 / 31)
    # without parties the same row looks like a churner
    alone = rows_of(spark, tables, D(2024, 8, 1), 4, party=False)
    assert alone["a"]["paid_fact"] == 0 and alone["a"]["sm_fact"] == 0.0


def test_a_customer_enters_once_as_its_newest_id_with_the_carried_tenure(spark, tables):
    # features of 2024-06, the overlap month: a and b are both in the base; the customer enters once, as b
    rows = rows_of(spark, tables, D(2024, 7, 1), 1)
    assert set(rows) == {"b", "c", "z"}
    assert rows["b"][CUSTOMER] == "a" and rows["b"]["tenure"] == 15.0
    assert rows["b"]["household_id"] == "H1" and rows["z"]["household_id"] is None
    assert rows["z"]["person_id"] == "P9"


def test_members_of_a_household_share_their_split(spark, tables):
    # a test share of 0.5 puts about half of the split keys in test: the household's two lines go together
    features, parties, facts, chains, starts = tables
    for share in (0.3, 0.5, 0.7):
        built = training_rows(
            features, facts, plan=plan(D(2024, 9, 1), 2, test_share=share), catalog=CATALOG,
            party=PartyInputs(parties, chains, starts),
        ).where(F.col("household_id") == "H1")  # fmt: skip
        assert built.count() == 2 and built.select("split").distinct().count() == 1


def test_party_features_count_customers_and_read_the_household(spark, tables):
    features, parties, _, chains, starts = tables
    got = party_feature_rows(
        parties, features, chains=chains, starts=starts, tenure_column="tenure",
        home_internet=("segment", ("fmc", "fttb")),
    )  # fmt: skip
    by = {(r.subscriber_id, r.report_month): r for r in got.collect()}
    overlap = by[("b", CHANGE)]
    assert overlap[PARTY_PERSON_LINES] == 1.0  # a and b are one customer
    assert overlap[PARTY_HOUSEHOLD_LINES] == 2.0  # that customer and c
    assert overlap[PARTY_HOME_INTERNET] == 1.0  # c is an fmc line
    assert overlap[PARTY_HOUSEHOLD_TENURE] == 35.0  # c's 30 + 5 beats the customer's carried 15
    alone = by[("z", CHANGE)]
    assert (alone[PARTY_HOUSEHOLD_LINES], alone[PARTY_HOME_INTERNET]) == (1.0, 0.0)
