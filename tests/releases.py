"""A tiny release trained in pandas and registered in MLflow, for tests that need one but not `cltv train`.

Rows are (subscriber, feature month, one random horizon) with the targets of T = feature month + h; the
Learner, the bundle, the pyfunc and the registry are the real ones.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
from conftest import FACT_OF
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from spark_app.config import Settings
from spark_app.models import Learner
from spark_app.months import days_in_month_index, month_index
from spark_app.registry import OOT_SAMPLE, log_release, model_input
from spark_app.training import Evaluation, categories_seen

EVAL_COLUMNS = ["model_id", "kind", "split", "horizon", "rows", "metric", "value", "naive"]


def training_frames(features: pd.DataFrame, facts: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A small horizon-lagged training set built in pandas: each row gets one random horizon."""
    rng = np.random.default_rng(1)
    rows = features.sample(n=min(len(features), 24_000), random_state=1).reset_index(drop=True)
    rows["horizon"] = rng.integers(1, 25, len(rows))
    fm = rows["report_month"].map(month_index).to_numpy()
    target = fm + rows["horizon"].to_numpy()
    rows["target_calendar_month"] = target % 12 + 1
    rows["feature_calendar_month"] = fm % 12 + 1
    rows["target_month"] = [dt.date(int(t // 12), int(t % 12) + 1, 1) for t in target]
    facts = facts.rename(columns={"report_month": "target_month"})
    joined = rows.merge(facts, on=["subscriber_id", "target_month"], how="left")
    days = days_in_month_index(target)
    for model_id, col in FACT_OF.items():
        values = joined[col].fillna(0.0).to_numpy(dtype=np.float64)
        joined[f"{model_id}_fact"] = values if model_id in ("paid", "active") else values / days
    half = joined["subscriber_id"].str[-1].astype(int) % 2 == 0
    return joined[half].reset_index(drop=True), joined[~half].reset_index(drop=True)


def register_release(
    spark: SparkSession, settings: Settings, panel: Path, before: dt.date, work: Path
) -> int:
    """Train on the panel's months before `before` and register the release (alias challenger)."""
    features = spark.read.parquet(str(panel / "features")).where(F.col("report_month") < F.lit(before))
    facts = spark.read.parquet(str(panel / "facts"))
    surv, reg = training_frames(features.toPandas(), facts.toPandas())
    learner = Learner.from_settings(settings).fit(surv, reg)
    learner.meta = {
        "horizons": list(range(1, 25)),
        "dataset_id": "test-release",
        "categories": categories_seen([surv, reg], list(settings.models.categorical)),
    }
    bundle = learner.save_bundle(work / "bundle")
    (work / "evaluation").mkdir(exist_ok=True)
    reg.head(2000).to_parquet(work / "evaluation" / OOT_SAMPLE, index=False)  # what promotion compares on
    evaluation = Evaluation(
        table=pd.DataFrame(columns=EVAL_COLUMNS),
        calibration={},
        deciles=pd.DataFrame(),
        quality=pd.DataFrame(columns=["model_id", "metric", "value", "naive", "beats_naive"]),
    )
    version, _ = log_release(
        settings,
        learner=learner,
        bundle_dir=bundle,
        evaluation_dir=work / "evaluation",
        evaluation=evaluation,
        rows={"train_surv": len(surv), "train_reg": len(reg)},
        input_example=model_input(reg, learner),
    )
    return version
