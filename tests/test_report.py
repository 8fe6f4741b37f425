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
from spark_app.evaluation import fmt_money, fmt_number, fmt_pct
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
    # the configured artifact location (tmp_path): without one MLflow writes ./mlruns into the repository
    location = Path(settings.mlflow.artifact_location).resolve().as_uri()
    release_run = client.create_run(client.create_experiment(settings.mlflow.experiment, location))
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
    assert "Persons and households" not in page and "Party interval coverage" not in page  # no parties
    run = client.get_run(result.run_id)
    assert run.data.tags["report"].endswith("report/cltv-report-2024-09.html")
    assert [a.path for a in client.list_artifacts(result.run_id, "report")] == [
        "report/cltv-report-2024-09.html"
    ]
    assert client.get_run(release.run_id).data.tags["monitoring_report.2024-09"] == run.data.tags["report"]
    metrics = run.data.metrics
    assert 0 <= metrics["backtest.holdout.h01.paid.realized_share"] <= 1
    assert np.isfinite(metrics["backtest.all.h03.sm_mobile.wape"])
    assert_decision_first(page, scores, settings.costs.currency)


def assert_decision_first(page: str, scores: Path, currency: str) -> None:
    """The first screen: base size, total and mean CLTV and their change against last month equal sums of
    the scores Parquet computed here with pandas (holdout included); each of the five checks has a status;
    tenure cohorts in numeric order (0-5 < 6-11 < 12-23, not text order); no `nan` cell."""
    now = pd.read_parquet(scores / f"score_month={MONTH:%Y-%m-%d}")
    before = pd.read_parquet(scores / f"score_month={add_months(MONTH, -1):%Y-%m-%d}")
    glance = page.split("<h2>The month at a glance</h2>", 1)[1].split("<h2>", 1)[0]
    assert now["holdout"].any()
    assert (
        f"<b>{fmt_number(len(now))} subscribers are worth {fmt_money(now['cltv'].sum(), currency)}" in glance
    )
    assert fmt_money(now["cltv"].mean(), currency, 2) in glance
    assert f"holdout {fmt_number(now['holdout'].sum())} included" in glance
    assert (
        f"{fmt_pct(now['cltv'].sum() / before['cltv'].sum() - 1)} vs {add_months(MONTH, -1):%Y-%m}" in glance
    )
    assert f"{fmt_pct(len(now) / len(before) - 1)} vs" in glance
    for check in ("Bias beyond noise", "Beats the naive baseline", "Survival calibration",
                  "Interval coverage", "Drift"):  # fmt: skip
        row = re.search(rf'<td>{check}</td><td><span class="badge"[^>]*>(\w+)</span>', glance)
        assert row and row.group(1) in ("ok", "warn", "fail", "skipped"), check
    assert "What to do" in glance and not re.search(r"\bnan\b", glance)
    cohorts = page.split("<h3>CLTV by tenure cohort</h3>", 1)[1].split("</table>", 1)[0]
    labels = re.findall(r"<tr><td>([0-9]+(?:-[0-9]+|\+))</td>", cohorts)
    assert len(labels) >= 3 and labels == sorted(labels, key=lambda x: int(re.match(r"\d+", x).group()))


def test_report_needs_monitor_output_first(spark, panel_dir, settings_factory):
    from spark_app.errors import UserError

    with pytest.raises(UserError, match="run `cltv monitor` first"):
        build_report(spark, settings_factory(panel=panel_dir), MONTH)


def test_the_version_page_links_the_review_page_through_the_mlflow_ui_never_a_local_path(env):
    """The review page's link on the model version (tag and description section): the MLflow UI's run
    artifact page when `mlflow.ui_url` is set, a runs:/ URI otherwise; the monitoring experiment opens in
    MLflow's classic layout."""
    from spark_app.registry import load_release
    from spark_app.report import log_report
    from spark_app.tracking import experiment_id

    settings = env[0]
    release = load_release(settings, "challenger")
    client = mlflow.MlflowClient(settings.mlflow.tracking_uri)
    # artifacts under the fixture's work dir, as the monitoring job's own experiment (not ./mlruns)
    exp_id = experiment_id(client, settings.mlflow.monitoring_experiment, settings.mlflow.artifact_location)
    for month, ui_url in ((dt.date(2025, 3, 1), None), (dt.date(2025, 4, 1), "https://mlflow.example.com/")):
        run_id = client.create_run(exp_id).info.run_id
        cfg = settings.model_copy(update={"mlflow": settings.mlflow.model_copy(update={"ui_url": ui_url})})
        log_report(cfg, month, {"run_id": run_id}, "<html>review</html>", release.version, release.run_id)
    version = client.get_model_version(settings.mlflow.model_name, str(release.version))
    march, april = version.tags["monitoring_report.2025-03"], version.tags["monitoring_report.2025-04"]
    assert march.startswith("runs:/") and march.endswith("/report/cltv-report-2025-03.html")
    page = f"#/experiments/{exp_id}/runs/{run_id}/artifacts/report/cltv-report-2025-04.html"
    assert april == f"https://mlflow.example.com/{page}?workflowType=machine_learning"
    section = version.description.split("### Monthly review pages", 1)[1]
    assert section.index("[2025-04](" + april + ")") < section.index("2025-03")
    assert "file:" not in section and version.description.count("### Monthly review pages") == 1
    assert client.get_experiment(exp_id).tags["mlflow.experimentKind"] == "custom_model_development"
