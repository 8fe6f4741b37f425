"""Persons and households: the optional `parties` table, number-change chains, and party-level scores.

A telecom customer is a person, often a household, holding several subscriber ids (SIMs, contracts) that
change over time. The `parties` table (`paths.parties`; Parquet, Hive-partitioned by `report_month`) says,
per month, which person and household every subscriber belongs to and which id it continues after a
number or contract change. This module holds the pure pieces the jobs build on:

- the contract (`validate_parties`, `coverage`): one InputContractError naming the rule, months and ids;
- continuation chains (`continuation_roots`, `dedupe_continuations`): history follows a number change,
  and an old and a new id of one customer in the base in one month count once;
- the party rollup (`party_rollup`): members' expected values add; the probability that a party keeps at
  least one member is NOT computed as if members churned independently (one move ends every line of a
  household) but with a common-shock mixture whose share ρ of joint exits is fitted from history
  (`fit_joint_exit_share`);
- party intervals (`party_interval_edges`, `apply_party_interval`): split-conformal on held-out parties,
  because the interval of a sum is not the sum of the members' intervals;
- where party scores live (`party_scores_root`, `party_partition`).

Without the table (`paths.parties` unset) nothing here runs and everything stays per subscriber.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, Row, SparkSession, Window
from pyspark.sql import functions as F

from spark_app.batch import RELEASE_DIGEST
from spark_app.catalog import (
    PARTY_HOME_INTERNET,
    PARTY_HOUSEHOLD_LINES,
    PARTY_HOUSEHOLD_TENURE,
    PARTY_PERSON_LINES,
)
from spark_app.config import PathsConfig
from spark_app.contract import (
    DATE,
    STRING,
    InputContractError,
    TableSpec,
    month_dirs,
    raise_problems,
    read_table,
    schema_problems,
)
from spark_app.contract import ID as SUBSCRIBER
from spark_app.errors import UserError
from spark_app.intervals import conformal_offsets
from spark_app.layout import REPORT_MONTH, SCORE_MONTH, partition
from spark_app.months import describe_months, fmt
from spark_app.storage import Storage

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- names, declared once
TABLE = "parties"
MONTH = REPORT_MONTH
PERSON = "person_id"
HOUSEHOLD = "household_id"
PREVIOUS = "previous_subscriber_id"  # the id this subscriber continues after a number / contract change
CUSTOMER = "customer_id"  # the earliest id of a continuation chain: what history follows
GENERATION = "generation"  # links from the chain's first id (0 = the first id itself)
PARTY = "party_id"
MEMBERS = "members"
LEVEL = "level"  # partition column of the party scores (level=person / level=household)
PERSON_LEVEL, HOUSEHOLD_LEVEL = "person", "household"
LEVELS = (PERSON_LEVEL, HOUSEHOLD_LEVEL)
LEVEL_COLUMN = {PERSON_LEVEL: PERSON, HOUSEHOLD_LEVEL: HOUSEHOLD}
PARTY_SCORES = "party_scores"  # default directory of the party scores, beside paths.scores
RELEASE_VERSION = "release_version"
CARRIED = (RELEASE_VERSION, RELEASE_DIGEST)  # constant per scored month: carried from the member rows

PARTIES_SPEC = TableSpec(
    TABLE, {SUBSCRIBER: STRING, MONTH: DATE, PERSON: STRING, HOUSEHOLD: STRING, PREVIOUS: STRING}
)

MAX_EXAMPLES = 5  # ids named per broken rule
DEFAULT_MAX_CHAIN = 24  # number changes one customer may chain; more is an error (a loop in the source?)
P_CLIP = 1e-12  # p clipped to [0, 1 − P_CLIP] so that log1p(−p) stays finite

# What happens when the table covers only recent months (decided by `coverage_of`, applied by callers)
COVERAGE_RULE = (
    "months before the parties table's first month are taken per subscriber (person = the subscriber "
    "itself, no household, no predecessor); from its first month on, every month needs rows"
)


# ---------------------------------------------------------------- coverage
@dataclass(frozen=True)
class Coverage:
    """How the table covers the months asked for (see COVERAGE_RULE).

    `first_month` is the table's first month with rows (None: no rows at all); `fallback` the months asked
    for before it (per subscriber, by rule: a table that starts late is not an error, operators rarely have
    party history as long as the billing history); `covered` the months asked for with rows; `missing`
    the months asked for from `first_month` on without rows — an error, since a gap (or a table that
    stopped arriving) would silently turn persons back into subscribers."""

    first_month: dt.date | None
    covered: tuple[dt.date, ...]
    fallback: tuple[dt.date, ...]
    missing: tuple[dt.date, ...]

    def problems(self) -> list[str]:
        if not self.missing or self.first_month is None:
            return []
        return [
            f"{TABLE}: months missing {describe_months(list(self.missing))} (the table starts "
            f"{fmt(self.first_month)}; {COVERAGE_RULE})"
        ]


def coverage_of(present: Iterable[dt.date], months: Sequence[dt.date]) -> Coverage:
    """The coverage of `months` by a table whose months with rows are `present` (e.g. from the directory
    listing, `contract.month_dirs`, without reading any file)."""
    have = set(present)
    first = min(have) if have else None
    wanted = sorted(set(months))
    return Coverage(
        first_month=first,
        covered=tuple(m for m in wanted if m in have),
        fallback=tuple(m for m in wanted if first is None or m < first),
        missing=tuple(m for m in wanted if first is not None and m > first and m not in have),
    )


def coverage(parties: DataFrame, months: Sequence[dt.date]) -> Coverage:
    """`coverage_of` the months with rows in `parties` (one light job over the month column). Pass the whole
    table: a frame read for `months` only cannot tell a table that starts late from one that stopped."""
    present = [r[MONTH] for r in parties.select(MONTH).distinct().collect()]
    return coverage_of(present, months)


# ---------------------------------------------------------------- reading and validation
def read_parties(
    spark: SparkSession, path: str, months: Sequence[dt.date]
) -> tuple[DataFrame | None, Coverage]:
    """The table's covered months among `months` (None when none is covered: all fall back per subscriber)
    and the coverage, from the directory listing; months missing after the first are an InputContractError
    before any file is read. Validate the frame with `validate_parties` before use."""
    storage = Storage(spark)
    if not storage.exists(path):
        raise InputContractError(f"{TABLE}: cannot read {path}: no such directory (paths.{TABLE})")
    dirs, _ = month_dirs(storage, path, TABLE)
    cov = coverage_of(dirs, months)
    raise_problems(cov.problems())
    if cov.fallback:
        log.warning(
            "%s: months %s are before the table's first month %s: %s", TABLE,
            describe_months(list(cov.fallback)), fmt(cov.first_month) if cov.first_month else "(none)",
            COVERAGE_RULE,
        )  # fmt: skip
    if not cov.covered:
        return None, cov
    return read_table(spark, path, TABLE, list(cov.covered)), cov


@dataclass(frozen=True)
class _Rule:
    """One contract rule checked over a keyed frame: which rows break it and how to name one."""

    text: str  # what is wrong
    unit: str  # what is counted
    broken: Column
    example: Callable[[Row], str]
    weight: Column | None = None  # counted per row of the keyed frame unless given


def _rule_problems(
    keyed: DataFrame, rules: list[_Rule], also: Sequence[Column] = ()
) -> tuple[list[str], Row]:
    """Every rule counted in one aggregation over `keyed` (with the `also` aggregates, returned in the same
    row); when some are broken, one more job gathers their months (column `at`) and up to MAX_EXAMPLES
    rows of each (a window per broken rule, ranked by month)."""
    aggs = []
    for i, rule in enumerate(rules):
        weight = F.lit(1) if rule.weight is None else rule.weight
        aggs.append(F.coalesce(F.sum(F.when(rule.broken, weight)), F.lit(0)).alias(f"n{i}"))
    found = keyed.agg(*aggs, *also).first()
    broken = [i for i in range(len(rules)) if found[f"n{i}"]]
    if not broken:
        return [], found
    which = F.array(*[F.when(F.coalesce(rules[i].broken, F.lit(False)), F.lit(i)) for i in broken])
    per_rule = Window.partitionBy("_rule")
    examples = (
        keyed.withColumn("_rule", F.explode(F.filter(which, lambda x: x.isNotNull())))
        .withColumn("_months", F.collect_set("at").over(per_rule))
        .withColumn("_rank", F.row_number().over(per_rule.orderBy("at")))
        .where(F.col("_rank") <= MAX_EXAMPLES)
        .collect()
    )
    problems = []
    for i in broken:
        rows = [r for r in examples if r["_rule"] == i]
        months = describe_months(sorted(rows[0]["_months"]))
        shown = "; ".join(rules[i].example(r) for r in rows)
        problems.append(
            f"{TABLE}: {rules[i].text}: {found[f'n{i}']} {rules[i].unit} in months {months}, e.g. {shown}"
        )
    return problems, found


# the keys the contract constrains, as (kind, key, month, value): one groupBy checks them all
SUBSCRIBER_MONTH, PERSON_MONTH, CONTINUES, CONTINUED = "subscriber", "person", "continues", "continued"


def _key_problems(rows: DataFrame) -> tuple[list[str], int]:
    """Every rule but the chains', in one scan and one groupBy: each row is spread (explode) into the keys
    it constrains — (subscriber, month) → person; (person, month) → household; subscriber → the id it
    continues; id → the subscriber continuing it, the last two over all months — and a key breaks a rule
    when its values differ (min ≠ max) or are partly null. A null household beside a non-null one counts
    as a second household (the household level would hold part of the person). Also returns how many ids
    continue another: without any, there is no chain to follow."""
    no_month = F.lit(None).cast("date")
    entries = F.array(
        *[
            F.struct(
                F.lit(kind).alias("kind"),
                F.col(key).alias("key"),
                month.alias(MONTH),
                F.col(value).alias("value"),
            )
            for kind, key, month, value in (
                (SUBSCRIBER_MONTH, SUBSCRIBER, F.col(MONTH), PERSON),
                (PERSON_MONTH, PERSON, F.col(MONTH), HOUSEHOLD),
                (CONTINUES, SUBSCRIBER, no_month, PREVIOUS),
                (CONTINUED, PREVIOUS, no_month, SUBSCRIBER),
            )
        ]
    )  # fmt: skip
    kind, key, value = F.col("kind"), F.col("key"), F.col("value")
    spread = (
        rows.select(F.col(MONTH).alias("at"), F.explode(entries).alias("e"))
        .select("at", "e.*")
        .where(
            (kind == SUBSCRIBER_MONTH)
            | ((kind == PERSON_MONTH) & key.isNotNull())
            | (key.isNotNull() & value.isNotNull())
        )
    )
    keyed = spread.groupBy("kind", "key", MONTH).agg(
        F.count(F.lit(1)).alias("n"),
        F.count("value").alias("with_value"),
        F.min("value").alias("lo"),
        F.max("value").alias("hi"),
        F.min("at").alias("at"),
    )
    n, with_value, lo, hi = F.col("n"), F.col("with_value"), F.col("lo"), F.col("hi")
    subscriber = (kind == SUBSCRIBER_MONTH) & key.isNotNull()
    differ = F.coalesce(lo != hi, F.lit(False))

    def at(r: Row) -> str:
        return fmt(r["at"])

    problems, found = _rule_problems(
        keyed,
        [
            _Rule(
                f"column {SUBSCRIBER!r} is null", "rows", (kind == SUBSCRIBER_MONTH) & key.isNull(),
                lambda r: f"{r['n']} rows in {at(r)}", weight=n,
            ),
            _Rule(
                f"column {PERSON!r} is null", "rows", subscriber & (with_value < n),
                lambda r: f"{r['key']} in {at(r)}", weight=n - with_value,
            ),
            _Rule(
                f"duplicate ({SUBSCRIBER}, {MONTH}) keys", "keys", subscriber & (n > 1) & ~differ,
                lambda r: f"({r['key']}, {at(r)}) {r['n']} times",
            ),
            _Rule(
                "a subscriber in two persons in one month", "subscriber-months", subscriber & differ,
                lambda r: f"{r['key']} in {at(r)}: {r['lo']}, {r['hi']}",
            ),
            _Rule(
                "a person in two households in one month (none counts as one)", "person-months",
                (kind == PERSON_MONTH) & (differ | ((with_value > 0) & (with_value < n))),
                lambda r: f"{r['key']} in {at(r)}: {r['lo']}, {r['hi'] if r['hi'] != r['lo'] else 'none'}",
            ),
            _Rule(
                f"a subscriber continuing two ids (two {PREVIOUS} values)", "ids",
                (kind == CONTINUES) & differ,
                lambda r: f"{r['key']}: {r['lo']}, {r['hi']}",
            ),
            _Rule(
                "an id continued by two subscribers", "ids", (kind == CONTINUED) & differ,
                lambda r: f"{r['key']}: {r['lo']}, {r['hi']}",
            ),
        ],
        also=[F.coalesce(F.sum((kind == CONTINUES).cast("long")), F.lit(0)).alias("links")],
    )  # fmt: skip
    return problems, int(found["links"])


def _edges(rows: DataFrame) -> DataFrame:
    """(subscriber_id, previous_subscriber_id, report_month = first month the link is stated): one row per
    distinct link. Links are few (number changes), so this and what follows is small. A customer's chain
    must be one line (`_key_problems`: one predecessor and one successor per id), so that its first id
    (the customer) and its newest id (the one kept) are each one id."""
    return (
        rows.where(F.col(PREVIOUS).isNotNull() & F.col(SUBSCRIBER).isNotNull())
        .groupBy(SUBSCRIBER, PREVIOUS)
        .agg(F.min(MONTH).alias(MONTH))
    )


@dataclass(frozen=True)
class _Chains:
    """Chains followed: (subscriber_id, customer_id, generation) of every id that has a predecessor, the
    broken ones (kind, path, report_month) — cycles, and chains longer than the bound — and how many."""

    roots: DataFrame
    broken: DataFrame
    broken_count: int
    max_chain: int

    def problems(self) -> list[str]:
        if not self.broken_count:
            return []
        texts = {
            "cycle": "a successor cycle (an id continues itself through previous_subscriber_id)",
            "too long": f"a chain of more than {self.max_chain} number changes",
        }
        keyed = self.broken.withColumnRenamed(MONTH, "at")
        rules = [
            _Rule(t, "ids", F.col("kind") == k, lambda r: _show_path(r["path"])) for k, t in texts.items()
        ]
        return _rule_problems(keyed, rules)[0]


def _show_path(path: Sequence[str]) -> str:
    """'x → y → x': a chain up to the first id it meets again (a self-reference reads 'a → a')."""
    seen: set[str] = set()
    shown = []
    for node in path:
        shown.append(node)
        if node in seen:
            break
        seen.add(node)
    return " → ".join(shown)


def _follow_chains(edges: DataFrame, max_chain: int) -> _Chains:
    """Follow previous_subscriber_id from every id that has one, one self-join per link, until every chain
    reached its first id (no predecessor), met an id of its own path again (a cycle; a → a included), or
    ran over `max_chain` links. Each round is one job: its join is checkpointed (the next round reads a
    small frame) while counting the chains still open, and the loop stops when none is: rounds = the
    longest chain, usually one or two."""
    if max_chain < 1:
        raise ValueError(f"max_chain must be at least 1, got {max_chain}")
    links = edges.select(
        F.col(SUBSCRIBER).alias("_id"), F.col(PREVIOUS).alias("_previous"), F.col(MONTH).alias("_month")
    )
    state = edges.select(
        F.col(SUBSCRIBER).alias("node"), F.col(PREVIOUS).alias("head"),
        F.array(SUBSCRIBER, PREVIOUS).alias("path"), MONTH,
    )  # fmt: skip
    resolved: list[DataFrame] = []
    cycles: list[DataFrame] = []
    broken = 0
    for depth in range(1, max_chain + 1):  # `state` holds chains of `depth` links
        previous = F.col("_previous")
        step = (
            state.join(links, F.col("head") == F.col("_id"), "left")
            .select(
                "node",
                "head",
                F.concat("path", F.array(previous)).alias("path"),
                F.least(MONTH, "_month").alias(MONTH),
                previous,
                F.coalesce(F.array_contains("path", previous), F.lit(False)).alias("_loops"),
            )
            .localCheckpoint(eager=False)
        )
        counts = step.agg(
            F.coalesce(F.sum((previous.isNotNull() & ~F.col("_loops")).cast("long")), F.lit(0)).alias("open"),
            F.coalesce(F.sum(F.col("_loops").cast("long")), F.lit(0)).alias("loops"),
        ).first()  # the one job of the round: computes and keeps `step`
        resolved.append(
            step.where(previous.isNull()).select(
                F.col("node").alias(SUBSCRIBER), F.col("head").alias(CUSTOMER), F.lit(depth).alias(GENERATION)
            )
        )
        cycles.append(step.where("_loops").select(F.lit("cycle").alias("kind"), "path", MONTH))
        broken += counts["loops"]
        state = step.where(previous.isNotNull() & ~F.col("_loops")).select(
            "node", previous.alias("head"), "path", MONTH
        )
        if not counts["open"]:
            break
        if depth == max_chain:  # still open after max_chain links
            cycles.append(state.select(F.lit("too long").alias("kind"), "path", MONTH))
            broken += counts["open"]
    return _Chains(
        roots=functools.reduce(DataFrame.unionByName, resolved),
        broken=functools.reduce(DataFrame.unionByName, cycles),
        broken_count=int(broken),
        max_chain=max_chain,
    )


def validate_parties(
    parties: DataFrame,
    months: Sequence[dt.date],
    *,
    max_chain: int = DEFAULT_MAX_CHAIN,
    known: Coverage | None = None,
    follow_chains: bool = True,
) -> None:
    """Raise one InputContractError listing every way `parties` breaks the contract over `months`:
    missing or mistyped columns; null subscriber_id / person_id; duplicate (subscriber_id, report_month);
    a subscriber in two persons, or a person in two households, in one month; a subscriber continuing two
    ids or an id continued by two; a successor cycle (a → b → a, a → a); a chain longer than `max_chain`;
    months missing from the table's first month on (COVERAGE_RULE: earlier months fall back per
    subscriber). Each rule is named with its months and up to five example ids.

    Cost: one light job for the months present; one scan and one groupBy for every rule but the chains'
    (`_key_problems`); when some id continues another, one small job per chain link (`_follow_chains`);
    one more job per check only when something is broken (its months and examples). `known`: the coverage
    already read off the directory listing (`read_parties`); `follow_chains` False when the caller follows
    the chains over a longer history anyway (`chain_members` raises the same problems)."""
    problems = schema_problems(parties, PARTIES_SPEC)
    raise_problems(problems)  # the data checks need every column with its type
    cov = known if known is not None else coverage(parties, months)
    problems += cov.problems()
    rows = parties.where(F.col(MONTH).isin(list(cov.covered))).select(*PARTIES_SPEC.columns)
    if cov.covered:
        found, links = _key_problems(rows)
        problems += found
        if links and follow_chains:
            problems += _follow_chains(_edges(rows).localCheckpoint(eager=False), max_chain).problems()
    raise_problems(problems, f"months {describe_months(list(months))}" if months else "")


# ---------------------------------------------------------------- continuation chains
def continuation_roots(parties: DataFrame, max_chain: int = DEFAULT_MAX_CHAIN) -> DataFrame:
    """(subscriber_id, customer_id, generation) for every id that appears in `parties` — as a subscriber or
    only as someone's previous id —: customer_id is the first id of its chain of previous_subscriber_id
    (the id itself when it continues nobody), generation the number of links from it. This is what lets
    the history of a customer follow a number change. A cycle or a chain longer than `max_chain` is an
    InputContractError naming examples (the rest of the contract: `validate_parties`)."""
    chains = _follow_chains(_edges(parties).localCheckpoint(eager=False), max_chain)
    raise_problems(chains.problems())
    ids = (
        parties.select(SUBSCRIBER)
        .unionByName(parties.select(F.col(PREVIOUS).alias(SUBSCRIBER)))
        .where(F.col(SUBSCRIBER).isNotNull())
        .distinct()
    )
    return ids.join(chains.roots, SUBSCRIBER, "left").select(
        SUBSCRIBER,
        F.coalesce(CUSTOMER, SUBSCRIBER).alias(CUSTOMER),
        F.coalesce(GENERATION, F.lit(0)).alias(GENERATION),
    )


def dedupe_continuations(base: DataFrame, roots: DataFrame, month_col: str) -> DataFrame:
    """`base` (rows keyed by subscriber_id and `month_col`) with one row per customer and month, and the
    customer_id column added, so a customer whose old and new ids are both in the base in one month (the
    month of a number change) is counted once.

    Rule: of a customer's ids in the base in a month, the newest is kept — the one no other of them
    continues. A customer's chain is one line (validated), so that is the id of the highest generation
    present. Only ids that belong to a chain are shuffled (a window over them); every other row passes
    through, customer_id = its own id."""
    chained = roots.where(F.col(GENERATION) > 0).select(SUBSCRIBER, CUSTOMER, GENERATION)
    firsts = chained.select(F.col(CUSTOMER).alias(SUBSCRIBER), CUSTOMER, F.lit(0).alias(GENERATION))
    chain_ids = chained.unionByName(firsts).distinct()
    joined = base.join(chain_ids, SUBSCRIBER, "left")
    alone = joined.where(F.col(CUSTOMER).isNull()).withColumn(CUSTOMER, F.col(SUBSCRIBER))
    newest_first = Window.partitionBy(CUSTOMER, month_col).orderBy(F.desc(GENERATION), F.desc(SUBSCRIBER))
    kept = (
        joined.where(F.col(CUSTOMER).isNotNull())
        .withColumn("_rank", F.row_number().over(newest_first))
        .where(F.col("_rank") == 1)
        .drop("_rank")
    )
    return alone.unionByName(kept).drop(GENERATION).select(*base.columns, CUSTOMER)


def chain_members(parties: DataFrame, max_chain: int = DEFAULT_MAX_CHAIN) -> DataFrame:
    """(subscriber_id, customer_id, generation) of the ids that belong to a continuation chain only — the
    first id (generation 0) and every id continuing it — found from the links of `parties` (one small job
    per link, `_follow_chains`). Number changes are few, so this is small: broadcast it (`with_customer`).
    Leakage-safe at any month: an id's chain runs only to its predecessors, whose links were stated in the
    id's own first month or before. A cycle or an over-long chain is an InputContractError."""
    chains = _follow_chains(_edges(parties).localCheckpoint(eager=False), max_chain)
    raise_problems(chains.problems())
    successors = chains.roots.select(SUBSCRIBER, CUSTOMER, GENERATION)
    firsts = successors.select(F.col(CUSTOMER).alias(SUBSCRIBER), CUSTOMER, F.lit(0).alias(GENERATION))
    return successors.unionByName(firsts).distinct()


