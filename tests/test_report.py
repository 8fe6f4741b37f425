"""The review page: built from monitor's output for a scored month, with plots embedded, logged to MLflow."""

from __future__ import annotations

import datetime as dt
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from spark_app.catalog import ModelCatalog, ModelEntry, ValueTerm
from spark_app.generate import FEATURE_CATEGORICAL, FEATURE_NUMERIC
from spark_app.models import Learner
from spark_app.monitoring import monitor_month
from spark_app.months import add_months
from spark_app.report import build_report, metrics_by_horizon

MONTH = dt.date(2024, 9, 1)
MODELS = ("paid", "active", "sm_mobile", "sac")


def test_metrics_by_horizon_pivots_any_key_with_a_horizon_token():
    pivot, flat = metrics_by_horizon(
        {
            "paid.oot.h01.roc_auc": 0.8,
            "paid.oot.h12.roc_auc": 0.7,
            "sm_mobile/test/h_3/wape": 0.3,
            "oot_rows": 100.0,
            "h2o_version": 1.0,
        }
    )
    assert pivot.loc["paid.oot.roc_auc", 1] == 0.8 and pivot.loc["paid.oot.roc_auc", 12] == 0.7
    assert pivot.loc["sm_mobile/test/wape", 3] == 0.3
    assert sorted(flat["metric"]) == ["h2o_version", "oot_rows"]


def write_naive_scores(spark, panel: Path, scores: Path, month: dt.date) -> None:
    """A month's scores in the scoring output layout, from a naive forecaster (last month × decay), with
    the 24-month detail arrays, so monitoring and the report have something real to backtest."""
    facts = spark.read.parquet(str(panel / "facts")).where(F.col("report_month") == F.lit(month))
    decay = lambda h: F.pow(F.lit(0.97), h)  # noqa: E731
    arrays = {
        "paid_h": F.transform(
            F.sequence(F.lit(1), F.lit(24)), lambda h: F.col("in_paid_base") * 0.95 * decay(h)
        ),
        "active_h": F.transform(F.sequence(F.lit(1), F.lit(24)), lambda h: F.lit(0.97) * decay(h)),
        "sm_mobile_h": F.transform(F.sequence(F.lit(1), F.lit(24)), lambda h: F.col("sm_mobile") * decay(h)),
        "sac_h": F.transform(F.sequence(F.lit(1), F.lit(24)), lambda h: F.lit(0.5) * decay(h)),
    }
    hold = F.pmod(F.xxhash64("subscriber_id", F.lit("holdout")), F.lit(100)) < 5
    out = facts.select(
        "subscriber_id",
        F.lit(month).alias("score_month"),
        F.lit(1).alias("release_version"),
        (F.col("sm_mobile") * 30).alias("cltv"),
        (F.col("sm_mobile") * 15).alias("cltv_24m"),
        (F.col("in_paid_base") * 0.7).alias("p_paid_12m"),
        *[v.alias(k) for k, v in arrays.items()],
        hold.alias("holdout"),
    )
    out.write.mode("overwrite").parquet(str(scores / f"score_month={month:%Y-%m-%d}"))


@dataclass
class StoredRelease:
    """What registry.load_release returns, built here without the registry: a real Learner, the
    reference sample and a training run holding the evaluation tables."""

    version: int
    run_id: str | None
    files: dict[str, bytes] = field(default_factory=dict)
    manifest: dict = field(default_factory=dict)
    fitted: Learner | None = None

    def learner(self) -> Learner:
        return self.fitted


def tiny_learner(sample: pd.DataFrame) -> Learner:
    """paid + sm_mobile (stacked on p_paid), 30 trees each, with the project's feature layout."""
    inputs = [*FEATURE_CATEGORICAL, *FEATURE_NUMERIC, "horizon", "target_calendar_month"]
    cats = tuple(FEATURE_CATEGORICAL)
    params = {"iterations": 30, "depth": 4}
    catalog = ModelCatalog(
        (
            ModelEntry("paid", "classification", "in_paid_base", tuple(inputs), params=params),
            ModelEntry(
                "sm_mobile", "regression", "sm_mobile", tuple(inputs), stacked=("paid",), carrier="paid",
                value=ValueTerm("sm_mobile", 1.0), params=params,
            ),
        ),
        cats,
    )  # fmt: skip
    learner = Learner(catalog)
    train = sample.assign(
        horizon=12,
        target_calendar_month=9,
        paid_fact=sample["is_paid"],
        sm_mobile_fact=sample["margin_1m"] / 30,
    )
    half = len(train) // 2
    return learner.fit(train.iloc[:half], train.iloc[half:])


