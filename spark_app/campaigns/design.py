"""`cltv campaign design`: whom to contact this month, through which channel, and who is held back.

For month M (scored, with `--detail` for value at risk): the scored base joined with the month's features;
eligible = not in the global holdout, consent, not frozen nor reserved by the contact history (the
campaign×month's own rows ignored); per channel in priority order, its audience (rules, minus those an
earlier channel selected) ranked by the ranking key, the top share and/or up to `capacity` treated
selected; group by the subscriber's own salted hash against the channel's control share (with
`paths.parties`: its household's hash, one line per person, the contact history per person —
spark_app.campaigns.households); strata = value-at-risk decile × `strata_column`; daily batches spread
evenly over value bins. Then the proof, on history:
the same rules and selection at H = M − N, whose outcomes at M are known, give the baseline Retention_N,
the variance of the N-month value and so the MDE for this design's group sizes, and an A/A simulation —
re-splits of H's audience with `aa_splits` salts through the very splitter and stratified estimator the
evaluation uses; balance of CLTV, survival, tenure and the ranking key is judged against each covariate's
own re-split distribution. A design is refused (exit 1; publish refuses it too) only when an A/A rate is
significantly above alpha or a balance lies in its re-split tail. Everything over the base runs as Spark
aggregates; the driver gets per-channel counts and a bounded hash-chosen sample for the A/A.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from spark_app import tracking
from spark_app.campaigns import split, stats
from spark_app.campaigns.contacts import (
    CHANNEL,
    CONTROL,
    GROUP,
    TREATMENT,
    Launch,
    published_groups,
    read_contacts,
    unavailable,
)
from spark_app.campaigns.households import (
    PERSON_KEY,
    CampaignParties,
    blocked_per_person,
    distinct_persons,
    first_line_per_person,
    one_stratum_per_household,
    read_campaign_parties,
    with_party_keys,
)
from spark_app.campaigns.rules import (
    CampaignConfigError,
    audience_column,
    check_columns,
    has_detail,
    value_at_risk,
)
from spark_app.catalog import ModelCatalog
from spark_app.cltv import ValueFormula
from spark_app.config import VALUE_AT_RISK, CampaignConfig, Settings
from spark_app.contract import ID, MONTH, month_dirs, read_table
from spark_app.errors import InputsNotReady
from spark_app.layout import DESIGN_JSON, design_dir, read_scores
from spark_app.months import add_months, fmt, month_range
from spark_app.parties import SPLIT_KEY
from spark_app.progress import StageTimer
from spark_app.session import session_conf
from spark_app.storage import Storage

log = logging.getLogger(__name__)

STRATUM = "stratum"
RANK = "rank"
BATCH = "batch"
DECILE = "decile"
ID_HASH = "_id_hash"
UNIT = "_unit"
MIN_STRATUM = 20  # subscribers per group a stratum needs of its own; smaller cells pool into their decile
REFUSE_AA_P = 0.001  # an A/A rate above alpha with a one-sided binomial p-value below this refuses
LIST_COLUMNS = (ID, CHANNEL, GROUP, STRATUM, VALUE_AT_RISK, RANK, BATCH)
ARROW = {"spark.sql.execution.arrow.pyspark.enabled": "true"}


@dataclass
class DesignResult:
    """What `campaign design` decided; `refused` makes the command exit 1."""

    campaign: str
    month: dt.date
    path: str
    refused: bool
    reasons: list[str]
    record: dict[str, Any] = field(repr=False)


# ---------------------------------------------------------------- the month's frame
def campaign_config(settings: Settings, name: str) -> CampaignConfig:
    if name not in settings.campaigns:
        raise CampaignConfigError(
            f"--campaign {name[:60]!r} is not configured (campaigns: {sorted(settings.campaigns) or 'none'})"
        )
    return settings.campaigns[name]


def survival_column(catalog: ModelCatalog, cfg: CampaignConfig) -> str:
    """The score column of survival the balance checks: P(in the retention base) at 12 months."""
    return f"p_{cfg.retention_model}_12m"


def month_frame(
    spark: SparkSession,
    settings: Settings,
    name: str,
    cfg: CampaignConfig,
    month: dt.date,
    parties: CampaignParties | None = None,
) -> tuple[DataFrame, bool]:
    """The month's scored subscribers with the score and feature columns the campaign reads, the id hash
    and the splitter's unit; and whether value at risk could be computed (the scores' detail arrays).
    With `parties` the hash is of the household key (`households.with_party_keys`), and each row carries
    its person."""
    scores = read_scores(spark, settings.paths, month)
    if scores is None:
        raise InputsNotReady(
            f"campaign {name}: scores of {fmt(month)} are not there (run `cltv score --month {fmt(month)} "
            "--detail`)"
        )
    catalog = settings.models.catalog()
    formula = ValueFormula.from_catalog(catalog, settings.costs)
    features = read_table(spark, settings.paths.features, "features", [month])
    wanted = {r.column for c in cfg.channels for r in c.audience} | {c.ranking_key for c in cfg.channels}
    wanted |= {cfg.strata_column, cfg.consent_column, catalog.tenure_column} - {None}
    from_features = sorted(c for c in wanted if c not in scores.columns and c in features.columns)
    frame = scores.join(features.select(ID, *from_features), ID, "left")
    detail = VALUE_AT_RISK in scores.columns or has_detail(scores.columns, formula)
    if VALUE_AT_RISK not in scores.columns and detail:  # scores from before the column: from the arrays
        frame = frame.withColumn(VALUE_AT_RISK, value_at_risk(formula, set(scores.columns)))
    numeric = {
        f.name
        for f in frame.schema.fields
        if f.dataType.typeName() in ("double", "float", "integer", "long", "short", "byte")
    }
    available = set(frame.columns) | {VALUE_AT_RISK}
    if not detail:
        uses = [c.name for c in cfg.channels if c.ranking_key == VALUE_AT_RISK] + [
            c.name for c in cfg.channels for r in c.audience if r.column == VALUE_AT_RISK
        ]
        if uses:
            raise CampaignConfigError(
                f"campaigns.{name}: channels {sorted(set(uses))} rank or filter by value_at_risk, which "
                f"the scores of {fmt(month)} lack (scored by an older version without --detail): score "
                f"{fmt(month)} again"
            )
        available.discard(VALUE_AT_RISK)
    else:
        numeric.add(VALUE_AT_RISK)
    check_columns(name, cfg, available, numeric)
    keep = [
        ID,
        "holdout",
        *sorted(
            (wanted | {VALUE_AT_RISK, "cltv", "cltv_24m", survival_column(catalog, cfg)}) & set(frame.columns)
        ),
    ]
    frame = frame.select(*dict.fromkeys(keep))
    if VALUE_AT_RISK not in frame.columns:
        frame = frame.withColumn(VALUE_AT_RISK, F.lit(None).cast("double"))
    salt = split.salt64(f"campaign:{name}")
    key = ID
    if parties is not None:
        frame, key = with_party_keys(frame, parties), SPLIT_KEY
    return frame.withColumn(ID_HASH, F.xxhash64(F.col(key))).withColumn(UNIT, unit_column(salt)), detail


def unit_column(salt: int) -> Column:
    """The splitter of spark_app.campaigns.split on Spark's xxhash64 of the id, as a pandas UDF: the very
    function the A/A simulation runs on the driver."""

    @F.pandas_udf("double")
    def unit(hashes: pd.Series) -> pd.Series:
        return pd.Series(split.unit(hashes.to_numpy(np.int64), salt))

    return unit(F.col(ID_HASH))


def consent_ok(cfg: CampaignConfig, columns: list[str]) -> Column:
    if cfg.consent_column is None or (cfg.consent_waived and cfg.consent_column not in columns):
        return F.lit(True)
    return F.coalesce(F.col(cfg.consent_column).cast("double") == F.lit(1.0), F.lit(False))


# ---------------------------------------------------------------- selection
@dataclass
class ChannelCounts:
    audience: int = 0  # matched the rules and was not taken by an earlier channel
    holdout: int = 0
    consent: int = 0
    frozen: int = 0
    reserved: int = 0
    eligible: int = 0
    beyond: int = 0  # eligible but beyond the top share or the capacity
    treated: int = 0
    control: int = 0
    same_person: int | None = None  # with parties: eligible, but another line of the person was ranked higher

    def recorded(self) -> dict[str, int]:
        """The counts as _design.json records them (same_person only with parties)."""
        return {k: v for k, v in vars(self).items() if v is not None}


def select_channels(
    frame: DataFrame, cfg: CampaignConfig, blocked: DataFrame | None
) -> tuple[DataFrame, dict[str, ChannelCounts]]:
    """Channels in priority order: each takes its audience minus what earlier channels selected, ranks it
    and keeps the top share and/or the capacity of treated. Returns the selected rows (one per subscriber)
    with channel, group, rank and the rank within the group, and per-channel counts. With persons (the
    frame carries PERSON_KEY: paths.parties) a channel lists one line per person, the highest ranked, and
    an earlier channel's list takes every line of its persons."""
    person = PERSON_KEY in frame.columns
    key = PERSON_KEY if person else ID
    flagged = frame
    if blocked is not None:
        flagged = flagged.join(blocked, ID, "left")
    else:
        flagged = flagged.withColumn("frozen", F.lit(False)).withColumn("reserved", F.lit(False))
    consent = consent_ok(cfg, frame.columns)
    flagged = flagged.select(
        "*",
        F.coalesce(F.col("holdout"), F.lit(False)).alias("_holdout"),
        (~consent).alias("_no_consent"),
        F.coalesce(F.col("frozen"), F.lit(False)).alias("_frozen"),
        F.coalesce(F.col("reserved"), F.lit(False)).alias("_reserved"),
    ).cache()
    excluded = {
        "holdout": F.col("_holdout"),
        "consent": ~F.col("_holdout") & F.col("_no_consent"),
        "frozen": ~F.col("_holdout") & ~F.col("_no_consent") & F.col("_frozen"),
        "reserved": ~F.col("_holdout") & ~F.col("_no_consent") & ~F.col("_frozen") & F.col("_reserved"),
    }
    eligible = ~(F.col("_holdout") | F.col("_no_consent") | F.col("_frozen") | F.col("_reserved"))
    chosen: list[DataFrame] = []
    taken: DataFrame | None = None
    counts: dict[str, ChannelCounts] = {}
    for index, channel in enumerate(cfg.channels):
        pool = flagged.where(audience_column(channel.audience))
        if taken is not None:
            pool = pool.join(taken.select(key), key, "left_anti")
        pool = pool.where(eligible)
        if person:
            pool = first_line_per_person(pool, channel.ranking_key, UNIT)
        # one ordered pass per channel (Spark moves the channel's eligible audience into one task for it):
        # the rank, the eligible count for the top share, the treated count up to each rank for a capacity
        order = Window.orderBy(F.col(channel.ranking_key).desc_nulls_last(), F.col(UNIT).asc())
        running = order.rowsBetween(Window.unboundedPreceding, Window.currentRow)
        everyone = Window.partitionBy()
        is_control = F.col(UNIT) < F.lit(channel.control_share)
        ranked = (
            pool.withColumn(GROUP, F.when(is_control, F.lit(CONTROL)).otherwise(F.lit(TREATMENT)))
            .withColumn(RANK, F.row_number().over(order))
            .withColumn("_treated_upto", F.sum((~is_control).cast("long")).over(running))
            .withColumn("_eligible", F.count(F.lit(1)).over(everyone))
        )
        keep = F.lit(True)
        if channel.top_share is not None:
            keep = F.col(RANK) <= F.floor(F.lit(channel.top_share) * F.col("_eligible"))
        if channel.capacity is not None:
            before = F.col("_treated_upto") - (F.col(GROUP) == F.lit(TREATMENT)).cast("long")
            keep = keep & (before < F.lit(channel.capacity))
        selected = (
            ranked.where(keep)
            .withColumn(CHANNEL, F.lit(channel.name))
            .withColumn("_channel_index", F.lit(index))
            .withColumn(
                "_group_rank",
                F.when(F.col(GROUP) == F.lit(TREATMENT), F.col("_treated_upto")).otherwise(
                    F.col(RANK) - F.col("_treated_upto")
                ),
            )
            .drop("_treated_upto", "_eligible")
            .cache()
        )
        groups = {
            r[GROUP]: int(r["n"]) for r in selected.groupBy(GROUP).agg(F.count(F.lit(1)).alias("n")).collect()
        }
        counts[channel.name] = ChannelCounts(treated=groups.get(TREATMENT, 0), control=groups.get(CONTROL, 0))
        chosen.append(selected)
        ids = selected.select(key, "_channel_index")
        taken = ids if taken is None else taken.unionByName(ids)
    # who each channel's rules reached (minus earlier channels' lists) and why they were excluded: one pass
    tagged = (
        flagged.join(taken, key, "left")
        if taken is not None
        else flagged.withColumn("_channel_index", F.lit(None))
    )
    sums = []
    for index, channel in enumerate(cfg.channels):
        reached = audience_column(channel.audience) & (
            F.col("_channel_index").isNull() | (F.col("_channel_index") >= F.lit(index))
        )
        sums.append(F.sum(reached.cast("long")).alias(f"{index}:audience"))
        sums += [F.sum((reached & c).cast("long")).alias(f"{index}:{k}") for k, c in excluded.items()]
        sums.append(F.sum((reached & eligible).cast("long")).alias(f"{index}:eligible"))
        if person:
            sums.append(distinct_persons(reached & eligible).alias(f"{index}:persons"))
    row = tagged.agg(*sums).first()
    for index, channel in enumerate(cfg.channels):
        c = counts[channel.name]
        for count in ("audience", *excluded, "eligible"):
            setattr(c, count, int(row[f"{index}:{count}"] or 0))
        if person:
            c.same_person = c.eligible - int(row[f"{index}:persons"] or 0)
        c.beyond = c.eligible - (c.same_person or 0) - c.treated - c.control
        if channel.capacity is not None and channel.capacity > c.treated:
            log.warning(
                "channel %s: capacity %s is larger than its audience allows: %s eligible, %s treated",
                channel.name,
                f"{channel.capacity:,}",
                f"{c.eligible:,}",
                f"{c.treated:,}",
            )
    out = chosen[0]
    for part in chosen[1:]:
        out = out.unionByName(part)
    return out.drop("_channel_index"), counts