def with_customer(df: DataFrame, chains: DataFrame | None) -> DataFrame:
    """`df` (keyed by subscriber_id) with customer_id and generation: an id of a chain (`chain_members`) gets
    its chain's first id, every other id itself (generation 0). One broadcast join, no shuffle."""
    if chains is None:
        return df.withColumn(CUSTOMER, F.col(SUBSCRIBER)).withColumn(GENERATION, F.lit(0))
    joined = df.join(F.broadcast(chains), SUBSCRIBER, "left")
    return joined.withColumn(CUSTOMER, F.coalesce(CUSTOMER, SUBSCRIBER)).withColumn(
        GENERATION, F.coalesce(GENERATION, F.lit(0))
    )


def newest_per_customer(df: DataFrame, month_col: str) -> DataFrame:
    """One row per (customer_id, `month_col`) of rows that carry customer_id and generation (`with_customer`):
    an old and a new id of one customer both in the base in one month count once, as the newest id (the
    highest generation; a chain is one line). Only customers with two ids in one month change anything, but
    the window shuffles every row: apply it to rows already cut down (one per sampled customer)."""
    newest_first = Window.partitionBy(CUSTOMER, month_col).orderBy(F.desc(GENERATION), F.desc(SUBSCRIBER))
    return df.withColumn("_rank", F.row_number().over(newest_first)).where(F.col("_rank") == 1).drop("_rank")


