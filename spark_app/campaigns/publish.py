"""`cltv campaign publish`: a design's contacts into the contact history, once it passed its checks.

Treated subscribers get their channel and contact date (launch date + batch − 1 days; the launch is the
first day after month M unless `--date` says otherwise) and are frozen for `freeze_days` from it; control
subscribers are recorded as reserved until the end of the outcome month M + N (`reserved_until`, exclusive),
so no other campaign treats them inside their outcome window. One partition per (campaign, month),
swapped in whole (spark_app.campaigns.contacts): a rerun is idempotent, two campaigns never collide.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from spark_app.campaigns.contacts import (
    CHANNEL,
    CONTACT_DATE,
    CONTROL,
    GROUP,
    RESERVED_UNTIL,
    write_contacts,
)
from spark_app.campaigns.design import BATCH, campaign_config, read_design
from spark_app.campaigns.rules import CampaignConfigError
from spark_app.config import Settings
from spark_app.contract import ID
from spark_app.errors import EXIT_VERDICT, CltvError
from spark_app.layout import CAMPAIGN, CAMPAIGN_MONTH
from spark_app.months import add_months, fmt, parse_month

log = logging.getLogger(__name__)


class DesignRefused(CltvError):
    """The design failed its checks (A/A or balance): it is not published (a verdict, exit 1)."""

    exit_code = EXIT_VERDICT


@dataclass(frozen=True)
class PublishResult:
    campaign: str
    month: dt.date
    path: str
    treated: int
    control: int
    first_contact: dt.date
    last_contact: dt.date
    reserved_until: dt.date


def publish_campaign(
    spark: SparkSession, settings: Settings, name: str, month: dt.date, launch_date: dt.date | None = None
) -> PublishResult:
    cfg = campaign_config(settings, name)
    listed, design = read_design(spark, settings, name, month)
    if design.get("status") != "ok":
        raise DesignRefused(
            f"campaign {name} {fmt(month)}: the design was refused and is not published: "
            + "; ".join(design.get("reasons") or ["status " + str(design.get("status"))])
        )
    launch = launch_date or dt.date.fromisoformat(design.get("launch_date") or str(add_months(month, 1)))
    if launch <= month:
        raise CampaignConfigError(f"--date {launch} is not after the campaign month {fmt(month)}")
    outcome = parse_month(design.get("outcome_month") or fmt(add_months(month, cfg.outcome_months)))
    reserved_until = add_months(outcome, 1)
    rows = listed.select(
        ID,
        F.date_add(F.lit(launch), F.col(BATCH) - 1).alias(CONTACT_DATE),
        CHANNEL,
        F.lit(name).alias(CAMPAIGN),
        GROUP,
        F.when(F.col(GROUP) == F.lit(CONTROL), F.lit(reserved_until)).cast("date").alias(RESERVED_UNTIL),
        F.lit(month).alias(CAMPAIGN_MONTH),
    )
    counts = {r[GROUP]: int(r["n"]) for r in rows.groupBy(GROUP).agg(F.count(F.lit(1)).alias("n")).collect()}
    last = launch + dt.timedelta(days=cfg.batch_days - 1)
    record = {
        "campaign": name,
        "month": fmt(month),
        "launch_date": str(launch),
        "last_contact_date": str(last),
        "reserved_until": str(reserved_until),
        "planned": True,  # contact dates may lie after today: they are the campaign's plan
        "counts": counts,
        "published_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    path = write_contacts(spark, settings.paths, rows, campaign=name, month=month, record=record)
    result = PublishResult(
        name, month, path, counts.get("treatment", 0), counts.get(CONTROL, 0), launch, last, reserved_until
    )
    log.info(
        "published campaign %s %s: %s treated, contacted %s..%s (frozen %d days from then); %s control, "
        "reserved until %s; %s",
        name,
        fmt(month),
        f"{result.treated:,}",
        launch,
        last,
        cfg.freeze_days,
        f"{result.control:,}",
        reserved_until,
        path,
    )
    return result