def with_strata_and_batches(
    selected: DataFrame, cfg: CampaignConfig, counts: dict[str, ChannelCounts]
) -> DataFrame:
    """Stratum = value-at-risk decile within the channel's list × the strata column; batch = day of
    contact, each value bin of the group spread evenly over the days (in turn, in hash order within a bin)."""
    sizes = F.create_map(
        *[x for name, c in counts.items() for x in (F.lit(name), F.lit(max(c.treated + c.control, 1)))]
    )
    group_sizes = F.create_map(
        *[
            x
            for name, c in counts.items()
            for x in (
                F.lit(f"{name}|{TREATMENT}"),
                F.lit(max(c.treated, 1)),
                F.lit(f"{name}|{CONTROL}"),
                F.lit(max(c.control, 1)),
            )
        ]
    )
    decile = (F.floor(F.lit(10) * (F.col(RANK) - 1) / sizes[F.col(CHANNEL)]) + 1).cast("int")
    label = (
        F.lit("all")
        if cfg.strata_column is None
        else F.coalesce(F.col(cfg.strata_column).cast("string"), F.lit("<null>"))
    )
    n_group = group_sizes[F.concat_ws("|", F.col(CHANNEL), F.col(GROUP))]
    value_bin = F.floor(F.lit(cfg.value_bins) * (F.col("_group_rank") - 1) / n_group).cast("int")
    # the days in turn over the group ordered by value bin, then hash within a bin: every day gets the
    # same share (±1) of every bin, and the turn does not restart at day 1 in each bin
    in_bin = Window.partitionBy(CHANNEL, GROUP).orderBy("_bin", UNIT)
    labelled = selected.withColumn(DECILE, decile).withColumn("_label", label)
    # a decile × label cell with fewer than MIN_STRATUM subscribers in a group would make the stratified
    # variance a guess (the A/A would find the test too keen): such cells pool into their decile's "*"
    cells = labelled.groupBy(CHANNEL, DECILE, "_label").agg(
        F.sum((F.col(GROUP) == F.lit(TREATMENT)).cast("long")).alias("_t"),
        F.sum((F.col(GROUP) == F.lit(CONTROL)).cast("long")).alias("_c"),
    )
    small = cells.where((F.col("_t") < MIN_STRATUM) | (F.col("_c") < MIN_STRATUM)).select(
        CHANNEL, DECILE, "_label", F.lit(True).alias("_pooled")
    )
    return (
        labelled.join(F.broadcast(small), [CHANNEL, DECILE, "_label"], "left")
        .withColumn(
            STRATUM,
            F.format_string(
                "%02d|%s", F.col(DECILE), F.when(F.col("_pooled"), F.lit("*")).otherwise(F.col("_label"))
            ),
        )
        .withColumn("_bin", value_bin)
        .withColumn(BATCH, ((F.row_number().over(in_bin) - 1) % F.lit(cfg.batch_days) + 1).cast("int"))
        .drop("_bin", "_label", "_pooled")
        .transform(lambda df: one_stratum_per_household(df, STRATUM, RANK) if SPLIT_KEY in df.columns else df)
    )


