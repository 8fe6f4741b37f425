"""Where things live: every path, partition and marker under `paths.*`, and the reader of the scores.

One answer to "where is X": the input tables are partitioned by `report_month=YYYY-MM-01` (read and
checked by contract.read_months), scores by `score_month=…`, monitoring tables by `month=…`; training sets
live in `{paths.datasets}/<dataset id>/` with a `manifest.json`, and a `latest` file names the newest.
A partition is complete when its `_SUCCESS` marker is there (Storage.staged writes it last, before the
swap); `_PUBLISHED` beside the scores is the marker downstream consumers wait for.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from spark_app.config import PathsConfig
from spark_app.storage import SUCCESS as SUCCESS  # a complete partition (Spark's marker; Storage writes it)
from spark_app.storage import Storage

REPORT_MONTH = "report_month"  # partition column of the input tables (features, facts)
SCORE_MONTH = "score_month"  # partition column of the scores
MONITOR_MONTH = "month"  # partition column of the monitoring tables

SCORE_SUMMARY = "_summary.json"  # in a month's scores: counts, release, ranges (Parquet readers skip it)
PUBLISHED = "_PUBLISHED"  # a month's scores released downstream (`cltv publish`)
LATEST = "latest"  # under paths.datasets: the id of the newest training set
MANIFEST = "manifest.json"  # in a training set's directory: how it was built


def workdir_layers(workdir: Path, panel: Path, *, parties: bool = False) -> dict[str, dict[str, str]]:
    """Config layers that put every output and a local MLflow store (SQLite + artifacts) inside `workdir`,
    reading the input tables of `panel`: the demo, the tests and the benchmarks run in such a directory.
    `parties`: read the panel's parties table too (persons and households; `cltv generate` writes it)."""
    return {
        "paths": {
            "features": str(panel / "features"),
            "facts": str(panel / "facts"),
            **({"parties": str(panel / "parties")} if parties else {}),
            "datasets": str(workdir / "datasets"),
            "scores": str(workdir / "scores"),
            "monitoring": str(workdir / "monitoring"),
            "campaigns": str(workdir / "campaigns"),
            "contacts": str(workdir / "contacts"),
        },
        "mlflow": {
            "tracking_uri": f"sqlite:///{workdir / 'mlflow.db'}",
            "artifact_location": str(workdir / "mlartifacts"),
        },
    }


def partition(root: str, column: str, month: dt.date) -> str:
    return f"{root.rstrip('/')}/{column}={month:%Y-%m-%d}"


def input_partition(table_root: str, month: dt.date) -> str:
    """A month of an input table (features or facts)."""
    return partition(table_root, REPORT_MONTH, month)


def scores_dir(paths: PathsConfig, month: dt.date) -> str:
    return partition(paths.scores, SCORE_MONTH, month)


def monitoring_dir(paths: PathsConfig, month: dt.date) -> str:
    return partition(paths.monitoring, MONITOR_MONTH, month)


def report_file(paths: PathsConfig, month: dt.date) -> str:
    """The month's review page (also logged to MLflow)."""
    return f"{paths.monitoring.rstrip('/')}/reports/cltv-report-{month:%Y-%m}.html"


def datasets_root(paths: PathsConfig) -> str:
    return paths.datasets.rstrip("/")


def dataset_dir(paths: PathsConfig, dataset_id: str) -> str:
    return f"{datasets_root(paths)}/{dataset_id}"


def latest_file(paths: PathsConfig) -> str:
    return f"{datasets_root(paths)}/{LATEST}"


CAMPAIGN = "campaign"  # partition column of campaign outputs and of the contact history
CAMPAIGN_MONTH = "month"  # the campaign's month M (designs, contacts) or outcome month E (evaluations)
DESIGN_JSON = "_design.json"  # beside a design's Parquet list: counts, MDE, A/A, balance, verdict
EVALUATION_JSON = "_evaluation.json"
PUBLISHED_CONTACTS = "_published.json"  # in a contact-history partition written by `campaign publish`


def campaign_root(paths: PathsConfig, campaign: str) -> str:
    return f"{paths.campaigns.rstrip('/')}/{CAMPAIGN}={campaign}"


def design_dir(paths: PathsConfig, campaign: str, month: dt.date) -> str:
    """The target list of `campaign` for month M (Parquet) with its _design.json."""
    return partition(campaign_root(paths, campaign), CAMPAIGN_MONTH, month)


def evaluation_dir(paths: PathsConfig, campaign: str, month: dt.date) -> str:
    """The evaluation of `campaign` at its outcome month E (it records the design month M)."""
    return partition(f"{campaign_root(paths, campaign)}/evaluation", CAMPAIGN_MONTH, month)


def contacts_partition(paths: PathsConfig, campaign: str, month: dt.date) -> str:
    """What `campaign publish` writes into the contact history: one partition per (campaign, month)."""
    return partition(f"{paths.contacts.rstrip('/')}/{CAMPAIGN}={campaign}", CAMPAIGN_MONTH, month)


def promotion_target(paths: PathsConfig, model_name: str) -> str:
    """What `cltv promote` holds its lease on (`_lock-promotion-<model>` beside the training sets): one
    promotion of a registered model at a time."""
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in model_name)
    return f"{datasets_root(paths)}/promotion-{safe}"


def read_scores(spark: SparkSession, paths: PathsConfig, month: dt.date) -> DataFrame | None:
    """Scores of one month, `score_month` from the path; None when the partition is absent or incomplete."""
    path = scores_dir(paths, month)
    if not Storage(spark).has_success_marker(path):
        return None
    return spark.read.parquet(path).withColumn(SCORE_MONTH, F.lit(month))