def evaluation_artifacts(client, run_id: str, tmp: Path) -> None:
    """The evaluation tables in the layout training.write_evaluation logs."""
    rows = []
    for model_id, kind, metric in (
        ("paid", "classification", "roc_auc"),
        ("sm_mobile", "regression", "rmse"),
    ):
        for h in range(0, 25):
            value = 0.9 - h / 100 if kind == "classification" else 0.2 + h / 100
            rows.append(
                {
                    "model_id": model_id,
                    "kind": kind,
                    "split": "oot",
                    "horizon": h,
                    "rows": 100,
                    "metric": metric,
                    "value": value,
                    "naive": value * 0.8,
                }
            )
    out = tmp / "evaluation"
    out.mkdir()
    pd.DataFrame(rows).to_csv(out / "metrics_by_horizon.csv", index=False)
    pd.DataFrame(
        [
            {
                "model_id": "paid",
                "kind": "classification",
                "metric": "roc_auc",
                "split": "oot",
                "rows": 2400,
                "value": 0.85,
                "naive": 0.7,
                "beats_naive": True,
            }
        ]
    ).to_csv(out / "quality_oot.csv", index=False)
    client.log_artifacts(run_id, str(out), "evaluation")
    client.log_metric(run_id, "paid.fit_seconds", 1.5)


def test_report_page_has_every_section_and_is_linked_from_mlflow(
    spark, panel_dir, tmp_path, settings_factory
):
    settings = settings_factory(  # a tiny learner: its survival is not meant to be calibrated
        panel=panel_dir, monitoring={"survival_warn": {1: 0.5}, "survival_fail": {1: 0.9}}
    )
    scores = Path(settings.paths.scores)
    for k in range(0, 4):
        write_naive_scores(spark, panel_dir, scores, add_months(MONTH, -k))
    features = spark.read.parquet(str(panel_dir / "features")).where(F.col("report_month") == F.lit(MONTH))
    sample = features.limit(1500).toPandas()
    buf = io.BytesIO()
    sample.drop(columns=["subscriber_id", "report_month"]).to_parquet(buf)

    client = mlflow.MlflowClient(settings.mlflow.tracking_uri)
    release_run = client.create_run(client.create_experiment(settings.mlflow.experiment))
    evaluation_artifacts(client, release_run.info.run_id, tmp_path)
    release = StoredRelease(
        1,
        release_run.info.run_id,
        {"reference.parquet": buf.getvalue()},
        {"dataset_id": "ds-test", "horizons": list(range(1, 25)), "models": {m: {} for m in MODELS}},
        tiny_learner(sample),
    )

    result = monitor_month(spark, settings, MONTH, release=release)
    assert not result.failed, result.failures
    path = build_report(spark, settings, MONTH, release=release)

    page = Path(path).read_text()
    for title in (
        "Release metrics by horizon",
        "CLTV distribution and deciles",
        "Top drivers",
        "Drift",
        "Backtest: earlier forecasts against this month",
        "Survival calibration",
        "holdout",
    ):
        assert title in page, title
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) >= 7  # metrics, histogram, importance, SHAP, PSI, calibration, WAPE, value
    assert all(len(i) > 2000 for i in images)
    assert "Main metric at selected horizons" in page and "naive h12" in page and "ds-test" in page
    assert "paid.fit_seconds" in page
    run = client.get_run(result.run_id)
    assert run.data.tags["report"].endswith("report/cltv-report-2024-09.html")
    assert [a.path for a in client.list_artifacts(result.run_id, "report")] == [
        "report/cltv-report-2024-09.html"
    ]
    assert client.get_run(release.run_id).data.tags["monitoring_report.2024-09"] == run.data.tags["report"]
    metrics = run.data.metrics
    assert 0 <= metrics["backtest.holdout.h01.paid.realized_share"] <= 1
    assert np.isfinite(metrics["backtest.all.h03.sm_mobile.wape"])


def test_report_needs_monitor_output_first(spark, panel_dir, settings_factory):
    from spark_app.errors import UserError

    with pytest.raises(UserError, match="run `cltv monitor` first"):
        build_report(spark, settings_factory(panel=panel_dir), MONTH)