# ---------------------------------------------------------------- history: outcomes at H + N
def outcomes(
    spark: SparkSession,
    settings: Settings,
    cfg: CampaignConfig,
    window: list[dt.date],
    pre_window: list[dt.date] | None = None,
) -> DataFrame:
    """Per subscriber, in one pass over the facts: `retained` (in the retention base in the window's last
    month), `value` (the value formula summed over the window: a month without facts = 0) and, with a
    `pre_window`, `pre_value` the same over it (CUPED's covariate)."""
    catalog = settings.models.catalog()
    formula = ValueFormula.from_catalog(catalog, settings.costs)
    months = sorted({*window, *(pre_window or [])})
    facts = read_table(spark, settings.paths.facts, "facts", months)
    value = F.lit(0.0) + formula.monthly_value(
        lambda m: F.coalesce(F.col(catalog[m].fact).cast("double"), F.lit(0.0)), set(catalog.ids)
    )
    flag = F.coalesce(F.col(catalog[cfg.retention_model].fact).cast("double"), F.lit(0.0))
    in_window = F.col(MONTH).isin(window)
    sums = [
        F.max(F.when(F.col(MONTH) == F.lit(window[-1]), flag)).alias("retained"),
        F.sum(F.when(in_window, value)).alias("value"),
    ]
    if pre_window:
        sums.append(F.sum(F.when(F.col(MONTH).isin(pre_window), value)).alias("pre_value"))
    return facts.groupBy(ID).agg(*sums)


