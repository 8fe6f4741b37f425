"""`cltv train`: fit the enabled models on a training set, evaluate them beside naive baselines, and log
everything as ONE MLflow run registered as ONE new version (alias `challenger`) of the release model.

Flow: read_dataset → capped, hash-chosen samples of each split to the driver through Arrow → `Learner.fit`
(survival on train_surv; regressors on train_reg with stacked survival predictions; early stopping on
val) → metrics per model × split × horizon beside naive baselines → bundle + evaluation artifacts →
`registry.log_release`. docs/training.md explains the choices.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from spark_app import __version__
from spark_app.batch import FeatureRanges, horizon_rows, inputs_from_pandas, monthly_forecasts
from spark_app.catalog import (
    DERIVED_FEATURES,
    HORIZON,
    NULL_CATEGORY,
    PARTY_FEATURES,
    REGRESSION,
    ModelCatalog,
)
from spark_app.cltv import SURVIVAL_POINTS, ValueFormula
from spark_app.config import INTERVAL_LEVELS, Settings
from spark_app.contract import ID, MONTH, month_dirs, read_table
from spark_app.dataset import read_dataset, unit_hash
from spark_app.errors import UserError
from spark_app.evaluation import (
    VALUE,
    Evaluation,
    NaiveBaseline,
    actuals,
    calibration_table,
    cumulative_bias,
    decile_table,
    finite,
    fmt_metric,
    fmt_noise,
    fmt_pct,
    main_metric_of,
    metric_rows,
    metric_table,
    monthly_values,
    quality_table,
)
from spark_app.figures import (
    close,
    plot_bias_by_horizon,
    plot_calibration,
    plot_deciles,
    plot_importance,
    plot_metric_by_horizon,
)
from spark_app.intervals import IntervalTable, cumulative_values, fit_intervals
from spark_app.metrics import push_job_metrics, release_figures
from spark_app.models import Learner
from spark_app.months import add_months, fmt, month_index, month_range, months_between, parse_month
from spark_app.parties import (
    CUSTOMER,
    FEATURE_MONTH_COL,
    FORECAST_CUM,
    HOUSEHOLD,
    PARTY_COLUMNS,
    PERSON,
    PREDICTED_P,
    REALIZED_CUM,
    REALIZED_IN,
    SPLIT_KEY,
    PartyInputs,
    PartyModel,
    carry_tenure,
    fit_party_model,
    newest_per_customer,
    party_clusters,
    party_feature_rows,
    party_key,
    read_party_inputs,
    with_customer,
)
from spark_app.progress import StageTimer
from spark_app.registry import OOT_SAMPLE, log_release, model_input
from spark_app.scoring import make_plan
from spark_app.seasonality import fit_seasons
from spark_app.session import session_conf
from spark_app.storage import Storage

log = logging.getLogger(__name__)

KEY_COLUMNS = (ID, "feature_month", "target_month", *DERIVED_FEATURES)
ARROW_CONF = "spark.sql.execution.arrow.pyspark.enabled"


class TrainingError(UserError):
    """The training set cannot train this configuration; the message names the dataset and column."""


@dataclass(frozen=True)
class ReleaseInfo:
    """What `cltv train` produced: the registered version and the run that holds its evidence."""

    version: int
    run_id: str
    model_name: str
    dataset_id: str
    target_window: str
    models: tuple[str, ...]
    quality: list[dict[str, Any]] = field(default_factory=list)  # OOT main metric vs naive per model
    seconds: dict[str, float] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.model_name} v{self.version} (run {self.run_id}, dataset {self.dataset_id})"


# ---------------------------------------------------------------- Spark → driver
def capped(df: DataFrame, *, rows: int, cap: int, salt: str) -> DataFrame:
    """Keep a hash-chosen cap/rows share of the subscribers: deterministic, and about `cap` rows."""
    if rows <= cap:
        return df
    return df.where(unit_hash(ID, salt, "train-cap") < float(cap) / rows)


def needed_columns(catalog: ModelCatalog) -> list[str]:
    return [*KEY_COLUMNS, *catalog.input_columns(), *catalog.party_features(), *catalog.targets()]


def to_driver(
    spark: SparkSession,
    frames: dict[str, DataFrame],
    manifest: dict[str, Any],
    settings: Settings,
    dataset_id: str,
) -> dict[str, pd.DataFrame]:
    """Each split's capped sample as pandas (Arrow on), with only the columns the models need."""
    columns = needed_columns(settings.models.catalog())
    cap = settings.training.max_rows_per_model
    out: dict[str, pd.DataFrame] = {}
    with session_conf(spark, **{ARROW_CONF: "true"}):
        for name, df in frames.items():
            missing = [c for c in columns if c not in df.columns]
            if missing and len(df.columns):
                raise TrainingError(
                    f"training set {dataset_id}, split {name}: columns {missing} missing "
                    "(built for other model profiles? rebuild it with `cltv build-dataset`)"
                )
            if not len(df.columns):
                out[name] = pd.DataFrame(columns=columns)
                continue
            rows = int(manifest.get("splits", {}).get(name, {}).get("rows", 0)) or df.count()
            present = [*columns, *[c for c in PARTY_COLUMNS if c in df.columns and c not in columns]]
            sample = capped(df.select(*present), rows=rows, cap=cap, salt=settings.dataset.salt)
            out[name] = sample.toPandas()
            log.info(
                "split %s: %s of %s rows to the driver (cap training.max_rows_per_model=%s)",
                name,
                f"{len(out[name]):,}",
                f"{rows:,}",
                f"{cap:,}",
            )
    return out


