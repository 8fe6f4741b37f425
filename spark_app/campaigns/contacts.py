"""The contact history: who was contacted (or held back) when, by which campaign — read, checked, written.

`paths.contacts` holds Parquet files anywhere under it (read recursively: the CRM's own history can sit
beside what `campaign publish` writes) with columns `subscriber_id`, `contact_date` (DATE), `channel`,
`campaign`, `group` (`treatment`, or `control` for subscribers held back), and optionally
`reserved_until` (DATE, exclusive: a control subscriber is reserved through its outcome window) and
`month` (the campaign month). A configured path that does not exist yet is an empty history.

Freeze and reservation (docs/campaigns.md): a subscriber contacted (any group but control) on any channel
with a contact date in [launch − freeze_days, launch + batch_days) is frozen — contacted too recently, or
planned to be contacted while this campaign runs; a control subscriber is reserved until its
`reserved_until` (without one: freeze_days after its contact date), so no other campaign treats it inside
its outcome window. A campaign×month's own rows are ignored by its own design, so a rerun after publish
gives the same list.

`publish` writes one partition per (campaign, month), `campaign=NAME/month=YYYY-MM-01/`, staged and swapped
in under the partition's lease: concurrent publishes of two campaigns never touch each other's rows, and
a rerun replaces the partition whole. Its `_published.json` marks the partition's contact dates as planned,
so they may lie after today; any other contact dated after today is bad input.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from spark_app.config import PathsConfig
from spark_app.contract import ID, InputContractError
from spark_app.layout import CAMPAIGN, CAMPAIGN_MONTH, PUBLISHED_CONTACTS, contacts_partition
from spark_app.months import fmt
from spark_app.storage import Storage

log = logging.getLogger(__name__)

CONTACT_DATE = "contact_date"
CHANNEL = "channel"
GROUP = "group"
RESERVED_UNTIL = "reserved_until"
TREATMENT, CONTROL = "treatment", "control"
REQUIRED = {
    ID: T.StringType(),
    CONTACT_DATE: T.DateType(),
    CHANNEL: T.StringType(),
    CAMPAIGN: T.StringType(),
    GROUP: T.StringType(),
}
OPTIONAL = {RESERVED_UNTIL: T.DateType(), CAMPAIGN_MONTH: T.DateType()}


@dataclass(frozen=True)
class Launch:
    """When a campaign's contacts happen: day 1 is the launch date, batch b is contacted on day b."""

    date: dt.date
    batch_days: int
    freeze_days: int

    @property
    def freeze_from(self) -> dt.date:
        return self.date - dt.timedelta(days=self.freeze_days)

    @property
    def last_day(self) -> dt.date:
        return self.date + dt.timedelta(days=self.batch_days - 1)


def read_contacts(spark: SparkSession, paths: PathsConfig, today: dt.date) -> DataFrame | None:
    """The whole contact history (None when `paths.contacts` does not exist yet: an empty history), checked:
    the five columns with their types, no null id or date, no contact after `today` outside a published
    campaign's planned dates. Anything else is an InputContractError naming the path and the column."""
    storage = Storage(spark)
    root = paths.contacts.rstrip("/")
    if not storage.exists(root) or not any(not n.startswith(("_", ".")) for n in storage.list_dir(root)):
        log.info("contact history %s does not exist yet: an empty history", root)
        return None
    try:
        history = spark.read.option("recursiveFileLookup", "true").option("mergeSchema", "true").parquet(root)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:300]
        raise InputContractError(f"contacts: cannot read {root} as Parquet: {first}") from None
    problems = []
    fields = {f.name: f.dataType for f in history.schema.fields}
    for column, kind in REQUIRED.items():
        if column not in fields:
            problems.append(f"contacts: column {column!r} is missing in {root}")
        elif fields[column] != kind:
            problems.append(
                f"contacts: column {column!r} is {fields[column].simpleString()}, "
                f"expected {kind.simpleString()}"
            )
    for column, kind in OPTIONAL.items():
        if column in fields and fields[column] != kind:
            problems.append(
                f"contacts: column {column!r} is {fields[column].simpleString()}, "
                f"expected {kind.simpleString()}"
            )
    if problems:
        raise InputContractError("input contract violated (contact history):\n  " + "\n  ".join(problems))
    for column, kind in OPTIONAL.items():
        if column not in fields:
            history = history.withColumn(column, F.lit(None).cast(kind))
    history = history.select(*REQUIRED, *OPTIONAL)
    check_rows(storage, history, root, today)
    return history


