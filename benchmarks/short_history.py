"""A short history: how far off is the forecast of every month, and how does a classical baseline do?

    .venv/bin/python benchmarks/short_history.py --work work/bench/short --subscribers 50000

An 18-month panel whose base ages after six months of acquisitions (seasons as the generator has them),
through conf/examples/short_history.yaml alone: 4 target months ending at month 10, horizons 1..5, the
forecast extended to 8. The release scores month 10; its forecasts of months 11..18 (5 trained, 3
extended) are set against what the scored subscribers then did, beside the classical probabilistic
baseline: a shifted-beta-geometric (sBG) curve fitted to the active share of the month-5 base over months
6..10 (cohort level, spark_app.cltv.fit_sbg; Fader & Hardie 2007), carried to the month-10 base, times each
subscriber's last observed monthly value (the "retention × margin" projection). Reported per month: the
aggregate error of the value (Σ forecast / Σ realized − 1), of the share in the active base, and the mean
absolute error per subscriber of its monthly value, for the release and the baseline. A generated panel
favours the process that generated it (the release learns the generator's hazard, the baseline assumes
sBG): the held-out real panel is the real test. The extended months are also shown under both extension
methods (`ext_sbg_*`, `ext_bdw_*`: spark_app.cltv.extend_survival's sBG and beta-discrete-Weibull).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from spark_app.cli import setup_logging
from spark_app.cltv import ValueFormula, extend_survival, fit_sbg, sbg_survival
from spark_app.config import load_settings, packaged_conf
from spark_app.dataset import build_dataset
from spark_app.generate import PanelSpec, generate_panel
from spark_app.intervals import cumulative_values
from spark_app.layout import scores_dir, workdir_layers
from spark_app.months import add_months, fmt, parse_month
from spark_app.scoring import score_month
from spark_app.session import get_spark
from spark_app.training import train_release

log = logging.getLogger("short_history")
ROOT = Path(__file__).resolve().parent.parent
START = parse_month("2024-01")
SCORED = add_months(START, 9)
AHEAD = 8


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", default="work/bench/short")
    parser.add_argument("--subscribers", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    setup_logging()
    work = (ROOT / args.work).resolve()
    example = yaml.safe_load(packaged_conf().joinpath("examples", "short_history.yaml").read_text())
    example.update(workdir_layers(work, work / "panel"))
    example["spark"] = {"master": "local[2]"}
    work.mkdir(parents=True, exist_ok=True)
    conf = work / "short.yaml"
    conf.write_text(yaml.safe_dump(example))
    settings = load_settings(conf, environ={})
    spark = get_spark(settings.spark)
    # the panel of the short-history figures: persons, households and number changes are not its subject
    spec = PanelSpec(args.subscribers, 18, START, seed=args.seed, acquisition_months=6, parties=False)
    if not (work / "panel" / "facts").exists():
        generate_panel(spark, str(work / "panel"), spec)
    build_dataset(spark, settings, SCORED)
    release = train_release(spark, settings)
    score_month(spark, settings, SCORED, release=str(release.version), detail=True)
    scores = pd.read_parquet(scores_dir(settings.paths, SCORED))
    facts = pd.read_parquet(work / "panel" / "facts")
    facts["report_month"] = pd.to_datetime(facts["report_month"]).dt.date
    catalog = settings.models.catalog()
    formula = ValueFormula.from_catalog(catalog, settings.costs)

    def value_of(frame: pd.DataFrame) -> np.ndarray:
        return np.asarray(
            formula.monthly_value(lambda m: frame[catalog[m].fact].to_numpy(float)), dtype=float
        )

    ids = scores["subscriber_id"].to_numpy()
    index = pd.Index(ids)
    realized = np.zeros((len(ids), AHEAD))
    active = np.zeros((len(ids), AHEAD))
    for h in range(1, AHEAD + 1):
        month = facts[facts["report_month"] == add_months(SCORED, h)]
        rows = index.get_indexer(month["subscriber_id"])
        keep = rows >= 0
        realized[rows[keep], h - 1] = value_of(month[keep])
        active[rows[keep], h - 1] = month.loc[keep, "in_active_base"].to_numpy()
    # the release: 5 forecast months, then the sBG extension of survival and the amounts (cltv's own code)
    forecasts = {m: np.stack(scores[f"{m}_h"].to_numpy()) for m in catalog.ids}
    model_value = np.diff(cumulative_values(forecasts, formula), axis=1, prepend=0.0)
    per_active = model_value[:, -1] / np.maximum(forecasts["active"][:, -1], 1e-9)
    trained = model_value.shape[1]
    extended = {}  # the extension by either method: survival and value of months 1..AHEAD
    for method in ("sbg", "bdw"):
        curve = extend_survival(forecasts["active"], AHEAD, method=method)
        extended[method] = (curve, np.hstack([model_value, per_active[:, None] * curve[:, trained:]]))
    model_active, model_value = extended[settings.scoring.extrapolation_method]
    # the baseline: sBG on the month-5 base's active share over months 6..10, each subscriber's last value
    cohort_month = add_months(SCORED, -5)
    cohort = set(
        facts.loc[(facts["report_month"] == cohort_month) & (facts["in_active_base"] == 1), "subscriber_id"]
    )
    share = [
        facts[
            (facts["report_month"] == add_months(cohort_month, k))
            & (facts["in_active_base"] == 1)
            & facts["subscriber_id"].isin(cohort)
        ]["subscriber_id"].nunique()
        / len(cohort)
        for k in range(1, 6)
    ]
    alpha, beta = fit_sbg(np.array([share]))
    curve = sbg_survival(alpha, beta, 5 + AHEAD)[0]
    carry = curve[5:] / curve[4]  # retention of a base that has survived 5 months, for months 6..13
    last = facts[facts["report_month"] == SCORED]
    last_value = pd.Series(value_of(last), index=last["subscriber_id"]).reindex(ids).fillna(0.0).to_numpy()
    base_value = last_value[:, None] * carry[None, :]
    base_active = np.broadcast_to(carry, (len(ids), AHEAD))
    rows = []
    for h in range(1, AHEAD + 1):
        r = realized[:, h - 1]
        rows.append(
            {
                "month": fmt(add_months(SCORED, h)),
                "horizon": h,
                "kind": "trained" if h <= 5 else "extended",
                "realized_value": r.sum(),
                "release_error": model_value[:, h - 1].sum() / r.sum() - 1,
                "sbg_error": base_value[:, h - 1].sum() / r.sum() - 1,
                "release_mae": np.abs(model_value[:, h - 1] - r).mean(),
                "sbg_mae": np.abs(base_value[:, h - 1] - r).mean(),
                "realized_active": active[:, h - 1].mean(),
                "release_active": model_active[:, h - 1].mean(),
                "sbg_active": base_active[:, h - 1].mean(),
                **{
                    f"ext_{m}_{k}": v
                    for m, (curve, value) in extended.items()
                    for k, v in (
                        ("error", value[:, h - 1].sum() / r.sum() - 1),
                        ("active", curve[:, h - 1].mean()),
                    )
                },
            }
        )
    table = pd.DataFrame(rows)
    total = {
        "release_error": model_value.sum() / realized.sum() - 1,
        "sbg_error": base_value.sum() / realized.sum() - 1,
        "release_mae": np.abs(model_value - realized).mean(),
        "sbg_mae": np.abs(base_value - realized).mean(),
    }
    pd.set_option("display.width", 200)
    print(table.to_string(index=False, float_format=lambda v: f"{v:,.4f}"))
    print("all 8 months:", {k: round(float(v), 4) for k, v in total.items()})
    (work / "short_history.json").write_text(json.dumps({"months": rows, "total": total}, default=float))


if __name__ == "__main__":
    main()