# ---------------------------------------------------------------- evaluation
def evaluate(
    learner: Learner, frames: dict[str, pd.DataFrame], naive: NaiveBaseline, settings: Settings
) -> Evaluation:
    """Metrics per model × split × horizon beside the naive baseline; `train` = each model's own split.
    On the held-out splits also the month's value of each row (pseudo-model `value`)."""
    catalog = learner.catalog.subset(list(learner.models))
    kinds = {e.model_id: e.kind for e in catalog}
    kinds[VALUE] = REGRESSION
    formula = ValueFormula.from_catalog(catalog, settings.costs)
    surv = [e.model_id for e in catalog.survival]
    reg = [e.model_id for e in catalog.amounts]
    sources: list[tuple[str, pd.DataFrame, list[str]]] = [
        ("train", frames["train_surv"], surv),
        ("train", frames["train_reg"], reg),
        *[(s, frames[s], list(catalog.ids)) for s in ("val", "test", "oot")],
    ]
    rows: list[dict[str, Any]] = []
    cumulative: dict[str, tuple[float, float]] = {}
    deciles: list[pd.DataFrame] = []
    calibration: dict[str, dict[str, pd.DataFrame]] = {m: {} for m in surv}
    for split, frame, wanted in sources:
        if not len(frame) or not wanted:
            continue
        predictions = {m: v for m, v in learner.predict(frame).items() if m in wanted}
        baseline = naive.predict(frame, wanted)
        actual = actuals(frame, catalog)
        clusters = party_clusters(frame)  # households: their members leave together (bias noise)
        if len(wanted) == len(catalog.ids):
            predictions[VALUE] = monthly_values(frame, predictions, catalog, formula)
            baseline[VALUE] = monthly_values(frame, baseline, catalog, formula)
            actual[VALUE] = monthly_values(frame, actual, catalog, formula)
            if split == "oot":
                h, up_to = frame[HORIZON].to_numpy(), settings.dataset.max_horizon
                cumulative[VALUE] = (
                    cumulative_bias(h, predictions[VALUE], actual[VALUE], up_to, clusters),
                    cumulative_bias(h, baseline[VALUE], actual[VALUE], up_to, clusters),
                )
        rows += metric_rows(frame, predictions, baseline, actual, kinds, split, clusters)
        for m, pred in predictions.items():
            deciles.append(decile_table(actual[m], pred).assign(model_id=m, split=split))
            if m in calibration:
                bins = settings.training.calibration_bins
                calibration[m][split] = calibration_table(actual[m], pred, bins)
    table = metric_table(rows)
    quality = (
        quality_table(table, settings.promotion.main_metric, split="oot", cumulative=cumulative)
        if len(table)
        else pd.DataFrame()
    )
    decile_frame = pd.concat(deciles, ignore_index=True) if deciles else pd.DataFrame()
    return Evaluation(table=table, calibration=calibration, deciles=decile_frame, quality=quality)