def months_present(spark: SparkSession, root: str, table: str, months: list[dt.date]) -> list[dt.date]:
    dirs, _ = month_dirs(Storage(spark), root, table)
    return [m for m in months if m in dirs]


def sample_share(total: int, rows: int) -> float:
    return 1.0 if total <= rows else rows / total


def sample_where(share: float) -> Column:
    """A hash-chosen share of subscribers, independent of the split (its own salt)."""
    salt = split.salt64("campaign:aa-sample")

    @F.pandas_udf("double")
    def unit(hashes: pd.Series) -> pd.Series:
        return pd.Series(split.unit(hashes.to_numpy(np.int64), salt))

    return unit(F.col(ID_HASH)) < F.lit(share)


def to_pandas(spark: SparkSession, df: DataFrame) -> pd.DataFrame:
    with session_conf(spark, **ARROW):
        return df.toPandas()


def codes(values: pd.Series) -> tuple[np.ndarray, int]:
    labels, uniques = pd.factorize(values, sort=True)
    return labels.astype(np.int64), max(len(uniques), 1)


def history_check(
    spark: SparkSession,
    settings: Settings,
    name: str,
    cfg: CampaignConfig,
    month: dt.date,
    counts: dict[str, ChannelCounts],
) -> dict[str, Any]:
    """Baseline, MDE and the A/A simulation on H = M − N (module docstring)."""
    history = add_months(month, -cfg.outcome_months)
    window = month_range(add_months(history, 1), month)
    scored = read_scores(spark, settings.paths, history)
    facts = months_present(spark, settings.paths.facts, "facts", window)
    if scored is None or facts != window:
        missing = (
            "scores" if scored is None else f"facts of {', '.join(fmt(m) for m in window if m not in facts)}"
        )
        why = f"history month {fmt(history)}: {missing} not there"
        log.warning("campaign %s: no A/A and no MDE — %s", name, why)
        return {"history_month": fmt(history), "status": "skipped", "why": why}
    parties = read_campaign_parties(spark, settings, history)
    frame, _ = month_frame(spark, settings, name, cfg, history, parties)
    clustered = parties is not None  # households randomized: the variance is over households (stats.Units)
    selected, hist_counts = select_channels(frame, cfg, None)
    selected = with_strata_and_batches(selected, cfg, hist_counts)
    realized = (
        selected.select(ID, ID_HASH, CHANNEL, STRATUM)
        .join(outcomes(spark, settings, cfg, window), ID, "left")
        .select(
            ID_HASH,
            CHANNEL,
            STRATUM,
            F.coalesce(F.col("retained"), F.lit(0.0)).alias("retained"),
            F.coalesce(F.col("value"), F.lit(0.0)).alias("value"),
        )
    )
    total = sum(c.treated + c.control for c in hist_counts.values())
    share = sample_share(total, cfg.aa_rows)
    sample = to_pandas(spark, realized.where(sample_where(share)) if share < 1 else realized)
    salts = [split.salt64(f"campaign:{name}:aa:{i}") for i in range(cfg.aa_splits)]
    z = stats.mde  # the MDE of each metric for this design's group sizes
    channels: dict[str, Any] = {}
    for channel in cfg.channels:
        rows = sample[sample[CHANNEL] == channel.name]
        n_t, n_c = counts[channel.name].treated, counts[channel.name].control
        if len(rows) < 20:
            channels[channel.name] = {
                "status": "skipped",
                "why": f"{len(rows)} subscribers at {fmt(history)}",
            }
            continue
        strata, _ = codes(rows[STRATUM])
        hashes = rows[ID_HASH].to_numpy(np.int64)
        out: dict[str, Any] = {
            "history_subscribers": int(hist_counts[channel.name].treated + hist_counts[channel.name].control),
            "sample": len(rows),
        }
        for metric in ("retained", "value"):
            y = rows[metric].to_numpy(np.float64)
            variance = stats.unit_variance(hashes, y) if clustered else float(np.var(y, ddof=1))
            aa = stats.aa_simulation(
                hashes, strata, y, channel.control_share, salts, alpha=cfg.alpha, clustered=clustered
            )
            key = "retention" if metric == "retained" else "value"
            out[key] = {
                "baseline": float(y.mean()),
                "variance": variance,
                "mde": z(variance, n_t, n_c, cfg.alpha, cfg.power),
                "mde_relative": z(variance, n_t, n_c, cfg.alpha, cfg.power) / abs(y.mean())
                if y.mean()
                else None,
                "aa_rate": aa.rate,
                "aa_ci": [aa.ci_low, aa.ci_high],
                "aa_p_above_alpha": aa.p_above_alpha,
                "aa_false_positives": aa.false_positives,
            }
        channels[channel.name] = out
    return {
        "history_month": fmt(history),
        "status": "done",
        "splits": cfg.aa_splits,
        "sample_rows": len(sample),
        "audience_rows": total,
        "sample_note": (
            "every subscriber of the history audience"
            if share >= 1
            else f"a hash-chosen {share:.1%} of {total:,}: the rate measures the estimator's calibration at"
            " the "
            "sample's size, conservative for the full list (calibration improves with size)"
        ),
        "rate_se": math.sqrt(cfg.alpha * (1 - cfg.alpha) / cfg.aa_splits),
        "channels": channels,
    }


