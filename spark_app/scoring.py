"""The monthly scoring job: every subscriber of month T, 24 horizons × the release's models, 60-month CLTV.

The release is loaded from the MLflow registry on the driver and its bundle bytes are broadcast once; each
Python worker rebuilds the `Learner` once per release and scores Arrow batches of the month's features
with `mapInArrow` (spark_app.batch): a subscriber's features cross into Python once, the horizon rows are
built in numpy, CLTV is computed in the same batch, and the batches count what the job checks and reports,
so the month is read once. The partition is written to a staging directory and swapped in whole, under
the month's lease. With `paths.parties` set, the written scores are read back and rolled up to persons and
households (spark_app.parties), each level staged beside the scores and swapped in with them. docs/scoring.md
describes the output and the method.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import re
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from pyspark.sql import Column, DataFrame, Observation, SparkSession
from pyspark.sql import functions as F

from spark_app import tracking
from spark_app.batch import (
    HOLDOUT,
    RELEASE_DIGEST,
    BatchPlan,
    BatchStats,
    FeatureRanges,
    StatsAccumulator,
    merged,
    output_schema,
    score_arrow_batches,
)
from spark_app.catalog import PARTY_FEATURES, ModelCatalog
from spark_app.cltv import (
    Extrapolation,
    ValueFormula,
)
from spark_app.config import ScoringConfig, Settings
from spark_app.contract import ID, MONTH, InputContractError, features_spec, read_months, schema_problems
from spark_app.errors import UserError
from spark_app.horizons import target_calendar_months
from spark_app.intervals import IntervalTable
from spark_app.layout import SCORE_MONTH, SCORE_SUMMARY, scores_dir
from spark_app.metrics import push_job_metrics, score_figures
from spark_app.models import RELEASE_JSON, Learner
from spark_app.months import fmt
from spark_app.parties import (
    CARRIED,
    HOUSEHOLD,
    LEVELS,
    PERSON,
    RELEASE_VERSION,
    SPLIT_KEY,
    PartyInputs,
    PartyModel,
    attach_parties,
    carry_tenure,
    continued_in_month,
    joint_exit_shares,
    parties_of_month,
    party_feature_rows,
    party_key,
    party_levels,
    party_partition,
    party_scores_root,
    read_party_inputs,
    rollup_columns,
    with_customer,
    with_party_intervals,
)
from spark_app.progress import StageTimer
from spark_app.registry import load_release
from spark_app.session import session_conf
from spark_app.storage import Storage

log = logging.getLogger(__name__)

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
ARROW_BATCH_CONF = "spark.sql.execution.arrow.maxRecordsPerBatch"


class ScoringError(UserError):
    """The release cannot score this month (e.g. its horizons are not 1..H); the message says why."""


@dataclass(frozen=True)
class ScoreSummary:
    """What one scoring run did: the closing log line, the MLflow run and `cltv score`'s result."""

    month: dt.date
    release_version: int
    path: str
    rows: int
    holdout_rows: int
    cltv_mean: float
    cltv_quantiles: dict[str, float]
    missing_values: dict[str, int] = field(default_factory=dict)  # nulls per input column
    non_finite_values: dict[str, int] = field(default_factory=dict)  # NaN, ±inf, beyond float32
    unseen_categorical: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    detail: bool = False
    release_digest: str = ""  # SHA-256 of the release's files, verified before scoring
    models: tuple[str, ...] = ()  # the release's models, which all enter CLTV
    # share of the month's subscribers with a numeric feature outside what the release saw at a horizon
    outside_range_by_horizon: dict[int, float] = field(default_factory=dict)
    outside_range_by_feature: dict[str, float] = field(default_factory=dict)
    party_rows: dict[str, int] = field(default_factory=dict)  # level → parties written (none: no parties)