def write_evaluation(
    evaluation: Evaluation, learner: Learner, out: Path, main_metric: dict[str, str]
) -> None:
    """Per-horizon tables as CSV, calibration tables, fit reports and PNG plots under `out`."""
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    evaluation.table.to_csv(out / "metrics_by_horizon.csv", index=False)
    evaluation.quality.to_csv(out / "quality_oot.csv", index=False)
    calib = [
        t.assign(model_id=m, split=s)
        for m, by_split in evaluation.calibration.items()
        for s, t in by_split.items()
    ]
    if calib:
        pd.concat(calib, ignore_index=True).to_csv(out / "calibration.csv", index=False)
    if len(evaluation.deciles):
        evaluation.deciles.to_csv(out / "deciles.csv", index=False)
    reports = {m: asdict(r) for m, r in learner.fit_reports.items()}
    (out / "fit_report.json").write_text(json.dumps(reports, indent=2))
    recalibration = {m: asdict(r) for m, r in learner.calibration_reports.items()}
    (out / "calibration_report.json").write_text(json.dumps(recalibration, indent=2))

    def save(name: str, fig: Figure | None) -> None:
        if fig is not None:
            fig.savefig(plots / name, dpi=90)
            close(fig)

    save("agg_bias_by_horizon.png", plot_bias_by_horizon(evaluation.table))
    for entry in learner.entries:
        model_id = entry.model_id
        metric = main_metric_of(main_metric, model_id, entry.kind)
        save(
            f"{model_id}_{metric}_by_horizon.png", plot_metric_by_horizon(evaluation.table, model_id, metric)
        )
        if entry.is_survival and evaluation.calibration.get(model_id):
            save(f"{model_id}_calibration.png", plot_calibration(evaluation.calibration[model_id], model_id))
        if len(evaluation.deciles):
            save(f"{model_id}_deciles.png", plot_deciles(evaluation.deciles, model_id))
        model = learner.models[model_id]
        save(
            f"{model_id}_importance.png",
            plot_importance(list(model.feature_names_), model.get_feature_importance(), model_id),
        )


# ---------------------------------------------------------------- bundle contents
def categories_seen(frames: list[pd.DataFrame], columns: list[str]) -> dict[str, list[str]]:
    """Categorical values the models were trained on (scoring and monitoring flag unseen ones)."""
    out: dict[str, list[str]] = {}
    for col in columns:
        values: set[str] = set()
        for frame in frames:
            if col in frame:
                values.update(str(v) for v in frame[col].dropna().unique())
        out[col] = sorted(values)
    return out


def reference_sample(frames: list[pd.DataFrame], columns: list[str], rows: int, seed: int) -> pd.DataFrame:
    """At most `rows` rows of the input feature columns of the training data, for the drift monitor."""
    data = pd.concat([f[columns] for f in frames if len(f)], ignore_index=True)
    if len(data) > rows:
        data = data.sample(n=rows, random_state=seed).reset_index(drop=True)
    return data


def target_window(manifest: dict[str, Any]) -> str:
    months = manifest.get("target_months") or []
    return f"{months[0]}..{months[-1]}" if months else str(manifest.get("target_end", "?"))


