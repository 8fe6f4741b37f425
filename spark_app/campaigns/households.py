"""Campaigns with persons and households (`paths.parties` set; without it nothing here runs).

Three rules, so that a household is one unit of the experiment and a person is contacted once:

- **Randomization by household.** The splitter hashes the party key (`parties.party_key`: the household,
  else the person, else the customer, else the subscriber) instead of the subscriber id, so every line of a
  household lands in the same group — a treated line never shares a home with a control line whose churn
  it would change. A line without a party row keeps its own id as key, hence its own group. The A/A and
  balance checks re-split the same hashes through the same function, so they test this split.
- **One contact per person.** When several lines of one person qualify in a channel, only the line ranked
  highest (ranking key, then the household's draw, then the id) is listed; the person's other lines are
  listed nowhere (neither treated nor control, nor in a later channel).
- **The contact history per person.** A person contacted on any line in the freeze window is frozen on all
  its lines, and a person held back as another campaign's control is reserved on all its lines; a contact
  on an id before a number change follows the customer to its new id (`parties.with_customer`).

The household is then the unit of the experiment's statistics too: a household's lines share one stratum
(`one_stratum_per_household`), the A/A simulation and the evaluation take their variance over households
(`stats.Units`: lines of one household leave together, so they are not independent draws), and the
sample-ratio check counts households (`randomized_units`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from spark_app.campaigns.contacts import CHANNEL, GROUP
from spark_app.config import Settings
from spark_app.contract import ID
from spark_app.parties import (
    CUSTOMER,
    HOUSEHOLD,
    PERSON,
    SPLIT_KEY,
    parties_of_month,
    party_key,
    read_party_inputs,
    with_customer,
)

PERSON_KEY = "_person"  # the person of a line in the campaign month (its customer without a party row)
CUSTOMER_KEY = "_customer"  # the first id of the line's number-change chain (the line itself without one)


@dataclass(frozen=True)
class CampaignParties:
    """The parties of one campaign month: its rows of the table (None: a month before the table's first,
    every line its own person in no household) and the number-change chains (None: no change)."""

    month_rows: DataFrame | None
    chains: DataFrame | None


def read_campaign_parties(spark: SparkSession, settings: Settings, month: dt.date) -> CampaignParties | None:
    """The parties of `month`, validated (a broken table is exit 2 naming it); None without paths.parties."""
    if settings.paths.parties is None:
        return None
    inputs = read_party_inputs(spark, settings.paths, [month], month, None)
    if inputs is None:
        return CampaignParties(None, None)
    return CampaignParties(parties_of_month(inputs.parties, month), inputs.chains)


def with_party_keys(frame: DataFrame, parties: CampaignParties) -> DataFrame:
    """The month's frame (one row per scored line) with its person (PERSON_KEY), customer (CUSTOMER_KEY) and
    the key the splitter hashes (SPLIT_KEY = `parties.party_key`: household, else person, else customer,
    else subscriber). One left join with the month's rows, one broadcast join with the chains."""
    if parties.month_rows is None:
        keyed = frame.withColumn(PERSON, F.lit(None).cast("string")).withColumn(
            HOUSEHOLD, F.lit(None).cast("string")
        )
    else:
        keyed = frame.join(parties.month_rows.select(ID, PERSON, HOUSEHOLD), ID, "left")
    keyed = with_customer(keyed, parties.chains)
    return keyed.select(
        *frame.columns,
        F.coalesce(PERSON, CUSTOMER).alias(PERSON_KEY),
        F.col(CUSTOMER).alias(CUSTOMER_KEY),
        party_key().alias(SPLIT_KEY),
    )


def first_line_per_person(pool: DataFrame, ranking_key: str, unit: str) -> DataFrame:
    """Of a channel's eligible lines, the one ranked highest per person (ranking key, descending, nulls
    last; then the draw and the id, so the choice is reproducible): one contact per person."""
    first = Window.partitionBy(PERSON_KEY).orderBy(
        F.col(ranking_key).desc_nulls_last(), F.col(unit).asc(), F.col(ID).asc()
    )
    return pool.withColumn("_line", F.row_number().over(first)).where(F.col("_line") == 1).drop("_line")


def blocked_per_person(
    blocked: DataFrame | None, frame: DataFrame, chains: DataFrame | None
) -> DataFrame | None:
    """The contact history's frozen / reserved ids (`contacts.unavailable`: id, frozen, reserved) spread to
    every line of the month whose person holds one of their customers: a person contacted (or held back)
    on one line is frozen (or reserved) on all. Frozen wins over reserved, as per line."""
    if blocked is None:
        return None
    lines = frame.select(ID, PERSON_KEY, CUSTOMER_KEY)
    contacted = with_customer(blocked, chains).select(
        F.col(CUSTOMER).alias(CUSTOMER_KEY), "frozen", "reserved"
    )
    persons = (
        lines.join(contacted, CUSTOMER_KEY)
        .groupBy(PERSON_KEY)
        .agg(
            F.max(F.col("frozen").cast("int")).cast("boolean").alias("frozen"),
            F.max(F.col("reserved").cast("int")).cast("boolean").alias("reserved"),
        )
    )
    return lines.join(persons, PERSON_KEY).select(
        ID, "frozen", (F.col("reserved") & ~F.col("frozen")).alias("reserved")
    )


def one_stratum_per_household(listed: DataFrame, stratum: str, rank: str) -> DataFrame:
    """Every line of a household in a channel takes the stratum of its highest-ranked line: the household
    is the unit the split randomized, so the stratified estimator's variance over households
    (`stats.Units`) needs each household whole inside one stratum."""
    first = Window.partitionBy(CHANNEL, SPLIT_KEY).orderBy(F.col(rank).asc())
    return listed.withColumn(stratum, F.first(stratum).over(first))


def distinct_persons(where: Column) -> Column:
    """Aggregate: the persons among the rows where `where` holds."""
    return F.countDistinct(F.when(where, F.col(PERSON_KEY)))


def randomized_units(keyed: DataFrame) -> DataFrame:
    """Per (channel, group) of a design's list with its split keys (`with_party_keys`), `n` = the
    households listed: what the sample-ratio check counts when the split hashed households."""
    return keyed.groupBy(CHANNEL, GROUP).agg(F.countDistinct(SPLIT_KEY).alias("n"))
