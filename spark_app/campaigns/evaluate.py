"""`cltv campaign evaluate`: did the campaign of month M keep subscribers, and was it worth its cost?

At the outcome month E = M + N: the design's list joined with the facts of M+1..E. Per channel, Retention_N
(in the retention base at E) and the realized N-month value by group, their difference by the same
post-stratified estimator the design's A/A simulation used (spark_app.campaigns.stats), the relative
lift, the value difference also with CUPED (the pre-period value of M−N+1..M) and CUPAC (the scores'
`cltv_24m` of M) with their variance reduction, the incremental value net of the contact cost, a
sample-ratio check of the groups' counts (with paths.parties: of households, the split's unit) against the
designed share (exit 1 when p < 0.001), Holm's
correction across channels × primary metrics, and the lift by value-at-risk decile (uplift@k, Qini) to
guide the next targeting. Spark aggregates per (channel, stratum, group) and per (channel, decile, group);
the driver gets those cells only.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from spark_app import tracking
from spark_app.campaigns import stats
from spark_app.campaigns.contacts import CHANNEL, CONTROL, GROUP, TREATMENT
from spark_app.campaigns.design import (
    STRATUM,
    campaign_config,
    months_present,
    outcomes,
    read_design,
    to_pandas,
)
from spark_app.campaigns.households import randomized_units, read_campaign_parties, with_party_keys
from spark_app.config import Settings
from spark_app.contract import ID
from spark_app.errors import InputsNotReady
from spark_app.layout import DESIGN_JSON, EVALUATION_JSON, design_dir, evaluation_dir, read_scores
from spark_app.months import add_months, fmt, month_range
from spark_app.parties import SPLIT_KEY
from spark_app.progress import StageTimer
from spark_app.storage import Storage

log = logging.getLogger(__name__)

SRM_FAIL_P = 0.001
PRIMARY = ("retention", "value")


@dataclass
class EvaluationResult:
    campaign: str
    design_month: dt.date
    month: dt.date
    path: str
    failed: bool  # a sample-ratio mismatch: the groups are not what the design made
    reasons: list[str]
    results: pd.DataFrame = field(repr=False)
    deciles: pd.DataFrame = field(repr=False)
    record: dict[str, Any] = field(repr=False)


OUTCOMES, COVARIATES = ("retained", "value"), ("pre_value", "cltv_24m")


def cells(rows: DataFrame, unit: str | None = None) -> DataFrame:
    """Per (channel, stratum, group) the sums every estimator needs (sums of squares for variances, cross
    products for CUPED/CUPAC). `unit`: the column of the randomization unit (the household's split key)
    when whole households were randomized — then also the sums over households (`unit_cells`)."""
    if unit is not None:
        return unit_cells(rows, unit)
    sums: list[Any] = [F.count(F.lit(1)).alias("n")]
    for y in ("retained", "value"):
        sums += [F.sum(y).alias(f"{y}"), F.sum(F.col(y) * F.col(y)).alias(f"{y}2")]
    for x in ("pre_value", "cltv_24m"):
        sums += [
            F.sum(x).alias(x),
            F.sum(F.col(x) * F.col(x)).alias(f"{x}2"),
            F.sum(F.col(x) * F.col("value")).alias(f"{x}_value"),
        ]
    return rows.groupBy(CHANNEL, STRATUM, GROUP).agg(*sums)


def unit_cells(rows: DataFrame, unit: str) -> DataFrame:
    """`cells` with the households as units: each household's lines `m` and totals first (one groupBy),
    then per (channel, stratum, group) the line sums as `cells` gives them and, prefixed `u_`, the sums
    over households `stats.Units` / `CovariateUnits` take (ΣY_u², ΣY_u·m_u, Σm_u², ΣX_u², ΣX_u·Y_u,
    ΣX_u·m_u) with `units` = k."""
    m, value = F.col("_m"), F.col("value")
    per_unit = rows.groupBy(CHANNEL, STRATUM, GROUP, unit).agg(
        F.count(F.lit(1)).alias("_m"),
        *[F.sum(c).alias(c) for c in (*OUTCOMES, *COVARIATES)],
        *[F.sum(F.col(y) * F.col(y)).alias(f"{y}2") for y in OUTCOMES],
        *[F.sum(F.col(x) * F.col(x)).alias(f"{x}2") for x in COVARIATES],
        *[F.sum(F.col(x) * F.col("value")).alias(f"{x}_value") for x in COVARIATES],
    )
    sums: list[Any] = [F.sum(m).alias("n"), F.count(F.lit(1)).alias("units"), F.sum(m * m).alias("u_m2")]
    for y in OUTCOMES:
        c = F.col(y)
        sums += [F.sum(c).alias(y), F.sum(f"{y}2").alias(f"{y}2"), F.sum(c * c).alias(f"u_{y}2"),
                 F.sum(c * m).alias(f"u_{y}m")]  # fmt: skip
    for x in COVARIATES:
        c = F.col(x)
        sums += [F.sum(c).alias(x), F.sum(f"{x}2").alias(f"{x}2"), F.sum(f"{x}_value").alias(f"{x}_value"),
                 F.sum(c * c).alias(f"u_{x}2"), F.sum(c * value).alias(f"u_{x}_value"),
                 F.sum(c * m).alias(f"u_{x}m")]  # fmt: skip
    return per_unit.groupBy(CHANNEL, STRATUM, GROUP).agg(*sums)


def _part(table: pd.DataFrame, group: str, strata: list[str]) -> pd.DataFrame:
    return table[table[GROUP] == group].set_index(STRATUM).reindex(strata).fillna(0.0)


def group_cells(table: pd.DataFrame, group: str, y: str, strata: list[str]) -> stats.Cells:
    part = _part(table, group, strata)
    units = None
    if "units" in part:  # households randomized (`unit_cells`)
        units = stats.Units(*(part[c].to_numpy(float) for c in ("units", f"u_{y}2", f"u_{y}m", "u_m2")))
    return stats.Cells(
        part["n"].to_numpy(float), part[y].to_numpy(float), part[f"{y}2"].to_numpy(float), units
    )


def covariate_cells(table: pd.DataFrame, group: str, x: str, strata: list[str]) -> stats.CovariateCells:
    part = _part(table, group, strata)
    units = None
    if "units" in part:  # households randomized (`unit_cells`)
        names = ("units", "u_value2", "u_valuem", "u_m2", f"u_{x}2", f"u_{x}_value", f"u_{x}m")
        units = stats.CovariateUnits(*(part[c].to_numpy(float) for c in names))
    return stats.CovariateCells(
        part["n"].to_numpy(float),
        part["value"].to_numpy(float),
        part["value2"].to_numpy(float),
        part[x].to_numpy(float),
        part[f"{x}2"].to_numpy(float),
        part[f"{x}_value"].to_numpy(float),
        units,
    )


def estimate_row(channel: str, metric: str, estimator: str, est: stats.Estimate, **extra: Any) -> dict:
    rel, rel_low, rel_high = stats.relative_lift(est)
    return {
        "channel": channel,
        "metric": metric,
        "estimator": estimator,
        "n_treated": est.n_treated,
        "n_control": est.n_control,
        "treated": est.mean_treated,
        "control": est.mean_control,
        "diff": est.diff,
        "ci_low": est.ci_low,
        "ci_high": est.ci_high,
        "p_value": est.p_value,
        "relative": rel,
        "relative_low": rel_low,
        "relative_high": rel_high,
        **extra,
    }


def channel_results(table: pd.DataFrame, channel: str, cost: float, has: dict[str, bool]) -> list[dict]:
    mine = table[table[CHANNEL] == channel]
    strata = sorted(mine[STRATUM].unique())
    out = []
    for metric, y in (("retention", "retained"), ("value", "value")):
        t, c = group_cells(mine, TREATMENT, y, strata), group_cells(mine, CONTROL, y, strata)
        est = stats.stratified_difference(t, c)
        extra: dict[str, Any] = {"variance_reduction": 0.0, "theta": None}
        if metric == "value":
            n_t = est.n_treated
            extra["incremental_value"] = est.diff * n_t - cost * n_t
            extra["incremental_low"] = est.ci_low * n_t - cost * n_t
            extra["incremental_high"] = est.ci_high * n_t - cost * n_t
        out.append(estimate_row(channel, metric, "stratified", est, **extra))
        if metric == "value":
            for estimator, x in (("cuped", "pre_value"), ("cupac", "cltv_24m")):
                if not has[x]:
                    continue
                adj_t, adj_c, theta, reduction = stats.cuped(
                    covariate_cells(mine, TREATMENT, x, strata), covariate_cells(mine, CONTROL, x, strata)
                )
                adjusted = stats.stratified_difference(adj_t, adj_c)
                out.append(
                    estimate_row(
                        channel, metric, estimator, adjusted, variance_reduction=reduction, theta=theta
                    )
                )
    return out


def decile_table(rows: DataFrame, channels: list[str]) -> pd.DataFrame:
    decile = F.substring(F.col(STRATUM), 1, 2).cast("int").alias("decile")
    found = to_pandas(
        rows.sparkSession,
        rows.groupBy(CHANNEL, decile, GROUP).agg(
            F.count(F.lit(1)).alias("n"), F.sum("retained").alias("retained"), F.sum("value").alias("value")
        ),
    )
    out = []
    deciles = np.arange(1, 11)
    for channel in channels:
        mine = found[found[CHANNEL] == channel]

        def part(group: str, col: str, mine: pd.DataFrame = mine) -> np.ndarray:
            g = mine[mine[GROUP] == group].set_index("decile").reindex(deciles).fillna(0.0)
            return g[col].to_numpy(float)

        for metric, col in (("retention", "retained"), ("value", "value")):
            lifts, qini = stats.uplift_from_cells(
                deciles, part(TREATMENT, "n"), part(TREATMENT, col), part(CONTROL, "n"), part(CONTROL, col)
            )
            out += [
                {
                    "channel": channel,
                    "metric": metric,
                    "decile": d.decile,
                    "n_treated": d.n_treated,
                    "n_control": d.n_control,
                    "lift": d.lift,
                    "cumulative_lift": d.cumulative_lift,
                    "qini": qini,
                }
                for d in lifts
            ]
    return pd.DataFrame(out)


def evaluate_campaign(spark: SparkSession, settings: Settings, name: str, month: dt.date) -> EvaluationResult:
    cfg = campaign_config(settings, name)
    timer = StageTimer()
    design_month = add_months(month, -cfg.outcome_months)
    window = month_range(add_months(design_month, 1), month)
    with timer.stage("read", spark):
        listed, design = read_design(spark, settings, name, design_month)
        # with parties the split randomized households: the statistics take them as units
        parties = read_campaign_parties(spark, settings, design_month)
        unit = None if parties is None else SPLIT_KEY
        if parties is not None:
            listed = with_party_keys(listed, parties)
        arrived = months_present(spark, settings.paths.facts, "facts", window)
        missing = [m for m in window if m not in arrived]
        if missing:
            raise InputsNotReady(
                f"campaign {name} {fmt(design_month)}: outcomes not arrived yet — facts of "
                f"{', '.join(fmt(m) for m in missing)} (outcome month {fmt(month)})"
            )
        pre_window = month_range(add_months(design_month, 1 - cfg.outcome_months), design_month)
        has_pre = months_present(spark, settings.paths.facts, "facts", pre_window) == pre_window
        scores = read_scores(spark, settings.paths, design_month)
        rows = (
            listed.join(outcomes(spark, settings, cfg, window, pre_window if has_pre else None), ID, "left")
            .withColumn("retained", F.coalesce(F.col("retained"), F.lit(0.0)))
            .withColumn("value", F.coalesce(F.col("value"), F.lit(0.0)))
            .withColumn("pre_value", F.coalesce(F.col("pre_value"), F.lit(0.0)) if has_pre else F.lit(0.0))
        )
        has_cupac = scores is not None and "cltv_24m" in scores.columns
        if has_cupac:
            rows = rows.join(scores.select(ID, "cltv_24m"), ID, "left")
            rows = rows.withColumn("cltv_24m", F.coalesce(F.col("cltv_24m"), F.lit(0.0)))
        else:
            rows = rows.withColumn("cltv_24m", F.lit(0.0))
        rows = rows.cache()
    with timer.stage("estimate", spark):
        table = to_pandas(spark, cells(rows, unit))
        # the sample-ratio check counts what the split randomized: lines, or with parties households
        units = table if parties is None else to_pandas(spark, randomized_units(rows))
        has = {"pre_value": has_pre, "cltv_24m": has_cupac}
        results: list[dict] = []
        srm: dict[str, float] = {}
        for channel in cfg.channels:
            results += channel_results(table, channel.name, channel.contact_cost, has)
            n_t = int(units[(units[CHANNEL] == channel.name) & (units[GROUP] == TREATMENT)]["n"].sum())
            n_c = int(units[(units[CHANNEL] == channel.name) & (units[GROUP] == CONTROL)]["n"].sum())
            srm[channel.name] = stats.srm_p_value(n_c, n_t, channel.control_share)
        frame = pd.DataFrame(results)
        primary = (frame["estimator"] == "stratified") & frame["metric"].isin(PRIMARY)
        frame["p_holm"] = np.nan
        frame.loc[primary, "p_holm"] = stats.holm(frame.loc[primary, "p_value"].tolist())
        frame["srm_p"] = frame["channel"].map(srm)
        deciles = decile_table(rows, [c.name for c in cfg.channels])
    rows.unpersist()
    reasons = [
        f"{channel}: sample-ratio mismatch (χ² p = {p:.2g} < {SRM_FAIL_P}): the groups' counts are not the "
        "designed shares — the list was changed or the split broke; the effects cannot be trusted"
        for channel, p in srm.items()
        if p < SRM_FAIL_P
    ]
    record = {
        "campaign": name,
        "design_month": fmt(design_month),
        "month": fmt(month),
        "outcome_months": [fmt(m) for m in window],
        "design_status": design.get("status"),
        "cuped": "pre-period value of "
        + (", ".join(fmt(m) for m in pre_window) if has_pre else "n/a: no facts"),
        "cupac": "the scores' cltv_24m of the design month" if has_cupac else "n/a: no scores",
        "srm_p": srm,
        **({"srm_units": "households (the split's unit)"} if parties is not None else {}),
        "status": "failed" if reasons else "ok",
        "reasons": reasons,
        "results": json.loads(frame.to_json(orient="records")),
        "deciles": json.loads(deciles.to_json(orient="records")),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    storage = Storage(spark)
    target = evaluation_dir(settings.paths, name, month)
    with timer.stage("write", spark), storage.staged(target) as staging:
        spark.createDataFrame(frame).coalesce(1).write.parquet(f"{staging}/results")
        if len(deciles):
            spark.createDataFrame(deciles).coalesce(1).write.parquet(f"{staging}/deciles")
        storage.write_text(f"{staging}/{EVALUATION_JSON}", json.dumps(record, indent=2, sort_keys=True))
    log_evaluation_run(settings, record, frame)
    log_evaluation(record, frame, timer)
    return EvaluationResult(
        name, design_month, month, storage.qualify(target), bool(reasons), reasons, frame, deciles, record
    )


@tracking.guarded
def log_evaluation_run(settings: Settings, record: dict[str, Any], frame: pd.DataFrame) -> None:
    cfg = settings.mlflow
    client = tracking.client(cfg)
    experiment = tracking.experiment_id(client, cfg.campaign_experiment, cfg.artifact_location)
    run = client.create_run(
        experiment,
        run_name=f"evaluate {record['campaign']} {record['design_month']} at {record['month']}",
        tags={
            "cltv.job": "campaign-evaluate",
            "cltv.campaign": record["campaign"],
            "cltv.month": record["month"],
            "cltv.design_month": record["design_month"],
            "cltv.status": record["status"],
        },
    )
    metrics = {}
    for r in frame.itertuples(index=False):
        key = f"{r.channel}.{r.metric}.{r.estimator}"
        for name in ("diff", "ci_low", "ci_high", "p_value", "relative", "treated", "control"):
            value = getattr(r, name)
            if value is not None and np.isfinite(value):
                metrics[f"{key}.{name}"] = float(value)
    metrics.update({f"{c}.srm_p": p for c, p in record["srm_p"].items()})
    tracking.log_values(client, run.info.run_id, {"design_month": record["design_month"]}, metrics)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "evaluation.json"
        path.write_text(json.dumps(record, indent=2, sort_keys=True))
        client.log_artifact(run.info.run_id, str(path), "campaign")
    client.set_terminated(run.info.run_id)


def log_evaluation(record: dict[str, Any], frame: pd.DataFrame, timer: StageTimer) -> None:
    log.info(
        "campaign %s %s evaluated at %s: %s; %s",
        record["campaign"],
        record["design_month"],
        record["month"],
        record["status"],
        timer.summary(),
    )
    for r in frame.itertuples(index=False):
        log.info(
            "  %-18s %-9s %-10s treated %9.4g  control %9.4g  lift %+9.4g  (95 %% CI %+.4g..%+.4g, p %.3g%s)",
            r.channel,
            r.metric,
            r.estimator,
            r.treated,
            r.control,
            r.diff,
            r.ci_low,
            r.ci_high,
            r.p_value,
            "" if not np.isfinite(r.p_holm) else f", Holm {r.p_holm:.3g}",
        )
    for reason in record["reasons"]:
        log.error("  %s", reason)


__all__ = ["EvaluationResult", "evaluate_campaign"]


def review_tables(spark: SparkSession, settings: Settings, month: dt.date) -> list[tuple[str, pd.DataFrame]]:
    """For the monthly review page: each configured campaign's design of `month` (whom, how many, MDE,
    A/A) and its evaluation at `month` (the effect by channel, and by value-at-risk decile)."""
    storage = Storage(spark)
    out: list[tuple[str, pd.DataFrame]] = []
    for name in settings.campaigns:
        design_file = f"{design_dir(settings.paths, name, month)}/{DESIGN_JSON}"
        if storage.exists(design_file):
            design = json.loads(storage.read_text(design_file))
            rows = []
            for channel, c in design["channels"].items():
                aa = design.get("aa", {}).get("channels", {}).get(channel, {})
                retention = aa.get("retention") or {}
                rows.append(
                    {
                        "channel": channel,
                        "status": design["status"],
                        "eligible": c["eligible"],
                        "excluded (holdout / consent / frozen / reserved)": " / ".join(
                            f"{c[k]:,}" for k in ("holdout", "consent", "frozen", "reserved")
                        ),
                        "treated": c["treated"],
                        "control": c["control"],
                        "retention MDE": retention.get("mde"),
                        "A/A false positives": retention.get("aa_rate"),
                    }
                )
            title = (
                f"Campaign {name}: design of {design['month']} (launch {design['launch_date']}, outcome "
                f"{design['outcome_month']})"
            )
            out.append((title, pd.DataFrame(rows)))
        eval_file = f"{evaluation_dir(settings.paths, name, month)}/{EVALUATION_JSON}"
        if storage.exists(eval_file):
            record = json.loads(storage.read_text(eval_file))
            results = pd.DataFrame(record["results"])
            if len(results):
                shown = results[
                    [
                        "channel",
                        "metric",
                        "estimator",
                        "n_treated",
                        "n_control",
                        "treated",
                        "control",
                        "diff",
                        "ci_low",
                        "ci_high",
                        "p_value",
                        "p_holm",
                        "srm_p",
                    ]
                ].copy()
                title = (
                    f"Campaign {name}: effect of the {record['design_month']} campaign at {record['month']} "
                    f"({record['status']})"
                )
                out.append((title, shown))
            deciles = pd.DataFrame(record["deciles"])
            if len(deciles):
                lift = deciles[deciles["metric"] == "retention"].pivot_table(
                    index="channel", columns="decile", values="lift"
                )
                out.append(
                    (
                        f"Campaign {name}: retention lift by value-at-risk decile (1 = highest)",
                        lift.add_prefix("d").reset_index(),
                    )
                )
    return out