def log_quality(quality: pd.DataFrame) -> None:
    """Aggregate bias first (percent ± 95 % noise), then the main metric, each beside the naive baseline's,
    in the words and number formats of the release's description (spark_app.evaluation fmt_*)."""
    for row in quality.itertuples(index=False):
        cum = (
            f", cumulative 24-month bias {fmt_noise(row.cum_bias, row.cum_bias_se)}"
            if finite(row.cum_bias)
            else ""
        )
        verdict = "" if row.beats_naive else "  <-- does NOT beat the naive baseline"
        log.log(
            logging.INFO if row.beats_naive else logging.WARNING,
            "OOT %s: bias %s (naive %s), %s %s (naive %s)%s%s",
            row.model_id, fmt_noise(row.agg_bias, row.agg_bias_se), fmt_pct(row.naive_agg_bias, 2),
            row.metric, fmt_metric(row.value, 4), fmt_metric(row.naive, 4), cum, verdict,
        )  # fmt: skip


# ---------------------------------------------------------------- intervals
def interval_months(
    spark: SparkSession, settings: Settings, last_target: dt.date, horizons: int, per_horizon: int
) -> list[dt.date]:
    """Feature months F whose residuals the intervals pool: horizon h takes the `per_horizon` latest
    F with F + h ≤ last target (the closest in time to scoring), so F runs from last target − H −
    per_horizon + 1 to last target − 1; only months whose features are there and whose facts are there
    from F + 1 on."""
    storage = Storage(spark)
    features, _ = month_dirs(storage, settings.paths.features, "features")
    facts, _ = month_dirs(storage, settings.paths.facts, "facts")
    first_fact = last_target
    while add_months(first_fact, -1) in facts:
        first_fact = add_months(first_fact, -1)
    if last_target not in facts:
        return []
    first = add_months(last_target, -(horizons + per_horizon - 1))
    return [
        m
        for m in (add_months(first, k) for k in range(horizons + per_horizon - 1))
        if m in features and add_months(m, 1) >= first_fact
    ]


@dataclass
class HeldOutHistory:
    """Held-out subscribers at the interval months, as the driver holds them: their features rows (`sample`:
    ID, MONTH, the release's inputs; with parties also customer, person and household at that month) and
    what their customers realized after (`realized`: `key`, MONTH, the month's value and every survival
    fact). Without parties the key is the subscriber."""

    sample: pd.DataFrame
    realized: pd.DataFrame
    key: str