def balance_check(
    spark: SparkSession, name: str, cfg: CampaignConfig, listed: DataFrame, survival: str
) -> dict[str, Any]:
    """Balance of CLTV, survival, tenure and the ranking key between the design's groups, each judged
    against the same covariate's distribution over re-splits of the same list."""
    covariates = {"cltv": "cltv", "survival": survival, "value_at_risk": VALUE_AT_RISK}
    if "tenure" in listed.columns:
        covariates["tenure"] = "tenure"
    present = {k: v for k, v in covariates.items() if v in listed.columns}
    total = listed.count()
    share = sample_share(total, cfg.aa_rows)
    chosen = listed.where(sample_where(share)) if share < 1 else listed
    sample = to_pandas(
        spark,
        chosen.select(
            *dict.fromkeys(
                [
                    CHANNEL,
                    ID_HASH,
                    *present.values(),
                    *sorted({c.ranking_key for c in cfg.channels} & set(listed.columns)),
                ]
            )
        ),
    )
    salt = split.salt64(f"campaign:{name}")
    salts = [split.salt64(f"campaign:{name}:aa:{i}") for i in range(cfg.aa_splits)]
    out: dict[str, Any] = {}
    for channel in cfg.channels:
        rows = sample[sample[CHANNEL] == channel.name]
        if len(rows) < 20:
            out[channel.name] = []
            continue
        values = {k: rows[v].to_numpy(np.float64) for k, v in present.items()}
        if channel.ranking_key in rows and channel.ranking_key not in present.values():
            values["ranking_key"] = rows[channel.ranking_key].to_numpy(np.float64)
        found = stats.balance(rows[ID_HASH].to_numpy(np.int64), values, channel.control_share, salt, salts)
        out[channel.name] = [
            {"covariate": b.covariate, "smd": b.smd, "p_resplit": b.p_resplit, "q95": b.q95} for b in found
        ]
    return out


