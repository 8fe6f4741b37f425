"""A short history, through config alone (conf/examples/short_history.yaml): 18 months of an aging base,
4 target months, horizons 1..5, the forecast extended to 8. The survival forecast must not rise with the
horizon while the base decays, target calendar months the window never had are neutralized, and the
forecast of every month stays near what the panel then realized (docs/training.md "Short histories";
benchmarks/short_history.py measures it at 50k subscribers beside a classical sBG baseline)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from spark_app.cltv import extend_survival
from spark_app.config import load_settings, packaged_conf
from spark_app.dataset import build_dataset
from spark_app.generate import PanelSpec, generate_panel
from spark_app.layout import scores_dir, workdir_layers
from spark_app.months import add_months
from spark_app.registry import load_release
from spark_app.scoring import score_month
from spark_app.training import train_release

pytestmark = pytest.mark.slow

START = dt.date(2024, 1, 1)
SCORED = add_months(START, 9)  # month 10: the training targets end here, months 11..18 are what happened


@pytest.fixture(scope="module")
def short(spark, tmp_path_factory):
    work = tmp_path_factory.mktemp("short")
    # the panel of the short-history figures: persons, households and number changes are not its subject
    spec = PanelSpec(subscribers=4000, months=18, start=START, seed=5, acquisition_months=6, parties=False)
    generate_panel(spark, str(work / "panel"), spec, partitions=2)
    example = yaml.safe_load(packaged_conf().joinpath("examples", "short_history.yaml").read_text())
    example.update(workdir_layers(work, work / "panel"))
    example["spark"] = {"master": "local[2]", "shuffle_partitions": 4}
    conf = work / "short.yaml"
    conf.write_text(yaml.safe_dump(example))
    settings = load_settings(conf, environ={})
    build_dataset(spark, settings, SCORED)
    release = train_release(spark, settings)
    summary = score_month(spark, settings, SCORED, release=str(release.version), detail=True)
    scores = pd.read_parquet(scores_dir(settings.paths, SCORED))
    facts = pd.read_parquet(work / "panel" / "facts")
    facts["report_month"] = pd.to_datetime(facts["report_month"]).dt.date
    return settings, release, summary, scores, facts


def realized_share(scores: pd.DataFrame, facts: pd.DataFrame, flag: str, months: int) -> np.ndarray:
    """Share of the scored subscribers in the base (`flag`) at SCORED + h, h = 1..months."""
    out = []
    for h in range(1, months + 1):
        at = facts[(facts["report_month"] == add_months(SCORED, h)) & (facts[flag] == 1)]
        out.append(scores["subscriber_id"].isin(at["subscriber_id"]).mean())
    return np.array(out)


def test_the_short_history_runs_through_config_alone_and_neutralizes_unseen_seasons(short):
    settings, release, summary, scores, _ = short
    assert settings.dataset.horizons == [1, 2, 3, 4, 5] and settings.scoring.extrapolation_months == 8
    manifest = load_release(settings, str(release.version)).manifest
    seen = manifest["calendar_months_seen"]
    assert seen == [7, 8, 9]  # the target months the models fitted on (the 4th, October, is OOT)
    assert "cltv_8m" in scores.columns and len(scores) == summary.rows
    assert set(summary.outside_range_by_horizon) == {1, 2, 3, 4, 5}  # ranges recorded and counted
    assert all(0 <= v <= 1 for v in summary.outside_range_by_horizon.values())


def test_the_survival_forecast_does_not_rise_while_the_base_decays(short):
    _, _, _, scores, facts = short
    for model, flag in (("active", "in_active_base"), ("paid", "in_paid_base")):
        predicted = np.stack(scores[f"{model}_h"].to_numpy())
        extended = extend_survival(predicted, 8)
        mean = extended.mean(axis=0)
        realized = realized_share(scores, facts, flag, 8)
        falling = np.diff(realized) < 0
        assert (np.diff(mean)[falling] <= 1e-9).all(), (model, mean, realized)
        assert np.abs(mean[:5] - realized[:5]).max() < 0.08, (model, mean, realized)


def test_the_forecast_of_every_month_is_near_what_happened(short):
    """Σ forecast monthly value over the scored base against Σ realized, month by month over the trained
    horizons: within a band a 4,000-subscriber panel can promise; the benchmark's figures are tighter."""
    settings, _, _, scores, facts = short
    catalog = settings.models.catalog()
    from spark_app.cltv import ValueFormula
    from spark_app.intervals import cumulative_values

    formula = ValueFormula.from_catalog(catalog, settings.costs)
    forecasts = {m: np.stack(scores[f"{m}_h"].to_numpy()) for m in catalog.ids}
    forecast = np.diff(cumulative_values(forecasts, formula), axis=1, prepend=0.0).sum(axis=0)
    realized = []
    ids = set(scores["subscriber_id"])
    for h in range(1, 6):
        month = facts[(facts["report_month"] == add_months(SCORED, h)) & facts["subscriber_id"].isin(ids)]
        value = formula.monthly_value(lambda m, month=month: month[catalog[m].fact].to_numpy(float))
        realized.append(float(np.sum(value)))
    error = forecast / np.array(realized) - 1
    assert np.abs(error).max() < 0.25, error
    Path(settings.paths.monitoring).mkdir(parents=True, exist_ok=True)
    (Path(settings.paths.monitoring) / "short-history-error.json").write_text(json.dumps(list(error)))