def held_out_history(
    spark: SparkSession,
    settings: Settings,
    months: list[dt.date],
    last_target: dt.date,
    plan: Any,
    catalog: ModelCatalog,
    party: PartyInputs | None,
) -> HeldOutHistory:
    """The test split's subscribers (never fitted on; at most `training.interval_subscribers`) at `months`,
    with what they realized up to `last_target`. With parties the split hashes the household (whole
    households are held out, so their sums are the party's), the continuing id of a number change carries
    its customer's tenure, an old id in its overlap month is not a second subscriber, and what a customer
    realized counts every id it had."""
    cfg = settings.dataset
    features = read_table(spark, settings.paths.features, "features", months)
    after = month_range(add_months(months[0], 1), last_target)
    facts = read_table(spark, settings.paths.facts, "facts", after)
    survival_facts = [e.fact for e in catalog.survival]
    value = F.lit(0.0) + plan.formula.monthly_value(
        lambda m: F.coalesce(F.col(catalog[m].fact).cast("double"), F.lit(0.0)), set(catalog.ids)
    )
    if party is None:
        held_out = features.select(ID).distinct().where(unit_hash(ID, cfg.salt, "split") < cfg.test_share)
        held_out = capped(
            held_out, rows=held_out.count(), cap=settings.training.interval_subscribers, salt=cfg.salt
        )
        with session_conf(spark, **{ARROW_CONF: "true"}):
            sample = features.join(held_out, ID, "left_semi").select(ID, MONTH, *plan.input_cols).toPandas()
            realized = (
                facts.join(held_out, ID, "left_semi")
                .select(ID, MONTH, value.alias("value"), *[F.col(c).cast("double") for c in survival_facts])
                .toPandas()
            )
        return HeldOutHistory(sample, realized, ID)
    covered = [m for m in months if m in set(party.covered)]
    by_party = (
        party.parties.where(F.col(MONTH).isin(covered))
        .select(ID, MONTH, PERSON, HOUSEHOLD)
        .transform(with_customer, chains=party.chains)
    )
    uncovered = [m for m in months if m not in set(covered)]
    by_id = (
        features.where(F.col(MONTH).isin(uncovered)).select(ID, MONTH)
        .transform(with_customer, chains=party.chains)
        .withColumn(PERSON, F.col(CUSTOMER)).withColumn(HOUSEHOLD, F.lit(None).cast("string"))
    )  # fmt: skip
    keyed = (
        by_party.unionByName(by_id.select(*by_party.columns))
        .withColumn(SPLIT_KEY, party_key())
        .where(unit_hash(SPLIT_KEY, cfg.salt, "split") < cfg.test_share)
    )
    subscribers = keyed.select(ID).distinct().count()
    cap = settings.training.interval_subscribers
    if subscribers > cap:  # whole households: the cap hashes the split key too
        keyed = keyed.where(unit_hash(SPLIT_KEY, cfg.salt, "train-cap") < float(cap) / subscribers)
    keyed = keyed.localCheckpoint()
    ids = keyed.select(ID).distinct()
    rows = (
        features.join(F.broadcast(ids), ID, "left_semi")
        .select(ID, MONTH, *[c for c in plan.input_cols if c not in PARTY_FEATURES])
        .join(keyed.drop(SPLIT_KEY), [ID, MONTH], "inner")
        .transform(newest_per_customer, month_col=MONTH)
        .transform(carry_tenure, starts=party.starts, tenure_column=catalog.tenure_column, month_col=MONTH)
    )
    wanted = catalog.party_features()
    if wanted:
        figures = party_feature_rows(
            keyed.select(ID, MONTH, PERSON, HOUSEHOLD), features.join(F.broadcast(ids), ID, "left_semi"),
            chains=party.chains, starts=party.starts, tenure_column=catalog.tenure_column,
            home_internet=catalog.home_internet,
        ).select(ID, MONTH, *wanted)  # fmt: skip
        rows = rows.join(figures, [ID, MONTH], "left")
    customers = keyed.select(CUSTOMER).distinct()
    per_customer = (
        facts.transform(with_customer, chains=party.chains)
        .join(F.broadcast(customers), CUSTOMER, "left_semi")
        .groupBy(CUSTOMER, MONTH)
        .agg(
            *[F.max(F.col(c).cast("double")).alias(c) for c in survival_facts],
            *[F.sum(F.col(c).cast("double")).alias(c) for c in sorted({e.fact for e in catalog.amounts})],
        )
    )
    with session_conf(spark, **{ARROW_CONF: "true"}):
        sample = rows.select(ID, MONTH, *plan.input_cols, CUSTOMER, PERSON, HOUSEHOLD).toPandas()
        realized = per_customer.select(
            CUSTOMER, MONTH, value.alias("value"), *[F.col(c) for c in survival_facts]
        ).toPandas()
    return HeldOutHistory(sample, realized, CUSTOMER)