# ---------------------------------------------------------------- release → plan
def release_catalog(manifest: dict[str, Any]) -> ModelCatalog:
    """The models of a release as its release.json declares them (survival models first)."""
    if not isinstance(manifest.get("models"), dict) or not manifest["models"]:
        raise ScoringError("release manifest has no models")
    try:
        return ModelCatalog.from_json(manifest)
    except (KeyError, TypeError) as exc:
        raise ScoringError(
            f"release manifest: a model entry lacks {exc} (a release of an older format?)"
        ) from None


def release_horizons(manifest: dict[str, Any]) -> int:
    """H of a release whose horizons are 1..H (the only shape the 24-row-per-subscriber layout supports)."""
    horizons = manifest.get("horizons")
    if horizons is None:
        horizons = manifest.get("config", {}).get("dataset", {}).get("horizons")
    if not horizons:
        raise ScoringError("release manifest: no horizons")
    horizons = sorted(int(h) for h in horizons)
    if horizons != list(range(1, len(horizons) + 1)):
        raise ScoringError(f"release horizons must be 1..H without gaps, got {horizons}")
    return len(horizons)


def make_plan(
    settings: Settings,
    manifest: dict[str, Any],
    version: int,
    digest: str,
    month: dt.date,
    detail: bool,
    file_digests: dict[str, str] | None = None,
) -> BatchPlan:
    catalog = release_catalog(manifest)
    readable = {*catalog.input_columns(), *catalog.party_features()}
    model_inputs = [c for e in catalog for c in e.feature_cols if c in readable]
    cols = tuple(dict.fromkeys(model_inputs))
    return BatchPlan(
        release_key=f"{version}:{digest}",
        release_version=int(version),
        release_digest=digest,
        file_digests=dict(file_digests or {}),
        models=catalog.ids,
        amounts=frozenset(e.model_id for e in catalog.amounts),
        input_cols=cols,
        categorical=tuple(c for c in cols if c in catalog.categorical),
        horizons=release_horizons(manifest),
        score_month=month,
        formula=ValueFormula.from_catalog(catalog, settings.costs),
        extrapolation=Extrapolation(
            months=settings.scoring.extrapolation_months,
            trend_floor=settings.scoring.trend_floor,
            trend_cap=settings.scoring.trend_cap,
            method=settings.scoring.extrapolation_method,
        ),
        detail=detail,
        seen={c: frozenset(v) for c, v in seen_categories(manifest).items() if c in cols},
        intervals=IntervalTable.from_json(manifest.get("intervals")),
        ranges=FeatureRanges.from_json(manifest.get("feature_ranges")),
        interval_level=settings.scoring.interval_level,
    )


def model_files(files: dict[str, bytes]) -> dict[str, bytes]:
    """What workers need of a bundle: release.json and the .cbm files (not the drift reference sample)."""
    return {k: v for k, v in files.items() if k == RELEASE_JSON or k.endswith(".cbm")}


# ---------------------------------------------------------------- Spark side
def holdout_flag(salt: str, share: float, key: str = ID) -> Column:
    """Hash-chosen control group: the same subscribers every month for a given salt and share. With parties
    the key is the household (`parties.party_key`), so a household is held out whole."""
    bucket = F.pmod(F.xxhash64(F.col(key), F.lit(salt)), F.lit(1_000_000))
    return bucket < F.lit(round(share * 1_000_000))


def with_scores(
    features: DataFrame,
    *,
    plan: BatchPlan,
    bundle: Any,
    accumulator: Any,
    holdout_salt: str,
    holdout_share: float,
) -> DataFrame:
    """Features of the month (one row per subscriber) → scores of the month; each task's BatchStats go
    to `accumulator`. The holdout flag is Spark's hash, computed on the way in and passed through."""

    def body(batches: Iterator[Any]) -> Iterator[Any]:
        return score_arrow_batches(batches, plan, bundle, accumulator)

    key = SPLIT_KEY if SPLIT_KEY in features.columns else ID
    flagged = features.withColumn(HOLDOUT, holdout_flag(holdout_salt, holdout_share, key))
    return flagged.select(ID, *plan.input_cols, HOLDOUT).mapInArrow(body, output_schema(plan))


