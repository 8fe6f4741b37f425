"""Months 25..36: the extension past the trained horizons against what subscribers did — sBG and BdW.

    .venv/bin/python benchmarks/extension_backtest.py --work work/bench/extension --subscribers 50000

A 73-month panel; the default window (13 target months ending at month 37, horizons 1..24) trains a
release, which scores month 37 with detail. Its 24 forecast months are extended to 36 by the sBG
(Fader & Hardie 2007) and by the beta-discrete-Weibull (sBG is its c = 1 case; Fader et al. 2018), both
fitted per subscriber to the forecast survival curve (spark_app.cltv.extend_survival), and each
extension's share in the active and paid base and value of months 25..36 is set against what the scored
subscribers then did (facts of months 62..73). Also: the short-history case's extended months (6..8) with
`--short work/bench/short` (benchmarks/short_history.py's output). A generated panel favours the process
that generated it — here a logistic hazard with frailty, neither sBG nor BdW exactly.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from spark_app.cli import setup_logging
from spark_app.cltv import Extrapolation, ValueFormula, extend_amount, extend_survival
from spark_app.config import load_settings
from spark_app.dataset import build_dataset
from spark_app.generate import PanelSpec, generate_panel
from spark_app.layout import scores_dir, workdir_layers
from spark_app.months import add_months, days_in_month_index, fmt, month_index, parse_month
from spark_app.scoring import score_month
from spark_app.session import get_spark
from spark_app.training import train_release

log = logging.getLogger("extension_backtest")
ROOT = Path(__file__).resolve().parent.parent
START = parse_month("2020-01")
SCORED = add_months(START, 36)  # month 37
METHODS = ("sbg", "bdw")


def monthly_paths(
    forecasts: dict[str, np.ndarray], formula: ValueFormula, months: int, method: str, month: int
) -> dict[str, np.ndarray]:
    """Per subscriber and month 1..months: the extended survival curves and the month's value."""
    days = days_in_month_index(month + np.arange(1, months + 1)).astype(float)
    horizon = next(iter(forecasts.values())).shape[1]
    survival = {m: extend_survival(forecasts[m], months, method=method) for m in formula.survival}
    ext = Extrapolation(months=months)
    value = np.zeros((next(iter(forecasts.values())).shape[0], months))
    for t in formula.terms:
        daily = forecasts[t.model_id] / days[None, :horizon]
        carrier = survival[t.carrier]
        value += (
            t.sign * t.unit_cost * extend_amount(daily, carrier[:, :horizon], carrier, ext) * days[None, :]
        )
    if formula.overhead_base:
        value -= formula.overhead_per_month * survival[formula.overhead_base]
    return {**survival, "value": value}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", default="work/bench/extension")
    parser.add_argument("--subscribers", type=int, default=50_000)
    args = parser.parse_args()
    setup_logging()
    work = (ROOT / args.work).resolve()
    overrides = {**workdir_layers(work, work / "panel"), "spark": {"master": "local[2]"}}
    settings = load_settings(ROOT / "conf" / "local.yaml", overrides=overrides, environ={})
    spark = get_spark(settings.spark)
    if not (work / "panel" / "facts").exists():
        generate_panel(spark, str(work / "panel"), PanelSpec(args.subscribers, 73, START, seed=9))
    if not (Path(scores_dir(settings.paths, SCORED)) / "_SUCCESS").exists():
        build_dataset(spark, settings, SCORED)
        release = train_release(spark, settings)
        score_month(spark, settings, SCORED, release=str(release.version), detail=True)
    scores = pd.read_parquet(scores_dir(settings.paths, SCORED))
    catalog = settings.models.catalog()
    formula = ValueFormula.from_catalog(catalog, settings.costs)
    forecasts = {m: np.stack(scores[f"{m}_h"].to_numpy()) for m in catalog.ids}
    ids = pd.Index(scores["subscriber_id"])
    facts = pd.read_parquet(work / "panel" / "facts")
    facts["report_month"] = pd.to_datetime(facts["report_month"]).dt.date
    months = range(25, 37)
    realized = {k: np.zeros((len(ids), len(months))) for k in ("value", "active", "paid")}
    for j, h in enumerate(months):
        month = facts[facts["report_month"] == add_months(SCORED, h)]
        rows = ids.get_indexer(month["subscriber_id"])
        keep = rows >= 0
        sub = month[keep]
        realized["value"][rows[keep], j] = formula.monthly_value(
            lambda m, sub=sub: sub[catalog[m].fact].to_numpy(float)
        )
        realized["active"][rows[keep], j] = sub["in_active_base"].to_numpy()
        realized["paid"][rows[keep], j] = sub["in_paid_base"].to_numpy()
    out = []
    for method in METHODS:
        paths = monthly_paths(forecasts, formula, 36, method, month_index(SCORED))
        for j, h in enumerate(months):
            out.append(
                {
                    "method": method,
                    "horizon": h,
                    "month": fmt(add_months(SCORED, h)),
                    "value_error": paths["value"][:, h - 1].sum() / realized["value"][:, j].sum() - 1,
                    "active_predicted": paths["active"][:, h - 1].mean(),
                    "active_realized": realized["active"][:, j].mean(),
                    "paid_predicted": paths["paid"][:, h - 1].mean(),
                    "paid_realized": realized["paid"][:, j].mean(),
                }
            )
    table = pd.DataFrame(out)
    summary = table.groupby("method").agg(
        value_error=("value_error", lambda x: float(np.mean(x))),
        value_abs_error=("value_error", lambda x: float(np.mean(np.abs(x)))),
        active_abs_gap=("active_predicted", lambda x: 0.0),
    )
    for method in METHODS:
        part = table[table["method"] == method]
        summary.loc[method, "active_abs_gap"] = float(
            (part["active_predicted"] - part["active_realized"]).abs().mean()
        )
        summary.loc[method, "paid_abs_gap"] = float(
            (part["paid_predicted"] - part["paid_realized"]).abs().mean()
        )
    pd.set_option("display.width", 200)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(summary.to_string(float_format=lambda v: f"{v:.4f}"))
    (work / "extension.json").write_text(
        json.dumps({"months": out, "summary": summary.reset_index().to_dict("records")}, default=float)
    )


if __name__ == "__main__":
    main()