def fit_release_intervals(
    spark: SparkSession,
    settings: Settings,
    learner: Learner,
    last_target: dt.date,
    party: PartyInputs | None = None,
) -> tuple[IntervalTable | None, PartyModel | None]:
    """The release's interval table (spark_app.intervals) and, with parties, its PartyModel: the test split's
    subscribers (a hash of the id — with parties of the household —, never fitted on; at most
    `training.interval_subscribers` of them) at the recent feature months F of `interval_months`, forecast
    by the scoring batch's own functions, beside the value they realized over F+1..F+h (value formula on
    the facts, a month without facts worth 0) and, for the parties, whether they were still in each base."""
    cfg, per_horizon = settings.dataset, settings.training.interval_months
    horizons = max(learner.meta.get("horizons") or cfg.horizons)
    months = interval_months(spark, settings, last_target, horizons, per_horizon)
    if not months or cfg.test_share <= 0:
        log.warning("intervals: no held-out subscribers followed by facts (test_share %s)", cfg.test_share)
        return None, None
    plan = make_plan(settings, learner.manifest(), 0, "intervals", months[0], detail=False)
    catalog = learner.catalog.subset(list(learner.models))
    history = held_out_history(spark, settings, months, last_target, plan, catalog, party)
    sample, realized = history.sample, history.realized
    if not len(sample):
        log.warning("intervals: no held-out subscribers in the features of %s", ", ".join(map(fmt, months)))
        return None, None
    # realized monthly value and base flags: customer (or subscriber) × month index (absent → 0)
    keys = pd.Index(sample[history.key].unique())
    base = month_index(add_months(months[0], 1))
    width = month_index(last_target) - base + 1
    row = keys.get_indexer(realized[history.key])
    when = pd.to_datetime(realized[MONTH])
    col = (when.dt.year * 12 + when.dt.month - 1).to_numpy() - base  # months.month_index, vectorized
    known = row >= 0
    grids = {}
    for name in ["value", *[e.fact for e in catalog.survival]]:
        grids[name] = np.zeros((len(keys), width))
        grids[name][row[known], col[known]] = np.nan_to_num(realized[name].to_numpy(dtype=np.float64))[known]
    grid = grids["value"]
    pooled_f: list[list[np.ndarray]] = [[] for _ in range(horizons)]
    pooled_a: list[list[np.ndarray]] = [[] for _ in range(horizons)]
    pooled_s: list[list[np.ndarray]] = [[] for _ in range(horizons)]
    party_rows: list[pd.DataFrame] = []
    survival_points = party_survival_points(catalog, horizons) if party is not None else {}
    segment = settings.training.interval_segment
    if segment is not None and segment not in plan.categorical:
        log.warning("intervals: training.interval_segment %r is not a categorical input: by decile", segment)
        segment = None
    for month, rows in sample.groupby(MONTH, sort=True):
        month = month if isinstance(month, dt.date) else pd.Timestamp(month).date()
        ahead = months_between(month, last_target)  # facts after F up to the last target
        usable = range(max(1, ahead - per_horizon + 1), min(horizons, ahead) + 1)
        if not len(usable):
            continue
        plan_f = replace(plan, score_month=month)
        inputs = inputs_from_pandas(rows[[ID, *plan.input_cols]], plan_f)
        forecasts = monthly_forecasts(learner.predict(horizon_rows(inputs, plan_f)), len(inputs), plan_f)
        forecast_cum = cumulative_values(forecasts, plan.formula)
        start = month_index(month) + 1 - base
        at = keys.get_indexer(rows[history.key])
        observed = min(horizons, ahead)
        realized_cum = np.cumsum(grid[at, start : start + observed], axis=1)
        labels = None
        if segment:
            values = rows[segment].astype(object)
            labels = values.where(values.notna(), NULL_CATEGORY).astype(str).to_numpy()
        for h in usable:
            pooled_f[h - 1].append(forecast_cum[:, h - 1])
            pooled_a[h - 1].append(realized_cum[:, h - 1])
            if labels is not None:
                pooled_s[h - 1].append(labels)
        if party is not None:
            frame = {FEATURE_MONTH_COL: np.full(len(rows), fmt(month)), PERSON: rows[PERSON].to_numpy(),
                     HOUSEHOLD: rows[HOUSEHOLD].to_numpy()}  # fmt: skip
            for h in range(1, horizons + 1):
                frame[FORECAST_CUM.format(h=h)] = forecast_cum[:, h - 1]
                frame[REALIZED_CUM.format(h=h)] = realized_cum[:, h - 1] if h <= observed else np.nan
            for column, (model_id, h) in survival_points.items():
                frame[PREDICTED_P.format(column=column)] = forecasts[model_id][:, h - 1]
                frame[REALIZED_IN.format(column=column)] = (
                    grids[catalog[model_id].fact][at, start + h - 1] if h <= observed else np.nan
                )
            party_rows.append(pd.DataFrame(frame))
    fitted = next((h for h in range(horizons) if not pooled_f[h]), horizons)
    if not fitted:
        return None, None
    table = fit_intervals(
        [np.concatenate(x) for x in pooled_f[:fitted]],
        [np.concatenate(x) for x in pooled_a[:fitted]],
        feature_month=f"{fmt(months[0])}..{fmt(months[-1])}",
        segments=[np.concatenate(x) for x in pooled_s[:fitted]] if segment else None,
        segment_column=segment,
        min_segment_rows=settings.training.interval_min_segment_rows,
    )
    if table.segments:
        log.info("intervals by %s too: own bands for %s", segment, ", ".join(sorted(table.segments)))
    fewest = min(sum(len(x) for x in pooled) for pooled in pooled_f[:fitted])
    log.info(
        "intervals: %s held-out subscribers at %d feature months %s; %s..%s residuals per horizon, "
        "horizons 1..%d fitted",
        f"{sample[ID].nunique():,}", len(months), table.feature_month, f"{fewest:,}",
        f"{table.subscribers:,}", fitted,
    )  # fmt: skip
    if party is None or not party_rows:
        return table, None
    model = fit_party_model(
        pd.concat(party_rows, ignore_index=True),
        horizons,
        {column: h for column, (_, h) in survival_points.items()},
        INTERVAL_LEVELS,
        table.feature_month,
    )
    log.info(
        "parties: intervals and joint exits fitted on %s held-out persons and %s households (party × feature "
        "month); rho %s", f"{model.parties.get('person', 0):,}", f"{model.parties.get('household', 0):,}",
        "; ".join(f"{lv}: " + ", ".join(f"{c} {v:.2f}" for c, v in r.items()) for lv, r in model.rho.items()),
    )  # fmt: skip
    return table, model


