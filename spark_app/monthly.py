"""The checks and the hand-off around the monthly scoring job (steps of argo/monthly-scoring.yaml).

validate-inputs runs the input contract on the month before any scoring starts; validate-output proves the
scores partition is whole (marker, one row per subscriber of the month's features, no null CLTV) before
anyone reads it; publish writes `_PUBLISHED` beside the partition — the marker downstream consumers wait
for — and notifies a webhook. publish needs no JVM: it writes through inputs_ready's filesystem layer
(WebHDFS for hdfs://).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import urllib.request
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from spark_app.config import Settings
from spark_app.contract import (
    ID,
    InputContractError,
    catalog_features_spec,
    facts_spec,
    raise_problems,
    read_months,
    read_table,
    validate,
)
from spark_app.errors import UserError
from spark_app.files import filesystem_for
from spark_app.layout import PUBLISHED, SCORE_SUMMARY, SUCCESS, scores_dir
from spark_app.metrics import push_job_metrics
from spark_app.months import fmt
from spark_app.storage import Storage

log = logging.getLogger(__name__)


class OutputContractError(UserError):
    """The month's scores are incomplete or wrong; nothing downstream should read them (CLI exit code 2)."""


@dataclass(frozen=True)
class OutputCheck:
    month: str
    path: str
    rows: int
    subscribers: int
    expected_subscribers: int
    null_cltv: int


def validate_inputs(spark: SparkSession, settings: Settings, month: dt.date) -> None:
    """Raise InputContractError when either input table breaks the contract for `month`."""
    catalog = settings.models.catalog()
    context = f"validate-inputs {fmt(month)}"
    tables = [
        (settings.paths.features, catalog_features_spec(catalog), [month]),
        (settings.paths.facts, facts_spec(catalog), [month]),
    ]
    frames = read_months(spark, tables, context=context)
    problems = []
    for df, (_, spec, _) in zip(frames, tables, strict=True):
        try:
            validate(df, spec, [month])
        except InputContractError as exc:
            problems += str(exc).splitlines()[1:]
    floors = {e.fact: e.fact_min for e in catalog if e.fact_min is not None}
    if floors and not problems:
        row = frames[1].agg(
            *[F.sum((F.col(c) < F.lit(low)).cast("long")).alias(c) for c, low in floors.items()]
        )
        below = {c: int(n) for c, n in row.first().asDict().items() if n}
        if below:
            text = ", ".join(f"{c}: {n:,} rows below {floors[c]}" for c, n in below.items())
            if settings.dataset.implausible_facts == "error":
                problems.append(f"facts: implausible values: {text} (dataset.implausible_facts)")
            else:
                log.warning("facts %s: implausible values: %s", fmt(month), text)
    raise_problems([p.strip() for p in problems], context)
    log.info(
        "inputs of %s satisfy the contract (features: %d columns, facts: %d)", fmt(month),
        len(tables[0][1].columns), len(tables[1][1].columns),
    )  # fmt: skip


def output_counts(scores: DataFrame) -> dict[str, int]:
    row = scores.agg(
        F.count(F.lit(1)).alias("rows"),
        F.countDistinct(ID).alias("subscribers"),
        F.sum(F.col("cltv").isNull().cast("long")).alias("null_cltv"),
    ).collect()[0]
    return {k: int(row[k] or 0) for k in ("rows", "subscribers", "null_cltv")}


def validate_output(spark: SparkSession, settings: Settings, month: dt.date) -> OutputCheck:
    """The month's scores exist with _SUCCESS, one row per subscriber of its features, no null cltv."""
    target = scores_dir(settings.paths, month)
    storage = Storage(spark)
    if not storage.has_success_marker(target):
        what = "does not exist" if not storage.exists(target) else f"has no {SUCCESS} marker"
        raise OutputContractError(f"scores {fmt(month)}: {target} {what} (did `cltv score` finish?)")
    scores = spark.read.parquet(target)
    if "cltv" not in scores.columns or ID not in scores.columns:
        raise OutputContractError(f"scores {fmt(month)}: {target} lacks column 'cltv' or {ID!r}")
    counts = output_counts(scores)
    features = read_table(spark, settings.paths.features, "features", [month])
    # with parties, an old id whose successor is in the base the same month is scored as the successor
    summary = f"{target}/{SCORE_SUMMARY}"
    continued = int(storage.read_json(summary).get("continued_ids", 0)) if storage.exists(summary) else 0
    expected = features.select(ID).distinct().count() - continued
    check = OutputCheck(
        fmt(month), target, counts["rows"], counts["subscribers"], expected, counts["null_cltv"]
    )
    problems = []
    if check.rows != check.subscribers:
        problems.append(f"{check.rows - check.subscribers} duplicate {ID} rows")
    if check.subscribers != expected:
        problems.append(f"{check.subscribers} subscribers scored, features of {fmt(month)} have {expected}")
    if check.null_cltv:
        problems.append(f"{check.null_cltv} rows with null cltv")
    if problems:
        raise OutputContractError(f"scores {fmt(month)} at {target}: " + "; ".join(problems))
    log.info("scores of %s are complete: %s subscribers, no null cltv", fmt(month), f"{check.rows:,}")
    return check


def post_json(url: str, payload: dict[str, object], timeout: float = 30.0) -> int:
    """POST `payload` as JSON; an HTTP error status raises, so a failed notification fails the step."""
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode("utf-8"),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return int(response.status)


def publish(settings: Settings, month: dt.date, webhook_url: str | None) -> dict[str, object]:
    """Write `{scores}/score_month=YYYY-MM-01/_PUBLISHED` (JSON) and POST it to `webhook_url` when given."""
    target = scores_dir(settings.paths, month)
    fs = filesystem_for(target, settings.paths)
    if fs.status(f"{target}/{SUCCESS}") is None:
        raise OutputContractError(
            f"publish {fmt(month)}: {target}/{SUCCESS} not found; run score and validate-output first"
        )
    record: dict[str, object] = {
        "event": "cltv-scores-published",
        "month": fmt(month),
        "path": target,
        "published_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "config_hash": settings.config_hash(),
    }
    fs.write_text(f"{target}/{PUBLISHED}", json.dumps(record, indent=2, sort_keys=True))
    log.info("published %s: %s/%s", fmt(month), target, PUBLISHED)
    if webhook_url:
        status = post_json(webhook_url, record)
        log.info("notified %s (HTTP %d)", webhook_url, status)
    push_job_metrics(settings.monitoring, "publish", month, None, {}, {}, "ok")
    return record