def verdict(aa: dict[str, Any], balance: dict[str, Any], cfg: CampaignConfig) -> list[str]:
    """Why the design is refused (empty: it is not)."""
    reasons = []
    for channel, found in aa.get("channels", {}).items():
        for metric in ("retention", "value"):
            result = found.get(metric)
            if result and result["aa_p_above_alpha"] < REFUSE_AA_P:
                reasons.append(
                    f"{channel}: the A/A false-positive rate of {metric} is {result['aa_rate']:.1%} "
                    f"(95 % CI {result['aa_ci'][0]:.1%}..{result['aa_ci'][1]:.1%}), significantly above "
                    "alpha "
                    f"{cfg.alpha:.0%}: the test would find effects that are not there"
                )
    tests = [(channel, b) for channel, rows in balance.items() for b in rows]
    for channel, b in tests:
        if b["p_resplit"] * len(tests) < cfg.balance_alpha:
            reasons.append(
                f"{channel}: {b['covariate']} is unbalanced between the groups (SMD {b['smd']:+.3f}, beyond "
                f"{1 - b['p_resplit']:.2%} of {cfg.aa_splits:,} re-splits)"
            )
    return reasons


# ---------------------------------------------------------------- the job
def design_campaign(
    spark: SparkSession,
    settings: Settings,
    name: str,
    month: dt.date,
    launch_date: dt.date | None = None,
    today: dt.date | None = None,
) -> DesignResult:
    cfg = campaign_config(settings, name)
    today = today or dt.date.today()
    timer = StageTimer()
    launch = Launch(launch_date or add_months(month, 1), cfg.batch_days, cfg.freeze_days)
    catalog = settings.models.catalog()
    survival = survival_column(catalog, cfg)
    target = design_dir(settings.paths, name, month)
    storage = Storage(spark)
    log.info(
        "campaign %s, month %s: launch %s, %d channels (%s), outcome after %d months",
        name,
        fmt(month),
        launch.date,
        len(cfg.channels),
        ", ".join(c.name for c in cfg.channels),
        cfg.outcome_months,
    )
    with timer.stage("select", spark):
        parties = read_campaign_parties(spark, settings, month)
        frame, detail = month_frame(spark, settings, name, cfg, month, parties)
        if catalog.tenure_column and catalog.tenure_column in frame.columns:
            frame = frame.withColumn("tenure", F.col(catalog.tenure_column).cast("double"))
        history = read_contacts(spark, settings.paths, today)
        blocked = unavailable(history, launch, campaign=name, month=month)
        if parties is not None:  # a person contacted (or held back) on one line is so on all
            blocked = blocked_per_person(blocked, frame, parties.chains)
        selected, counts = select_channels(frame, cfg, blocked)
        listed = with_strata_and_batches(selected, cfg, counts).cache()
        check_published(listed, history, name, month)
    with timer.stage("balance", spark):
        balance = balance_check(spark, name, cfg, listed, survival)
    with timer.stage("history and A/A", spark):
        aa = history_check(spark, settings, name, cfg, month, counts)
    reasons = verdict(aa, balance, cfg)
    record = {
        "campaign": name,
        "month": fmt(month),
        "launch_date": str(launch.date),
        "last_contact_date": str(launch.last_day),
        "outcome_month": fmt(add_months(month, cfg.outcome_months)),
        "status": "refused" if reasons else "ok",
        "reasons": reasons,
        "value_at_risk": "from the scores' detail arrays"
        if detail
        else "not available (scores without detail)",
        "channels": {
            c.name: {
                **counts[c.name].recorded(),
                "control_share": c.control_share,
                "contact_cost": c.contact_cost,
                "ranking_key": c.ranking_key,
                "top_share": c.top_share,
                "capacity": c.capacity,
            }
            for c in cfg.channels
        },
        "strata": f"value-at-risk decile × {cfg.strata_column or 'nothing'}",
        "alpha": cfg.alpha,
        "power": cfg.power,
        "aa": aa,
        "balance": balance,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if parties is not None:
        record["parties"] = {
            "split_key": "household, else person, else customer (first id of a number change), else "
            "subscriber",
            "contacts": "one line per person per campaign (the highest ranked); freeze and reservation per "
            "person",
        }
    with timer.stage("write", spark), storage.staged(target) as staging:
        listed.select(*LIST_COLUMNS).write.mode("overwrite").parquet(staging)
        storage.write_text(
            f"{staging}/{DESIGN_JSON}", json.dumps(record, indent=2, sort_keys=True, default=str)
        )
    listed.unpersist()
    record["seconds"] = {k: round(v, 1) for k, v in timer.seconds.items()}
    log_design_run(settings, record)
    log_summary(record, timer)
    return DesignResult(name, month, storage.qualify(target), bool(reasons), reasons, record)


def read_design(spark: SparkSession, settings: Settings, name: str, month: dt.date) -> tuple[DataFrame, dict]:
    storage = Storage(spark)
    target = design_dir(settings.paths, name, month)
    if not storage.has_success_marker(target) or not storage.exists(f"{target}/{DESIGN_JSON}"):
        raise CampaignConfigError(
            f"campaign {name}: no design for {fmt(month)} at {target} (the design month is the outcome month "
            "minus outcome_months): run `cltv campaign design` for it first"
        )
    return spark.read.parquet(target), json.loads(storage.read_text(f"{target}/{DESIGN_JSON}"))


def check_published(listed: DataFrame, history: DataFrame | None, name: str, month: dt.date) -> None:
    """After publish, a new design must give every published subscriber its published channel and group."""
    published = published_groups(history, campaign=name, month=month)
    if published is None:
        return
    mine = listed.select(ID, CHANNEL, GROUP)
    changed = (
        published.join(mine, [ID, CHANNEL, GROUP], "left_anti").count()
        + mine.join(published, [ID, CHANNEL, GROUP], "left_anti").count()
    )
    if changed:
        raise CampaignConfigError(
            f"campaign {name} {fmt(month)} was published; this design would change the channel or group of "
            f"{changed:,} subscribers (new scores, config or contacts?). A published design is not "
            "reshuffled: "
            "design another month, or remove its partition from the contact history first"
        )


@tracking.guarded
def log_design_run(settings: Settings, record: dict[str, Any]) -> None:
    cfg = settings.mlflow
    client = tracking.client(cfg)
    experiment = tracking.experiment_id(client, cfg.campaign_experiment, cfg.artifact_location)
    run = client.create_run(
        experiment,
        run_name=f"design {record['campaign']} {record['month']}",
        tags={
            "cltv.job": "campaign-design",
            "cltv.campaign": record["campaign"],
            "cltv.month": record["month"],
            "cltv.status": record["status"],
        },
    )
    metrics: dict[str, float] = {}
    for channel, c in record["channels"].items():
        for key in ("audience", "eligible", "treated", "control", "holdout", "consent", "frozen", "reserved",
                    "same_person"):  # fmt: skip
            if key in c:
                metrics[f"{channel}.{key}"] = c[key]
        found = record["aa"].get("channels", {}).get(channel, {})
        for metric in ("retention", "value"):
            if metric in found:
                metrics[f"{channel}.{metric}.mde"] = found[metric]["mde"]
                metrics[f"{channel}.{metric}.aa_rate"] = found[metric]["aa_rate"]
    params = {
        "launch_date": record["launch_date"],
        "status": record["status"],
        "alpha": record["alpha"],
        "power": record["power"],
        "strata": record["strata"],
    }
    tracking.log_values(
        client,
        run.info.run_id,
        params,
        {k: v for k, v in metrics.items() if v is not None and np.isfinite(v)},
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "design.json"
        path.write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
        client.log_artifact(run.info.run_id, str(path), "campaign")
    client.set_terminated(run.info.run_id)


def log_summary(record: dict[str, Any], timer: StageTimer) -> None:
    log.info("campaign %s %s: %s; %s", record["campaign"], record["month"], record["status"], timer.summary())
    for channel, c in record["channels"].items():
        log.info(
            "  %-18s audience %9s  excluded: holdout %s, consent %s, frozen %s, reserved %s, beyond share/"
            "capacity %s  →  treated %s, control %s",
            channel,
            f"{c['audience']:,}",
            f"{c['holdout']:,}",
            f"{c['consent']:,}",
            f"{c['frozen']:,}",
            f"{c['reserved']:,}",
            f"{c['beyond']:,}",
            f"{c['treated']:,}",
            f"{c['control']:,}",
        )
        found = record["aa"].get("channels", {}).get(channel, {})
        for metric in ("retention", "value"):
            r = found.get(metric)
            if r:
                log.info(
                    "    %s: baseline %.4g, MDE %.4g (alpha %.2f, power %.2f); A/A false positives %.1f%% "
                    "(95 %% CI %.1f..%.1f %%)",
                    metric,
                    r["baseline"],
                    r["mde"],
                    record["alpha"],
                    record["power"],
                    100 * r["aa_rate"],
                    100 * r["aa_ci"][0],
                    100 * r["aa_ci"][1],
                )
        if "same_person" in c:
            log.info(
                "    %s eligible lines not listed: a line of the same person ranked higher",
                f"{c['same_person']:,}",
            )
    for reason in record["reasons"]:
        log.error("  refused: %s", reason)


__all__ = ["DesignResult", "design_campaign"]