def read_training_parties(
    spark: SparkSession, settings: Settings, manifest: dict[str, Any], last_target: dt.date
) -> PartyInputs | None:
    """The parties for the release's held-out history (None without paths.parties, or when the training
    set was built without it): the chains and customer starts up to the last target month; the table is
    validated by build-dataset already."""
    if settings.paths.parties is None:
        return None
    if not manifest.get("parties"):
        log.warning(
            "paths.parties is set but training set %s was built without it: the release fits no party "
            "model (rebuild the training set to fit one)", manifest.get("dataset_id"),
        )  # fmt: skip
        return None
    months = month_range(add_months(last_target, -(settings.dataset.max_horizon
                                                   + settings.training.interval_months)), last_target)
    return read_party_inputs(
        spark, settings.paths, months, last_target, settings.models.tenure_column, validate=False
    )


def party_survival_points(catalog: ModelCatalog, horizons: int) -> dict[str, tuple[str, int]]:
    """Survival score column (p_<model>_<k>m) → (model, the horizon its joint-exit share is fitted at):
    k itself within the trained horizons, else the longest (the 60-month survival takes the 24-month ρ,
    assumed not to change beyond what history shows)."""
    return {
        f"p_{e.model_id}_{k}m": (e.model_id, min(k, horizons))
        for e in catalog.survival
        for k in SURVIVAL_POINTS
    }