def continued_in_month(ids: DataFrame, chains: DataFrame | None) -> DataFrame | None:
    """The ids of `ids` (one month's subscriber_id column) that a newer id of the same customer continues in
    the same month: the old id of a number change in its overlap month. Scoring drops them (the customer is
    scored once, as its newest id); None without chains."""
    if chains is None:
        return None
    chained = ids.select(SUBSCRIBER).join(F.broadcast(chains), SUBSCRIBER, "inner")
    newest = chained.groupBy(CUSTOMER).agg(F.max(GENERATION).alias("_newest"))
    return (
        chained.join(newest, CUSTOMER)
        .where(F.col(GENERATION) < F.col("_newest"))
        .select(SUBSCRIBER)
    )


CUSTOMER_START = "customer_start"  # month index (months.month_index) the customer's first id joined


def customer_starts(
    features: DataFrame, parties: DataFrame, chains: DataFrame, tenure_column: str
) -> DataFrame:
    """(customer_id, customer_start): the month index at which each chain's first id joined the base, read off
    that id's features row in the month before its successor's link was first stated (or in that month, when
    both were in the base): month − tenure. The tenure carried to a continuing id is then the customer's
    (`carry_tenure`). One small job for the months, then a read of those months' ids and tenure only.
    Customers whose first id has no such row (the link is stated in the features' first month) are absent:
    their ids keep their own tenure."""
    links = _edges(parties).join(F.broadcast(chains), SUBSCRIBER).where(F.col(GENERATION) == 1)
    wanted = links.select(F.col(PREVIOUS).alias(SUBSCRIBER), F.col(MONTH).alias("_link")).distinct()
    at = wanted.select(SUBSCRIBER, F.add_months("_link", -1).alias(MONTH)).unionByName(
        wanted.select(SUBSCRIBER, F.col("_link").alias(MONTH))
    )
    months = [r[MONTH] for r in at.select(MONTH).distinct().collect()]
    if not months:
        return features.sparkSession.createDataFrame([], f"{CUSTOMER} string, {CUSTOMER_START} double")
    index = F.year(MONTH) * 12 + F.month(MONTH) - 1
    rows = (
        features.where(F.col(MONTH).isin(months))
        .select(SUBSCRIBER, MONTH, F.col(tenure_column).cast("double").alias("_tenure"))
        .join(F.broadcast(at), [SUBSCRIBER, MONTH], "inner")
    )
    return rows.groupBy(F.col(SUBSCRIBER).alias(CUSTOMER)).agg(
        F.min(index - F.col("_tenure")).alias(CUSTOMER_START)
    )