def check_rows(storage: Storage, history: DataFrame, root: str, today: dt.date) -> None:
    """Null keys, and contacts dated after today outside the partitions `publish` wrote (planned ones)."""
    counts = history.agg(
        F.sum((F.col(ID).isNull() | F.col(CONTACT_DATE).isNull()).cast("long")).alias("null_keys"),
        F.sum((F.col(CONTACT_DATE) > F.lit(today)).cast("long")).alias("future"),
    ).first()
    problems = []
    if counts["null_keys"]:
        problems.append(f"contacts: {counts['null_keys']:,} rows without {ID} or {CONTACT_DATE} in {root}")
    if counts["future"]:
        files = [
            r["file"]
            for r in history.where(F.col(CONTACT_DATE) > F.lit(today))
            .select(F.input_file_name().alias("file"))
            .distinct()
            .collect()
        ]
        folders = {f.rsplit("/", 1)[0] for f in files}
        unplanned = sorted(d for d in folders if not storage.exists(f"{d}/{PUBLISHED_CONTACTS}"))
        if unplanned:
            problems.append(
                f"contacts: contacts dated after today ({today}) in {unplanned[:5]} — a contact cannot have "
                f"happened yet, and only `cltv campaign publish` records planned ones"
            )
    if problems:
        raise InputContractError("input contract violated (contact history):\n  " + "\n  ".join(problems))


def unavailable(
    history: DataFrame | None, launch: Launch, *, campaign: str, month: dt.date
) -> DataFrame | None:
    """Subscribers this campaign must not reach (one row per id, with why): frozen by a recent or
    overlapping contact, or reserved as another campaign's control. This campaign×month's own rows are
    ignored."""
    if history is None:
        return None
    own = (F.col(CAMPAIGN) == F.lit(campaign)) & (F.col(CAMPAIGN_MONTH) == F.lit(month))
    others = history.where(~F.coalesce(own, F.lit(False)))
    frozen = (F.col(GROUP) != F.lit(CONTROL)) & F.col(CONTACT_DATE).between(
        F.lit(launch.freeze_from), F.lit(launch.last_day)
    )
    until = F.coalesce(F.col(RESERVED_UNTIL), F.date_add(F.col(CONTACT_DATE), launch.freeze_days))
    reserved = (F.col(GROUP) == F.lit(CONTROL)) & (until > F.lit(launch.date))
    return (
        others.where(frozen | reserved)
        .groupBy(ID)
        .agg(
            F.max(frozen.cast("int")).cast("boolean").alias("frozen"),
            F.max((reserved & ~frozen).cast("int")).cast("boolean").alias("reserved"),
        )
    )


def published_groups(history: DataFrame | None, *, campaign: str, month: dt.date) -> DataFrame | None:
    """The (subscriber, channel, group) a campaign×month published, or None if it was not published."""
    if history is None:
        return None
    own = history.where((F.col(CAMPAIGN) == F.lit(campaign)) & (F.col(CAMPAIGN_MONTH) == F.lit(month)))
    return own.select(ID, CHANNEL, GROUP) if own.limit(1).count() else None


def write_contacts(
    spark: SparkSession,
    paths: PathsConfig,
    rows: DataFrame,
    *,
    campaign: str,
    month: dt.date,
    record: dict[str, object],
) -> str:
    """Swap in the campaign×month's partition of the contact history, with its `_published.json`."""
    storage = Storage(spark)
    target = contacts_partition(paths, campaign, month)
    with storage.staged(target) as staging:
        rows.write.mode("overwrite").parquet(staging)
        storage.write_text(f"{staging}/{PUBLISHED_CONTACTS}", json.dumps(record, indent=2, sort_keys=True))
    log.info("contact history: %s %s published to %s", campaign, fmt(month), target)
    return storage.qualify(target)