# ---------------------------------------------------------------- the job
def train_release(spark: SparkSession, settings: Settings, dataset_id: str | None = None) -> ReleaseInfo:
    """Train, evaluate and register one release from training set `dataset_id` (default: the newest)."""
    timer = StageTimer()
    with timer.stage("read training set", spark):
        dataset_id, manifest, splits = read_dataset(spark, settings, dataset_id)
        frames = to_driver(spark, splits, manifest, settings, dataset_id)
    for name in ("train_surv", "train_reg"):
        if not len(frames[name]):
            raise TrainingError(f"training set {dataset_id}: split {name} is empty")
    learner = Learner.from_settings(settings)
    learner.seasons = fit_seasons(manifest.get("fact_history"), [e.model_id for e in learner.catalog.amounts])
    for model_id, season in learner.seasons.items():
        log.info("season of %s (fitted on target / index, forecast × index): %s", model_id, season.describe())
    with timer.stage("fit models"):
        learner.fit(frames["train_surv"], frames["train_reg"], frames["val"])
    with timer.stage("calibrate"):
        learner.calibrate(frames["val"], frames["test"], party_clusters(frames["test"]))
    with timer.stage("evaluate"):
        naive = NaiveBaseline.fit(
            learner.catalog, frames["train_surv"], frames["train_reg"], settings.training.tenure_bands
        )
        evaluation = evaluate(learner, frames, naive, settings)
    log_quality(evaluation.quality)
    train_frames = [frames["train_surv"], frames["train_reg"]]
    inputs = learner.catalog.input_columns()
    learner.meta = {
        "horizons": list(manifest.get("horizons") or settings.dataset.horizons),
        "dataset_id": dataset_id,
        "target_window": target_window(manifest),
        "package_version": __version__,
        "trained_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "config": settings.resolved(),
        "input_feature_cols": inputs,
        "categories": categories_seen(train_frames, learner.catalog.input_categorical()),
        "fit": {m: asdict(r) for m, r in learner.fit_reports.items()},
        # what the models saw, per horizon: scoring counts the subscribers beyond it
        "feature_ranges": FeatureRanges.fit(
            pd.concat(train_frames, ignore_index=True),
            [c for c in inputs if c not in learner.catalog.categorical],
            max(manifest.get("horizons") or settings.dataset.horizons),
        ).to_json(),
    }
    with timer.stage("fit intervals", spark):
        last_target = parse_month(manifest["target_months"][-1])
        party = read_training_parties(spark, settings, manifest, last_target)
        intervals, party_model = fit_release_intervals(spark, settings, learner, last_target, party)
    if intervals is not None:
        learner.meta["intervals"] = intervals.to_json()
    if party_model is not None:
        learner.meta["parties"] = party_model.to_json()
    with tempfile.TemporaryDirectory(prefix="cltv-release-") as tmp:
        bundle_dir = Path(tmp) / "bundle"
        eval_dir = Path(tmp) / "evaluation"
        with timer.stage("write bundle and evaluation"):
            reference = reference_sample(
                train_frames, inputs, settings.monitoring.reference_rows, settings.training.random_seed
            )
            learner.save_bundle(bundle_dir, reference=reference)
            write_evaluation(evaluation, learner, eval_dir, settings.promotion.main_metric)
            frames["oot"].to_parquet(eval_dir / OOT_SAMPLE, index=False)
        with timer.stage("log release to MLflow"):
            version, run_id = log_release(
                settings,
                learner=learner,
                bundle_dir=bundle_dir,
                evaluation_dir=eval_dir,
                evaluation=evaluation,
                rows={name: len(f) for name, f in frames.items()},
                input_example=model_input(frames["oot"] if len(frames["oot"]) else frames["val"], learner),
            )
    info = ReleaseInfo(
        version=version,
        run_id=run_id,
        model_name=settings.mlflow.model_name,
        dataset_id=dataset_id,
        target_window=learner.meta["target_window"],
        models=tuple(learner.models),
        quality=evaluation.quality.to_dict("records"),
        seconds=dict(timer.seconds),
    )
    log.info("release %s registered with alias challenger; %s", info, timer.summary())
    push_job_metrics(
        settings.monitoring, "train", None, version, timer.seconds, release_figures(info.quality), "ok"
    )
    return info