def read_month_features(
    spark: SparkSession, settings: Settings, month: dt.date, plan: BatchPlan
) -> DataFrame:
    """The month's features, checked before any job against the contract for the columns the release
    reads: every file of the month present, readable, with those columns and kinds (contract.read_months).
    Null and duplicate ids are counted beside the scoring job (`check_ids`)."""
    numeric = [c for c in table_columns(plan) if c not in plan.categorical]
    spec = features_spec(numeric, plan.categorical)
    context = f"scoring {fmt(month)}, release v{plan.release_version}"
    (features,) = read_months(spark, [(settings.paths.features, spec, [month])], context=context)
    problems = schema_problems(features, spec)
    if problems:
        raise InputContractError(f"input contract violated ({context}):\n  " + "\n  ".join(problems))
    return features.select(ID, *table_columns(plan))


def check_party_inputs(
    catalog: ModelCatalog, version: int, with_parties: bool, model: PartyModel | None
) -> None:
    """A release that reads party features cannot score without the parties table (exit 2, before any
    work); a release trained without parties scored with them falls back to the stated approximation."""
    if catalog.party_features() and not with_parties:
        raise ScoringError(
            f"release v{version} reads the party features {list(catalog.party_features())}: it cannot score "
            "without the parties table (set paths.parties)"
        )
    if with_parties and model is None:
        log.warning(
            "release v%s was trained without parties: party survival uses the stated joint-exit share "
            "(rho = 0.5) and party scores get no intervals; train a release with paths.parties set", version,
        )  # fmt: skip


def table_columns(plan: BatchPlan) -> list[str]:
    """The release's inputs read from the features table (the party features are computed, not read)."""
    return [c for c in plan.input_cols if c not in PARTY_FEATURES]


@dataclass(frozen=True)
class PartyScoring:
    """The month's parties as scoring uses them: the table's rows of the month (None: a month before its
    coverage), the number-change chains and customer starts, and how many old ids were dropped because
    their successor is in the base the same month."""

    parties_month: DataFrame | None
    inputs: PartyInputs | None
    continued: int = 0


def with_party_inputs(
    features: DataFrame,
    month: dt.date,
    party: PartyScoring,
    catalog: ModelCatalog,
) -> tuple[DataFrame, PartyScoring]:
    """The month's features as the release scores them with parties: an old id whose successor is in the
    base the same month is dropped (the customer is scored once, as its newest id; counted), a continuing
    id carries its customer's tenure, every row gets its split key (the holdout hashes the household) and
    the party features the release reads."""
    inputs = party.inputs
    chains = inputs.chains if inputs is not None else None
    keyed = features.transform(with_customer, chains=chains)
    continued = 0
    if chains is not None:
        old = continued_in_month(features.select(ID), chains).localCheckpoint()
        continued = old.count()
        if continued:
            keyed = keyed.join(F.broadcast(old), ID, "left_anti")
            log.info(
                "%s ids continued by a newer id in %s are scored once, as the newer id", continued, fmt(month)
            )
        keyed = carry_tenure(
            keyed.withColumn(MONTH, F.lit(month)), inputs.starts, catalog.tenure_column, MONTH
        ).drop(MONTH)
    if party.parties_month is not None:
        keyed = keyed.join(party.parties_month.select(ID, PERSON, HOUSEHOLD), ID, "left")
    else:
        keyed = keyed.withColumn(PERSON, F.lit(None).cast("string")).withColumn(
            HOUSEHOLD, F.lit(None).cast("string")
        )
    keyed = keyed.withColumn(SPLIT_KEY, party_key())
    wanted = catalog.party_features()
    if wanted:
        if party.parties_month is None:
            raise ScoringError(
                f"release reads the party features {list(wanted)}, but the parties table has no rows for "
                f"{fmt(month)} (a month before its first): it cannot be scored for this month"
            )
        figures = party_feature_rows(
            party.parties_month.withColumn(MONTH, F.lit(month)), features.withColumn(MONTH, F.lit(month)),
            chains=chains, starts=inputs.starts if inputs else None, tenure_column=catalog.tenure_column,
            home_internet=catalog.home_internet,
        ).select(ID, *wanted)  # fmt: skip
        keyed = keyed.join(figures, ID, "left")
    return keyed, replace(party, continued=continued)