def carry_tenure(
    df: DataFrame, starts: DataFrame | None, tenure_column: str | None, month_col: str
) -> DataFrame:
    """The tenure column of a continuing id (generation > 0) replaced by its customer's tenure at `month_col`:
    months since the customer's first id joined (`customer_starts`), so a number change does not make an old
    customer look new. The first id keeps its own tenure; so does an id whose customer start is unknown.
    Only the tenure carries over: the other features are the operator's, per id (trailing windows refill
    within their window). Leakage-safe: the start is read before the id's first month."""
    if starts is None or tenure_column is None or tenure_column not in df.columns:
        return df
    index = F.year(month_col) * 12 + F.month(month_col) - 1
    own = df.schema[tenure_column].dataType
    carried = (index - F.col(CUSTOMER_START)).cast(own)
    joined = df.join(F.broadcast(starts), CUSTOMER, "left")
    use = (F.col(GENERATION) > 0) & F.col(CUSTOMER_START).isNotNull()
    return joined.withColumn(tenure_column, F.when(use, carried).otherwise(F.col(tenure_column))).drop(
        CUSTOMER_START
    )


# ---------------------------------------------------------------- what a job reads
@dataclass(frozen=True)
class PartyInputs:
    """The parties table as a build reads it (paths.parties set): the covered months' rows, validated; the
    number-change chains (`parties.chain_members`, small; None without any change) and the customers'
    first months (`parties.customer_starts`, for the carried tenure)."""

    parties: DataFrame
    chains: DataFrame | None
    starts: DataFrame | None
    covered: tuple[dt.date, ...] = ()  # the months asked for that the table has (earlier: per subscriber)


def read_party_inputs(
    spark: SparkSession,
    paths: PathsConfig,
    months: list[dt.date],
    last_month: dt.date,
    tenure_column: str | None,
    *,
    validate: bool = True,
) -> PartyInputs | None:
    """The parties table for a job reading `months` (None when paths.parties is unset, or when it covers none
    of them: everything per subscriber, with the coverage warning of `parties.read_parties`).

    Validated over `months`; the number-change chains are followed over every month of the table up to
    `last_month` (a change stated before the window still carries its customer), and the customers' first
    months are read off the features of the months before their links."""
    path = paths.parties
    if path is None:
        return None
    table, cov = read_parties(spark, path, months)
    if table is None:
        return None
    if validate:  # the chains are followed below, over the history, raising what is broken in them
        validate_parties(table, months, known=cov, follow_chains=False)
    dirs, _ = month_dirs(Storage(spark), path, TABLE)
    history = read_table(spark, path, TABLE, sorted(m for m in dirs if m <= last_month))
    chains = chain_members(history).localCheckpoint()
    changes = chains.where(F.col(GENERATION) > 0).count()
    if not changes:
        log.info("parties: %s months covered, no number change", len(cov.covered))
        return PartyInputs(table, None, None, cov.covered)
    starts = None
    if tenure_column:
        features = read_table(spark, paths.features, "features")
        starts = customer_starts(features, history, chains, tenure_column).localCheckpoint()
    log.info(
        "parties: %s months covered; %s ids continue another (number changes), their customers' history "
        "and tenure followed", len(cov.covered), f"{changes:,}",
    )  # fmt: skip
    return PartyInputs(table, chains, starts, cov.covered)


# ---------------------------------------------------------------- party keys and features
SPLIT_KEY = "split_key"  # what training splits, the scoring holdout and campaign groups hash


def party_key() -> Column:
    """The unit whose members must never straddle train / test, holdout / scored or treatment / control:
    the household, else the person, else the customer (its first id), else the subscriber."""
    return F.coalesce(*[F.col(c) for c in (HOUSEHOLD, PERSON, CUSTOMER, SUBSCRIBER)])


PARTY_COLUMNS = (CUSTOMER, PERSON, HOUSEHOLD)  # what a training set built with parties adds to its rows


def party_clusters(frame: pd.DataFrame) -> np.ndarray | None:
    """Each row's household (else person, else customer, else subscriber) as the cluster of its bias noise,
    when the rows carry them (a training set built with parties); None otherwise: rows are independent."""
    if HOUSEHOLD not in frame.columns:
        return None
    key = frame[SUBSCRIBER].astype(object)
    for column in (CUSTOMER, PERSON, HOUSEHOLD):
        if column in frame.columns:
            key = frame[column].astype(object).where(frame[column].notna(), key)
    return key.astype(str).to_numpy()


def party_feature_rows(
    parties: DataFrame,
    features: DataFrame,
    *,
    chains: DataFrame | None,
    starts: DataFrame | None,
    tenure_column: str | None,
    home_internet: tuple[str, tuple[str, ...]] | None,
) -> DataFrame:
    """(subscriber_id, report_month, person_id, household_id, party features) for every row of `parties`
    whose subscriber is in `features` that month — each party feature computed from that month only, so it
    is leakage-safe wherever a feature of the same month is:

    - party_person_lines, party_household_lines: the person's / household's lines (customers: an old and
      a new id of one number change count once);
    - party_household_home_internet: 1 when a line of the household is home internet (`home_internet`:
      column, values), else 0;
    - party_household_tenure: the longest customer tenure (`carry_tenure`) among the household's lines.

    A subscriber without a household takes its person's figures. Two groupBys (person, household) and their
    joins back: a shuffle of the month's parties and features."""
    wanted = [c for c in (tenure_column, home_internet[0] if home_internet else None) if c]
    members = parties.select(SUBSCRIBER, MONTH, PERSON, HOUSEHOLD).join(
        features.select(SUBSCRIBER, MONTH, *dict.fromkeys(wanted)), [SUBSCRIBER, MONTH], "inner"
    )
    members = with_customer(members, chains)
    members = carry_tenure(members, starts, tenure_column, MONTH)
    home = (
        F.col(home_internet[0]).cast("string").isin(list(home_internet[1])).cast("int")
        if home_internet
        else F.lit(None).cast("int")
    )
    tenure = F.col(tenure_column).cast("double") if tenure_column else F.lit(None).cast("double")
    members = members.withColumn("_home", home).withColumn("_tenure", tenure)

    def figures(key: str, prefix: str) -> DataFrame:
        rows = members.where(F.col(key).isNotNull()) if key == HOUSEHOLD else members
        return rows.groupBy(key, MONTH).agg(
            F.countDistinct(CUSTOMER).alias(f"{prefix}_lines"),
            F.max("_home").alias(f"{prefix}_home"),
            F.max("_tenure").alias(f"{prefix}_tenure"),
        )

    joined = members.join(figures(PERSON, "_p"), [PERSON, MONTH], "left").join(
        figures(HOUSEHOLD, "_h"), [HOUSEHOLD, MONTH], "left"
    )
    return joined.select(
        SUBSCRIBER,
        MONTH,
        PERSON,
        HOUSEHOLD,
        F.col("_p_lines").cast("double").alias(PARTY_PERSON_LINES),
        F.coalesce("_h_lines", "_p_lines").cast("double").alias(PARTY_HOUSEHOLD_LINES),
        F.coalesce("_h_home", "_p_home").cast("double").alias(PARTY_HOME_INTERNET),
        F.coalesce("_h_tenure", "_p_tenure").alias(PARTY_HOUSEHOLD_TENURE),
    )


# ---------------------------------------------------------------- party rollup
def parties_of_month(parties: DataFrame, month: dt.date) -> DataFrame:
    """One month's rows of the table: subscriber_id, person_id, household_id."""
    return parties.where(F.col(MONTH) == F.lit(month)).select(SUBSCRIBER, PERSON, HOUSEHOLD)


def attach_parties(scores: DataFrame, parties_month: DataFrame | None) -> DataFrame:
    """Scores with person_id and household_id: a subscriber without a party row that month (or every one,
    with `parties_month` None: a month before the table's coverage) is its own person, in no household.
    Join once and roll both levels up from the result: each level is then one shuffle."""
    if parties_month is None:
        joined = scores.withColumn(PERSON, F.lit(None).cast("string")).withColumn(
            HOUSEHOLD, F.lit(None).cast("string")
        )
    else:
        joined = scores.join(parties_month.select(SUBSCRIBER, PERSON, HOUSEHOLD), SUBSCRIBER, "left")
    return joined.withColumn(PERSON, F.coalesce(PERSON, SUBSCRIBER))


def p_at_least_one(p: Column, rho: float) -> Column:
    """Aggregate: the probability that at least one member is still in the base, each member in with
    probability p, when a share ρ of exits are joint (common shock):

        P(no member left) = ρ · min_i(1 − p_i) + (1 − ρ) · Π_i(1 − p_i)

    ρ = 1: the members go together (comonotone; the party survives as its most loyal member, max p);
    ρ = 0: independent (1 − Π(1 − p), which overstates a household's survival). Π via Σ log1p(−p), p
    clipped to [0, 1 − 1e-12]."""
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"rho must lie in [0, 1], got {rho}")
    clipped = F.least(F.greatest(p.cast("double"), F.lit(0.0)), F.lit(1.0 - P_CLIP))
    independent = -F.expm1(F.sum(F.log1p(-clipped)))  # 1 − Π(1 − p)
    return F.lit(rho) * F.max(clipped) + F.lit(1.0 - rho) * independent