def counts_in_words(counts: dict[str, int]) -> str:
    """{'price': 1200, 'tenure_months': 3} → 'price 1,200, tenure_months 3' (largest first), or 'none'."""
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{k} {v:,}" for k, v in ordered) or "none"


def steps_in_words(seconds: Mapping[str, float]) -> str:
    """{'catboost predict': 12.0, 'pool': 3.0} → 'catboost predict 12.0 s (80 %), pool 3.0 s (20 %)'."""
    total = sum(seconds.values()) or 1.0
    ranked = sorted(seconds.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{step} {s:.1f} s ({s / total:.0%})" for step, s in ranked) or "none"


def parties_in_words(party_rows: dict[str, int]) -> str:
    """{'person': 1200, 'household': 800} → '; party scores: 1,200 persons, 800 households' ('' without)."""
    if not party_rows:
        return ""
    return "; party scores: " + ", ".join(f"{n:,} {level}s" for level, n in party_rows.items())


def summary_line(summary: ScoreSummary, timing: str) -> str:
    """The job's closing line, in words. It ends with StageTimer.summary() — `; 12.3s total (…)`, which
    benchmarks parse (SUMMARY_TOTAL)."""
    q = summary.cltv_quantiles
    spread = " · ".join(f"{k} {v:,.1f}" for k, v in q.items() if k in ("p05", "p25", "p50", "p75", "p95"))
    return (
        f"scored {fmt(summary.month)}: {summary.rows:,} subscribers ({summary.holdout_rows:,} holdout) with "
        f"release v{summary.release_version} (SHA-256 {summary.release_digest[:16]}, models "
        f"{', '.join(summary.models)}); CLTV mean {summary.cltv_mean:,.1f}"
        + (f", quantiles {spread}" if spread else "")
        + f"; inputs: missing {counts_in_words(summary.missing_values)}; non-finite "
        f"{counts_in_words(summary.non_finite_values)}; unseen categories "
        f"{counts_in_words(summary.unseen_categorical)}"
        + parties_in_words(summary.party_rows)
        + f"; {timing}"
    )


SUMMARY_TOTAL = re.compile(r"; (?P<seconds>[0-9]+(?:\.[0-9]+)?)s total \(")  # the phrase benchmarks read


def report_inputs(stats: BatchStats, month: dt.date) -> None:
    """Inputs scored as they came, but counted: the job's log says what was missing or odd."""
    if stats.missing:
        log.warning(
            "features %s: missing values (scored as such): %s", fmt(month), counts_in_words(stats.missing)
        )
    if stats.non_finite:
        log.warning(
            "features %s: NaN, infinite or beyond-float32 numbers (scored as missing): %s",
            fmt(month), counts_in_words(stats.non_finite),
        )  # fmt: skip
    if stats.unseen:
        log.warning(
            "features %s: categories unseen in training: %s", fmt(month), counts_in_words(stats.unseen)
        )


def check_ids(features: DataFrame, month: dt.date) -> None:
    """Null and duplicate ids of the month, in one narrow scan and one groupBy of the id column (the job runs
    it beside the scoring pass and awaits it before any swap): a contract error naming counts and an
    example. Nothing about each subscriber reaches the driver (an id hash per subscriber did: 80 MB at
    10M), so its memory does not grow with the base. (contract.data_problems asks the same of a table
    with its month column, in two jobs; the scored month has only the id.)"""
    keys = features.groupBy(ID).count()
    repeated = F.col(ID).isNotNull() & (F.col("count") > 1)
    found = keys.agg(
        F.sum(F.when(F.col(ID).isNull(), F.col("count"))).alias("null_ids"),
        F.sum(F.when(repeated, F.col("count") - 1)).alias("extra_rows"),
        F.count(F.when(repeated, F.lit(1))).alias("ids"),
        F.min(F.when(repeated, F.col(ID))).alias("example"),
    ).first()
    problems = []
    if found["null_ids"]:
        problems.append(f"features: column {ID!r} has {found['null_ids']} null values")
    if found["ids"]:
        problems.append(
            f"features: {found['ids']} duplicate ({ID}, report_month) keys in {fmt(month)} "
            f"({found['extra_rows']} extra rows), e.g. {found['example']!r}"
        )
    if problems:
        raise InputContractError(
            f"input contract violated (scoring {fmt(month)}):\n  " + "\n  ".join(problems)
        )


def seen_categories(manifest: dict[str, Any]) -> dict[str, list[str]]:
    """Categorical values the release was trained on, when its manifest records them."""
    for key in ("categories", "categorical_values", "seen_categories"):
        found = manifest.get(key)
        if isinstance(found, dict):
            return {str(c): [str(v) for v in values] for c, values in found.items()}
    return {}


# Tasks are CPU-bound and equal in cost per row: with few of them the last wave leaves cores idle (1M
# subscribers in 5 tasks on 2 cores: 56.5 s; in 10 tasks: 48.9 s — benchmarks/bench_score.py).
TASKS_PER_CORE = 4


def scoring_parallelism(spark: SparkSession, features: DataFrame) -> DataFrame:
    """At least TASKS_PER_CORE tasks per core, so the CPU-bound batches keep every core busy to the end. The
    job asks Spark to split the month's files that finely (`spark.sql.files.minPartitionNum`); only a month
    whose files cannot be split is shuffled."""
    want = TASKS_PER_CORE * spark.sparkContext.defaultParallelism
    if features.rdd.getNumPartitions() < want:
        return features.repartition(want, ID)
    return features


def scoring_job_conf(spark: SparkSession, scoring: ScoringConfig) -> dict[str, str | int]:
    """The session settings of the scoring pass: its Arrow batch size, and the month read in at least
    TASKS_PER_CORE tasks per core (see scoring_parallelism)."""
    return {
        ARROW_BATCH_CONF: scoring.arrow_batch_rows,
        "spark.sql.files.minPartitionNum": TASKS_PER_CORE * spark.sparkContext.defaultParallelism,
    }


def month_summary(stats: BatchStats, plan: BatchPlan, continued: int = 0) -> dict[str, Any]:
    """What the review page (and validate-output) reads about the scoring of the month without scanning it
    again. `continued`: old ids not scored because their successor is in the base that month (parties)."""
    rows = max(stats.rows, 1)
    return {
        "rows": stats.rows,
        "continued_ids": continued,
        "holdout_rows": stats.holdout,
        "cltv_sum": stats.cltv_sum,
        "release_version": plan.release_version,
        "release_digest": plan.release_digest,
        "models": list(plan.models),
        "outside_range_by_horizon": {
            str(h + 1): int(n) / rows for h, n in enumerate(stats.outside_by_horizon)
        },
        "outside_range_by_feature": {c: n / rows for c, n in stats.outside_by_feature.most_common()},
    }


def report_ranges(summary: ScoreSummary) -> None:
    """Subscribers beyond what the release learned, said in the log (and the summary, MLflow, the page)."""
    by_h = summary.outside_range_by_horizon
    if not by_h:
        return
    shown = ", ".join(f"h{h} {v:.1%}" for h, v in by_h.items() if h in (1, 6, 12, 24) or h == max(by_h))
    worst = ", ".join(f"{c} {v:.1%}" for c, v in list(summary.outside_range_by_feature.items())[:3])
    level = logging.WARNING if max(by_h.values()) > 0.05 else logging.INFO
    log.log(
        level,
        "subscribers with a feature outside the release's training range (0.5..99.5 %% per horizon): %s%s",
        shown, f"; most often {worst}" if worst else "",
    )  # fmt: skip


def check_enabled_models(release_models: tuple[str, ...], settings: Settings) -> None:
    """A release scores with the models it was trained with; when they differ from `models.enabled` the
    log says so with both lists (or, with `scoring.models_mismatch: error`, the job refuses)."""
    enabled = tuple(settings.models.enabled)
    if set(release_models) == set(enabled):
        return
    only_release = [m for m in release_models if m not in enabled]
    only_config = [m for m in enabled if m not in release_models]
    text = (
        f"the release's models {list(release_models)} differ from models.enabled {list(enabled)}"
        + (f"; in the release only: {only_release}" if only_release else "")
        + (f"; enabled but not in the release: {only_config} (zero in CLTV)" if only_config else "")
        + "; CLTV uses the release's models"
    )
    if settings.scoring.models_mismatch == "error":
        raise ScoringError(text + " (scoring.models_mismatch: error)")
    log.warning("%s (scoring.models_mismatch: warn)", text)


def write_party_scores(
    spark: SparkSession,
    scores_path: str,
    parties_month: DataFrame | None,
    plan: BatchPlan,
    staging: dict[str, str],
    model: PartyModel | None = None,
) -> dict[str, int]:
    """Read back the month's written subscriber scores at `scores_path` (not scored again), attach the
    parties once (None: a month before the table's first, every subscriber its own person), roll up every
    level (one shuffle each, spark_app.parties), add the party intervals and write each level to its
    `staging` directory; level → parties written. `model`: what the release fitted about parties (the
    joint-exit shares per level and the party intervals); without it the stated approximation ρ (with its
    warning) and no party intervals."""
    written = spark.read.parquet(scores_path)
    values, survival = rollup_columns(written.columns, plan.formula.components, plan.formula.survival)
    keep = [c for c in (ID, SCORE_MONTH, *CARRIED) if c in written.columns]
    # read and joined once per level: cheaper than caching the join (benchmarks/bench_party_rollup.py)
    attached = attach_parties(written.select(*keep, *values, *survival), parties_month)
    shares = {level: joint_exit_shares(survival, model.rho.get(level) if model else None) for level in LEVELS}
    constants = {SCORE_MONTH: plan.score_month, RELEASE_VERSION: plan.release_version,
                 RELEASE_DIGEST: plan.release_digest}  # fmt: skip
    rows = {}
    for level, frame in party_levels(attached, values, survival, shares, constants).items():
        counted = Observation()  # the rows counted as they are written, not read back
        frame = with_party_intervals(frame, model, level, plan.interval_level, plan.horizons)
        frame = frame.observe(counted, F.count(F.lit(1)).alias("rows"))
        frame.write.mode("overwrite").parquet(staging[level])
        rows[level] = int(counted.get["rows"])
    return rows


@tracking.guarded
def log_score_run(settings: Settings, summary: ScoreSummary) -> None:
    """Record the run in the MLflow experiment (params, counts, CLTV quantiles, stage times)."""
    cfg = settings.mlflow
    mlflow = tracking.client(cfg)
    experiment = tracking.experiment_id(mlflow, cfg.experiment, cfg.artifact_location)
    run = mlflow.create_run(
        experiment,
        run_name=f"score {fmt(summary.month)}",
        tags={"cltv.job": "score", "cltv.score_month": fmt(summary.month)},
    )
    params = {
        "score_month": fmt(summary.month),
        "release_version": summary.release_version,
        "detail": summary.detail,
        "path": summary.path,
        "release_digest": summary.release_digest,
        "models": ",".join(summary.models),
    }
    metrics = {"rows": summary.rows, "holdout_rows": summary.holdout_rows, "cltv_mean": summary.cltv_mean}
    metrics.update({f"cltv_{k}": v for k, v in summary.cltv_quantiles.items()})
    metrics.update({f"missing_{k}": v for k, v in summary.missing_values.items()})
    metrics.update({f"non_finite_{k}": v for k, v in summary.non_finite_values.items()})
    metrics.update({f"unseen_{k}": v for k, v in summary.unseen_categorical.items()})
    metrics.update({f"seconds_{k.replace(' ', '_')}": v for k, v in summary.seconds.items()})
    metrics.update({f"outside_range_h{h}": v for h, v in summary.outside_range_by_horizon.items()})
    metrics.update({f"outside_range_{c}": v for c, v in summary.outside_range_by_feature.items()})
    metrics.update({f"party_rows_{level}": n for level, n in summary.party_rows.items()})
    tracking.log_values(mlflow, run.info.run_id, params=params, metrics=metrics)
    mlflow.set_terminated(run.info.run_id)


def score_month(
    spark: SparkSession,
    settings: Settings,
    month: dt.date,
    release: str = "champion",
    detail: bool = False,
) -> ScoreSummary:
    """Score every subscriber in the features of `month` with a registered release; write and summarize.

    With `paths.parties` set, the month's parties are read and validated with the other inputs (an old id
    whose successor is in the base that month is scored as the successor, a continuing id carries its
    customer's tenure, the holdout hashes the household), and the written scores are rolled up to persons
    and households with the release's party model (joint exits, party intervals), staged beside the scores
    and swapped in with them (a failure anywhere leaves every previous partition as it was)."""
    timer = StageTimer()
    storage = Storage(spark)
    target = scores_dir(settings.paths, month)
    with_parties = settings.paths.parties is not None
    party_root, parties_month = "", None
    party_rows: dict[str, int] = {}
    # one run writes a month: taken first, so a second run fails fast and what a killed run of the month
    # left is recovered before anything else
    with storage.lock(target) as lease:
        with timer.stage("load release"):
            loaded = load_release(settings, str(release))  # every file verified against the registry
            files = model_files(dict(loaded.files))
            Learner.from_bundle_bytes(files)  # an unreadable model fails here, before any task
            plan = make_plan(
                settings, loaded.manifest, loaded.version, loaded.digest, month, detail,
                {name: loaded.digests[name] for name in files},
            )  # fmt: skip
            plan = replace(plan, threads=int(spark.conf.get("spark.task.cpus", "1")))
            party_model = PartyModel.from_json(loaded.manifest.get("parties"))
            check_enabled_models(plan.models, settings)
            seen = loaded.manifest.get("calendar_months_seen")
            if seen:
                ahead = target_calendar_months(plan.score_month_index, plan.horizons)
                ahead = sorted({int(m) for m in ahead})
                unseen = [m for m in ahead if m not in seen]
                if unseen:
                    log.warning(
                        "target calendar months %s never occur in release v%s's training window (it saw %s): "
                        "their forecasts are made with the calendar feature unknown, not extrapolated",
                        ", ".join(map(str, unseen)), plan.release_version, ", ".join(map(str, seen)),
                    )  # fmt: skip
            if plan.intervals is None:
                log.warning(
                    "release v%s has no interval table (trained before intervals): cltv_lower/upper and "
                    "the value bounds are NaN; train a new release to get them", plan.release_version,
                )  # fmt: skip
            log.info(
                "scoring %s with release v%s (%s), models %s, %d horizons → %d months%s",
                fmt(month), plan.release_version, release, ",".join(plan.models), plan.horizons,
                plan.total_months, ", with detail" if detail else "",
            )  # fmt: skip
        catalog = release_catalog(loaded.manifest)
        check_party_inputs(catalog, plan.release_version, with_parties, party_model)
        with timer.stage("check inputs", spark):
            features = read_month_features(spark, settings, month, plan)
            as_read = features  # the ids are checked as the table has them (before parties)
            party = PartyScoring(None, None)
            if with_parties:
                party_root = party_scores_root(settings.paths)
                inputs = read_party_inputs(spark, settings.paths, [month], month, catalog.tenure_column)
                parties_month = parties_of_month(inputs.parties, month) if inputs is not None else None
                party = PartyScoring(parties_month, inputs)
                features, party = with_party_inputs(features, month, party, catalog)
        bundle = spark.sparkContext.broadcast(files)
        accumulator = spark.sparkContext.accumulator({}, StatsAccumulator())
        try:
            job_conf = scoring_job_conf(spark, settings.scoring)
            # every output of the month is staged, then swapped in on leaving the block (the scores
            # first, then each party level); a failure anywhere drops every staging directory
            with contextlib.ExitStack() as outputs:
                party_staging = {
                    level: outputs.enter_context(storage.staged(party_partition(party_root, level, month)))
                    for level in (LEVELS if with_parties else ())
                }
                staging = outputs.enter_context(storage.staged(target, lease))
                with (
                    timer.stage("score and write", spark),
                    session_conf(spark, **job_conf),
                    ThreadPoolExecutor(1, thread_name_prefix="check-ids") as beside,
                ):
                    # beside the scoring job: its small shuffle (and a fresh JVM's first-shuffle warm-up,
                    # ~3 s) overlaps the Python workers instead of adding to them; known before any swap
                    ids_checked = beside.submit(check_ids, as_read, month)
                    scores = scoring_parallelism(spark, features).transform(
                        with_scores,
                        plan=plan,
                        bundle=bundle,
                        accumulator=accumulator,
                        holdout_salt=settings.scoring.holdout_salt,
                        holdout_share=settings.scoring.holdout_share,
                    )
                    scores.write.mode("overwrite").parquet(staging)
                    ids_checked.result()  # a null or duplicate id: InputContractError, nothing swapped
                    stats = merged(accumulator.value)
                    log.info("scoring %s, worker time by step: %s", fmt(month), steps_in_words(stats.seconds))
                    storage.write_json(
                        f"{staging}/{SCORE_SUMMARY}", month_summary(stats, plan, party.continued)
                    )
                if with_parties:
                    with timer.stage("party rollup and write", spark):
                        party_rows = write_party_scores(
                            spark, staging, parties_month, plan, party_staging, party_model
                        )
                swaps = outputs.pop_all()  # all written: the swap is timed, a failure before it undoes all
            with timer.stage("swap in"):
                swaps.close()
        finally:
            bundle.unpersist()
    report_inputs(stats, month)
    summary = ScoreSummary(
        month=month,
        release_version=plan.release_version,
        path=storage.qualify(target),
        rows=stats.rows,
        holdout_rows=stats.holdout,
        cltv_mean=stats.cltv_sum / stats.rows if stats.rows else float("nan"),
        cltv_quantiles=stats.quantiles(QUANTILES),
        missing_values=dict(stats.missing),
        non_finite_values=dict(stats.non_finite),
        unseen_categorical=dict(stats.unseen),
        seconds=dict(timer.seconds),
        detail=detail,
        release_digest=plan.release_digest,
        models=plan.models,
        outside_range_by_horizon={
            h + 1: int(n) / stats.rows for h, n in enumerate(stats.outside_by_horizon) if stats.rows
        },
        outside_range_by_feature={
            c: n / stats.rows for c, n in stats.outside_by_feature.most_common() if stats.rows
        },
        party_rows=party_rows,
    )
    report_ranges(summary)
    with timer.stage("log to mlflow"):
        log_score_run(settings, summary)
    log.info("%s", summary_line(summary, timer.summary()))
    push_job_metrics(
        settings.monitoring, "score", month, summary.release_version, timer.seconds,
        score_figures(summary.rows, summary.holdout_rows, summary.cltv_mean, summary.cltv_quantiles), "ok",
    )  # fmt: skip
    return summary


__all__ = ["InputContractError", "ScoreSummary", "score_month"]