def party_rollup(
    scores: DataFrame,
    parties_month: DataFrame | None,
    level: str,
    value_columns: Sequence[str],
    survival: dict[str, str],
    rho: dict[str, float],
    constants: Mapping[str, Any] | None = None,
) -> DataFrame:
    """One month's subscriber scores rolled up to `level` (person or household), in one groupBy.

    Columns: party_id, score_month and the release columns when the scores have them, members, the sum of
    every `value_columns` column (expected values add: cltv, cltv_24m, the 60-month components), and per
    `survival` entry (score column → party column, e.g. p_active_12m → p_active_12m) the probability that
    at least one member is still in that base (`p_at_least_one` with rho[score column]).

    `parties_month` is the month's table rows (`parties_of_month`), or None for a month before the
    table's coverage; scores that already carry person_id / household_id (`attach_parties`, once for both
    levels) are used as they are. Subscribers without a household are absent from level=household.
    `constants`: columns known to be one value in the month (score_month, the release), added after the
    groupBy instead of grouped by."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    if PERSON not in scores.columns:
        scores = attach_parties(scores, parties_month)
    elif parties_month is not None:
        raise ValueError("scores already carry person_id / household_id: pass parties_month=None")
    missing = [c for c in [*value_columns, *survival] if c not in scores.columns]
    if missing:
        raise ValueError(f"party_rollup: the scores have no column {missing}")
    unknown = [c for c in survival if c not in rho]
    if unknown:
        raise ValueError(f"party_rollup: no joint-exit share rho for {unknown}")
    key = LEVEL_COLUMN[level]
    members = scores.where(F.col(key).isNotNull()) if level == HOUSEHOLD_LEVEL else scores
    # the month and the release are one value in the month: grouping keys when not given (a string
    # aggregate such as max(release_digest) would turn the hash aggregate into a sort-based one), else
    # literals after the groupBy (each extra key costs the shuffle and the hash ~10 %)
    constants = dict(constants or {})
    carried = [c for c in (SCORE_MONTH, *CARRIED) if c in scores.columns]
    grouped = members.groupBy(F.col(key).alias(PARTY), *[c for c in carried if c not in constants]).agg(
        F.count(F.lit(1)).alias(MEMBERS),
        *[F.sum(c).alias(c) for c in value_columns],
        *[p_at_least_one(F.col(c), rho[c]).alias(out) for c, out in survival.items()],
    )
    kinds = dict(scores.dtypes)
    return grouped.select(
        PARTY,
        *[F.lit(constants[c]).cast(kinds[c]).alias(c) if c in constants else F.col(c) for c in carried],
        *[c for c in grouped.columns if c not in (PARTY, *carried)],
    )


def read_month_parties(spark: SparkSession, path: str, month: dt.date) -> DataFrame | None:
    """The parties of one scored month (subscriber_id, person_id, household_id), read and validated against
    the whole contract (`validate_parties`) before any scoring work: a broken table is one
    InputContractError naming the rule, its month and examples. None for a month before the table's first
    month (COVERAGE_RULE: every subscriber is its own person, in no household; `read_parties` warns)."""
    table, _ = read_parties(spark, path, [month])
    if table is None:
        return None
    validate_parties(table, [month])
    return parties_of_month(table, month)


def rollup_columns(
    score_columns: Sequence[str], components: Sequence[str], survival_models: Sequence[str]
) -> tuple[list[str], dict[str, str]]:
    """What of a month's scores the rollup sums and combines, found among `score_columns` by the release's
    names (no model list here): value columns — cltv, cltv_<k>m, the cumulative value value_<k>m and each
    component's total <component>_<n>m (`components`: the value formula's, overheads included) —, and the
    survival columns p_<model>_<k>m of every `survival_models` id, each kept under its own name at party
    level (the probability that at least one member is still in that base). Bounds and the detail arrays
    are not summed: the interval of a sum is not the sum of intervals (`with_party_intervals`)."""
    totals = [re.compile(r"(cltv|value)(_[0-9]+m)?")]
    totals += [re.compile(rf"{re.escape(c)}_[0-9]+m") for c in components]
    survival = [re.compile(rf"p_{re.escape(m)}_[0-9]+m") for m in survival_models]
    values = [c for c in score_columns if any(r.fullmatch(c) for r in totals)]
    probabilities = {c: c for c in score_columns if any(r.fullmatch(c) for r in survival)}
    return values, probabilities


def joint_exit_shares(
    survival_columns: Iterable[str], fitted: Mapping[str, float] | None = None
) -> dict[str, float]:
    """ρ per survival column for `party_rollup`: the `fitted` shares (from training history,
    `fit_joint_exit_share`) where given, else the stated approximation (`approximate_rho`, with its
    warning) — a release trained without parties carries none."""
    columns = list(survival_columns)
    fitted = dict(fitted or {})
    missing = [c for c in columns if c not in fitted]
    if missing:
        why = "release trained without parties" if not fitted else f"no fitted rho for {missing}"
        rho = approximate_rho(why)
        fitted.update({c: rho for c in missing})
    return {c: float(fitted[c]) for c in columns}


def party_levels(
    attached: DataFrame,
    value_columns: Sequence[str],
    survival: dict[str, str],
    rho: Mapping[str, dict[str, float]],
    constants: Mapping[str, Any] | None = None,
) -> dict[str, DataFrame]:
    """Every level's rollup of one month's scores that already carry person_id / household_id
    (`attach_parties`, once): level → party rows, one groupBy (one shuffle) each with that level's joint-exit
    shares (`rho[level]`), sorted within its partitions (no second shuffle) so a rerun writes the same rows
    in the same order. `constants`: see `party_rollup`."""
    return {
        level: party_rollup(
            attached, None, level, value_columns, survival, rho[level], constants
        ).sortWithinPartitions(PARTY)
        for level in LEVELS
    }


VALUE_POINTS = (12, 24)  # party value_<k>m with bounds (as the subscribers', spark_app.batch)
BOUND_RATIO = (0.5, 2.5)  # CLTV bounds scale the 24-month ones by cltv / value_24m within these (intervals)


def with_party_intervals(
    parties: DataFrame, model: PartyModel | None, level: str, interval_level: float, horizons: int
) -> DataFrame:
    """Party rows (`party_rollup`) with value_<k>m_lower / _upper (k = 12, 24) from the release's party edges
    at `interval_level` for the party's size (`PartyModel.edges`: Mondrian by members) — value + |value| ·
    edge — and cltv_lower / cltv_upper from the 24-month bounds as
    `intervals.cltv_bounds` scales a subscriber's; NaN where the release fitted none (trained without
    parties, or too few held-out parties at that horizon)."""
    nan = F.lit(float("nan"))
    out = parties.withColumn("interval_level", F.lit(interval_level if model is not None else float("nan")))
    last = None
    for k in VALUE_POINTS:
        column = f"value_{k}m"
        if k > horizons or column not in parties.columns:
            continue
        sized = model.sized_edges(level, interval_level, k) if model is not None else None
        value = F.col(column)
        lower, upper = nan, nan
        if sized:
            # the party's size (1 .. MAX_SIZE, larger ones as MAX_SIZE) indexes the edges of its size
            size = F.least(F.col(MEMBERS), F.lit(MAX_SIZE)).cast("int")
            lo = F.element_at(F.array(*[F.lit(float(sized[label][0])) for label in SIZE_LABELS]), size)
            hi = F.element_at(F.array(*[F.lit(float(sized[label][1])) for label in SIZE_LABELS]), size)
            lower, upper = value + F.abs(value) * lo, value + F.abs(value) * hi
        out = out.withColumn(f"{column}_lower", lower).withColumn(f"{column}_upper", upper)
        last = column
    if last is None or "cltv" not in parties.columns:  # a release of fewer than 12 horizons: no value point
        return out.withColumn("cltv_lower", nan).withColumn("cltv_upper", nan)
    cltv, value = F.col("cltv"), F.col(last)
    ratio = F.when((cltv > 0) & (value > 0), cltv / value).otherwise(F.lit(1.0))
    ratio = F.least(F.greatest(ratio, F.lit(BOUND_RATIO[0])), F.lit(BOUND_RATIO[1]))
    return out.withColumn("cltv_lower", cltv + ratio * (F.col(f"{last}_lower") - value)).withColumn(
        "cltv_upper", cltv + ratio * (F.col(f"{last}_upper") - value)
    )


# ---------------------------------------------------------------- the joint-exit share ρ
P_IN_BASE = "p_in_base_h"  # predicted: the member is still in the base h months later
IN_BASE = "in_base_h"  # realized 0/1 (a member without facts then counts as out)
APPROXIMATE_RHO = 0.5
MIN_SEPARATION = 1e-6  # per party: Σ comonotone − Σ independent below this × parties = ρ unidentified


def approximate_rho(why: str = "the release was trained without parties") -> float:
    """APPROXIMATE_RHO (0.5), with a warning saying `why`: the share of joint exits when it could not be
    fitted (a release trained without parties and scored with them, or a history without any party of two
    or more members). It is the midpoint of what any ρ allows: a party's survival lies between the
    independent 1 − Π(1 − p) and the comonotone max p, and this is never more than half that gap away."""
    log.warning(
        "%s: the share of joint household exits is approximated as rho = %s (party survival halfway "
        "between independent and joint exits)", why, APPROXIMATE_RHO,
    )  # fmt: skip
    return APPROXIMATE_RHO


def fit_joint_exit_share(history: DataFrame, horizon_months: int) -> float:
    """ρ, the share of party exits that are joint, fitted at training from held-out history at horizon h.

    `history`: one row per (party_id, subscriber_id) with p_in_base_h (the release's prediction that the
    member is in the base h months later) and in_base_h (what happened, 0/1); a `horizon` column, if
    present, is filtered to `horizon_months`. Under the common-shock mixture the expected number of
    parties with no member left is ρ · Σ min(1 − p) + (1 − ρ) · Σ Π(1 − p), so by the method of moments

        ρ = clip((observed − Σ independent) / (Σ comonotone − Σ independent), 0, 1)

    over parties of at least two members (a single member's survival is the same under any ρ: it carries
    no information). It assumes the members' p are calibrated (a release's are, on held-out data). When the
    denominator is ~0 (every party's members are sure stayers or sure leavers, where joint and independent
    exits predict the same) ρ changes no prediction the history can check and 0.0 is returned; without
    any party of two members it falls back to `approximate_rho`.

    Fit one ρ per level (party_id = person or household) and per horizon the history reaches (12, 24
    months); the 60-month survival takes the ρ of the longest horizon fitted — the share of joint exits
    assumed not to change beyond it, stated and not verified until five years of history exist."""
    rows = history.where(F.col("horizon") == horizon_months) if "horizon" in history.columns else history
    p = F.least(F.greatest(F.col(P_IN_BASE).cast("double"), F.lit(0.0)), F.lit(1.0 - P_CLIP))
    per_party = (
        rows.groupBy(PARTY)
        .agg(
            F.count(F.lit(1)).alias("n"),
            (F.max(F.coalesce(F.col(IN_BASE), F.lit(0))) == 0).cast("double").alias("none_left"),
            F.exp(F.sum(F.log1p(-p))).alias("independent"),
            F.min(1.0 - p).alias("comonotone"),
        )
        .where(F.col("n") >= 2)
    )
    found = per_party.agg(
        F.count(F.lit(1)).alias("parties"),
        F.sum("none_left").alias("observed"),
        F.sum("independent").alias("independent"),
        F.sum("comonotone").alias("comonotone"),
    ).first()
    return rho_from_sums(
        int(found["parties"]), found["observed"], found["independent"], found["comonotone"], horizon_months
    )


def rho_from_sums(
    parties: int, observed: float, independent: float, comonotone: float, horizon_months: int, what: str = ""
) -> float:
    """The method-of-moments ρ of `fit_joint_exit_share` from its sums over parties of two or more members:
    parties with no member left observed, and expected if exits were independent / joint."""
    where = f" ({what})" if what else ""
    if not parties:
        return approximate_rho(f"no party of two or more members in the history at {horizon_months} months")
    spread = comonotone - independent
    if spread < MIN_SEPARATION * parties:
        log.info(
            "rho at %d months%s: joint and independent exits predict alike on %d parties: 0",
            horizon_months, where, parties,
        )  # fmt: skip
        return 0.0
    rho = min(max((observed - independent) / spread, 0.0), 1.0)
    log.info(
        "rho at %d months%s = %.3f from %d parties (no member left: %.0f observed, %.1f if independent, "
        "%.1f if joint)", horizon_months, where, rho, parties, observed, independent, comonotone,
    )  # fmt: skip
    return float(rho)


# ---------------------------------------------------------------- what a release fits about parties
FORECAST_CUM = "forecast_cum_{h}"  # held-out rows: a member's forecast cumulative value of months 1..h
REALIZED_CUM = "realized_cum_{h}"  # what it realized (NaN: not observable yet)
PREDICTED_P = "p:{column}"  # predicted probability behind a survival score column (p_active_12m …)
REALIZED_IN = "in:{column}"  # realized 0/1 at that horizon (NaN: not observable yet)
FEATURE_MONTH_COL = "feature_month"
MAX_SIZE = 5  # parties of this many members or more share one size (intervals, backtest, the review page)
SIZE_LABELS = (*[str(n) for n in range(1, MAX_SIZE)], f"{MAX_SIZE}+")


def size_label(members: int) -> str:
    """'1' .. '4', or '5+' members (MAX_SIZE)."""
    return f"{MAX_SIZE}+" if members >= MAX_SIZE else str(members)


def size_label_column(members: Column) -> Column:
    """`size_label` of a members column, in Spark."""
    return F.when(members >= MAX_SIZE, F.lit(f"{MAX_SIZE}+")).otherwise(members.cast("string"))
MIN_PARTIES = 30  # held-out parties per horizon and level below this: no interval edges at that horizon


@dataclass(frozen=True)
class PartyModel:
    """What a release fitted about parties at training, from held-out households (never fitted on):

    - `rho`: level → survival score column (p_active_12m, …) → the share of joint exits (`rho_from_sums`)
      that party survival uses;
    - `lower` / `upper`: level → interval level → the relative conformal edge per cumulative horizon
      1..H (`party_interval_edges`; None where too few parties were observable);
    - `parties`: level → held-out parties (party × feature month) fitted on."""

    rho: dict[str, dict[str, float]]
    lower: dict[str, dict[str, list[float | None]]]
    upper: dict[str, dict[str, list[float | None]]]
    parties: dict[str, int]
    feature_month: str = ""
    # level → party size (`size_label`) → interval level → edge per horizon: Mondrian by size, because one
    # line's value varies relatively more than a five-line household's (None: too few parties of the size)
    size_lower: dict[str, dict[str, dict[str, list[float | None]]]] = field(default_factory=dict)
    size_upper: dict[str, dict[str, dict[str, list[float | None]]]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"rho": self.rho, "lower": self.lower, "upper": self.upper, "parties": self.parties,
                "size_lower": self.size_lower, "size_upper": self.size_upper,
                "feature_month": self.feature_month, "method": "split-conformal on relative residuals of "
                "held-out parties, by party size (1..4, 5+ members; all sizes where a size has too few); "
                "rho by the method of moments (common-shock mixture)"}  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> PartyModel | None:
        if not data:
            return None
        return cls(
            {lv: {c: float(v) for c, v in r.items()} for lv, r in data.get("rho", {}).items()},
            data.get("lower", {}), data.get("upper", {}), dict(data.get("parties", {})),
            str(data.get("feature_month", "")), data.get("size_lower", {}), data.get("size_upper", {}),
        )  # fmt: skip

    def edges(
        self, level: str, interval_level: float, horizon: int, size: str | None = None
    ) -> tuple[float, float] | None:
        """The relative (lower, upper) edge of cumulative value at `horizon` months for parties of `size`
        members (`size_label`; None or a size without its own edges: all sizes pooled), or None (not
        fitted)."""
        key = f"{interval_level:g}"
        pooled = (self.lower.get(level, {}).get(key) or [], self.upper.get(level, {}).get(key) or [])
        candidates = [pooled]
        if size is not None:
            own = (
                self.size_lower.get(level, {}).get(size, {}).get(key) or [],
                self.size_upper.get(level, {}).get(size, {}).get(key) or [],
            )
            candidates.insert(0, own)
        for lower, upper in candidates:
            if 1 <= horizon <= len(lower) and None not in (lower[horizon - 1], upper[horizon - 1]):
                return float(lower[horizon - 1]), float(upper[horizon - 1])
        return None

    def sized_edges(
        self, level: str, interval_level: float, horizon: int
    ) -> dict[str, tuple[float, float]] | None:
        """Size label → edges at `horizon` for every size (`SIZE_LABELS`), or None when none was fitted."""
        found = {size: self.edges(level, interval_level, horizon, size) for size in SIZE_LABELS}
        if any(edge is None for edge in found.values()):
            return None
        return {size: edge for size, edge in found.items() if edge is not None}


def fit_party_model(
    rows: pd.DataFrame,
    horizons: int,
    survival: Mapping[str, int],
    levels: Sequence[float],
    feature_month: str = "",
) -> PartyModel:
    """The release's PartyModel from held-out rows: one per (member, feature month) with person_id,
    household_id (None: no household), feature_month, `FORECAST_CUM` / `REALIZED_CUM` for h = 1..`horizons`
    and, per survival score column in `survival` (column → the horizon its ρ is fitted at), `PREDICTED_P`
    and `REALIZED_IN`. Whole households are held out (the split hashes the household), so a party's sum
    is over all of its members. A party realizes its value only where every member is observable; its
    survival at h (none of its members in the base, or at least one) likewise."""
    rho: dict[str, dict[str, float]] = {}
    lower: dict[str, dict[str, list[float | None]]] = {}
    upper: dict[str, dict[str, list[float | None]]] = {}
    size_lower: dict[str, dict[str, dict[str, list[float | None]]]] = {}
    size_upper: dict[str, dict[str, dict[str, list[float | None]]]] = {}
    counts: dict[str, int] = {}
    for level in LEVELS:
        key = LEVEL_COLUMN[level]
        members = rows[rows[key].notna()]
        groups = members.groupby([FEATURE_MONTH_COL, key], sort=False)
        sums = groups[[FORECAST_CUM.format(h=h) for h in range(1, horizons + 1)]].sum()
        realized = groups[[REALIZED_CUM.format(h=h) for h in range(1, horizons + 1)]].sum(min_count=1)
        observable = groups[[REALIZED_CUM.format(h=h) for h in range(1, horizons + 1)]].count()
        size = groups.size()
        counts[level] = len(size)
        labels = np.array([size_label(int(n)) for n in size.to_numpy()])
        lower[level], upper[level] = {}, {}
        size_lower[level] = {label: {} for label in SIZE_LABELS}
        size_upper[level] = {label: {} for label in SIZE_LABELS}
        for interval_level in levels:
            at_level = f"{interval_level:g}"
            bins = [(None, np.ones(len(size), dtype=bool))]
            bins += [(label, labels == label) for label in SIZE_LABELS]
            for label, in_bin in bins:
                lo: list[float | None] = []
                hi: list[float | None] = []
                for h in range(1, horizons + 1):
                    seen = (observable[REALIZED_CUM.format(h=h)] == size).to_numpy() & in_bin
                    if seen.sum() < MIN_PARTIES:
                        lo.append(None)
                        hi.append(None)
                        continue
                    edge = party_interval_edges(
                        realized[REALIZED_CUM.format(h=h)].to_numpy()[seen],
                        sums[FORECAST_CUM.format(h=h)].to_numpy()[seen],
                        interval_level,
                    )
                    lo.append(edge[0] if math.isfinite(edge[0]) else None)
                    hi.append(edge[1] if math.isfinite(edge[1]) else None)
                if label is None:
                    lower[level][at_level], upper[level][at_level] = lo, hi
                else:
                    size_lower[level][label][at_level], size_upper[level][label][at_level] = lo, hi
        rho[level] = {}
        for column, horizon in survival.items():
            p = members[PREDICTED_P.format(column=column)].clip(0.0, 1.0 - P_CLIP)
            stay = members[REALIZED_IN.format(column=column)]
            frame = pd.DataFrame({
                FEATURE_MONTH_COL: members[FEATURE_MONTH_COL], key: members[key],
                "log_out": np.log1p(-p), "out": 1.0 - p, "stay": stay, "seen": stay.notna(),
            })  # fmt: skip
            per = frame.groupby([FEATURE_MONTH_COL, key], sort=False).agg(
                n=("out", "size"), seen=("seen", "sum"), stayed=("stay", "max"),
                independent=("log_out", "sum"), comonotone=("out", "min"),
            )  # fmt: skip
            per = per[(per["n"] >= 2) & (per["seen"] == per["n"])]
            rho[level][column] = rho_from_sums(
                len(per), float((per["stayed"] == 0).sum()), float(np.exp(per["independent"]).sum()),
                float(per["comonotone"].sum()), horizon, f"{level}, {column}",
            )  # fmt: skip
    return PartyModel(rho, lower, upper, counts, feature_month, size_lower, size_upper)


# ---------------------------------------------------------------- party intervals
def party_interval_edges(realized: np.ndarray, predicted: np.ndarray, level: float) -> tuple[float, float]:
    """Split-conformal edges (lower, upper) of the relative residual r = (realized − predicted) / |predicted|
    of held-out parties, at the finite-sample ranks of `intervals.conformal_offsets` ((n + 1) correction):
    a new party's realized value lies in predicted + |predicted| · [lower, upper] with probability ≥ `level`
    when it is exchangeable with these. Relative, because party values span one SIM to a five-line
    household: one additive width would be too wide for the one and too narrow for the other. A party
    predicted at exactly 0 has r = 0 if it realized 0, else ±inf (it counts against coverage honestly)."""
    a = np.asarray(realized, dtype=np.float64)
    f = np.asarray(predicted, dtype=np.float64)
    if a.shape != f.shape or a.ndim != 1 or not len(a):
        raise ValueError("realized and predicted must be non-empty 1-d arrays of one length")
    if not (np.isfinite(a).all() and np.isfinite(f).all()):
        raise ValueError("realized and predicted party values must be finite")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    scale = np.abs(f)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(scale > 0, (a - f) / np.where(scale > 0, scale, 1.0), np.sign(a) * np.inf)
    r = np.where((scale == 0) & (a == 0), 0.0, r)
    lower, upper = conformal_offsets(r, level)
    if not (math.isfinite(lower) and math.isfinite(upper)):
        log.warning(
            "party intervals at %.2f: an edge is infinite (parties predicted at 0 realized value)", level
        )
    return lower, upper


def apply_party_interval(df: DataFrame, edges: tuple[float, float], value_col: str) -> DataFrame:
    """`df` with <value_col>_lower / <value_col>_upper = value + |value| · edges (`party_interval_edges`)."""
    lower, upper = edges
    value = F.col(value_col)
    return df.withColumn(f"{value_col}_lower", value + F.abs(value) * F.lit(float(lower))).withColumn(
        f"{value_col}_upper", value + F.abs(value) * F.lit(float(upper))
    )


# ---------------------------------------------------------------- where the party scores live
def party_scores_root(paths: PathsConfig) -> str:
    """`paths.party_scores`, or when unset the directory `party_scores` beside `paths.scores`
    (work/scores → work/party_scores, hdfs://nn/x/scores → hdfs://nn/x/party_scores): never inside the
    scores, so their readers never meet a second partition column."""
    scores = paths.scores.rstrip("/")
    head, sep, _ = scores.rpartition("/")
    if paths.party_scores:
        root = paths.party_scores.rstrip("/")
    elif not scores or head.endswith(":/"):  # "/" or "hdfs://nn": a filesystem root has no sibling
        raise UserError(f"paths.scores is a filesystem root ({paths.scores}): set paths.party_scores")
    else:
        root = f"{head}/{PARTY_SCORES}" if sep else PARTY_SCORES  # "/scores" → "/party_scores"
    if root == scores or root.startswith(scores + "/"):
        raise UserError(
            f"paths.party_scores ({root}) must not be inside paths.scores ({scores}): readers of the scores "
            "would meet a second partition column"
        )
    return root


def party_partition(root: str, level: str, month: dt.date) -> str:
    """{root}/level=<level>/score_month=YYYY-MM-01: one level's party scores of one month."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    return partition(f"{root.rstrip('/')}/{LEVEL}={level}", SCORE_MONTH, month)
