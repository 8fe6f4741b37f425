"""The training set: one row per sampled subscriber, features at month T−h, targets at month T.

Every subscriber is hashed to exactly one (target month T, horizon h) slot, so it enters the training
set at most once and rows of one subscriber never straddle two splits. The whole set is one scan of the
features table, one scan of the facts table and one join: the slot is a column computed from the id,
so neither the plan nor the work grows with the number of target months or horizons.
See docs/dataset.md.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from spark_app import __version__
from spark_app.catalog import CALENDAR_MONTH, DERIVED_FEATURES, FEATURE_CALENDAR_MONTH, HORIZON, ModelCatalog
from spark_app.config import DatasetConfig, Settings
from spark_app.contract import (
    ID,
    MONTH,
    InputContractError,
    catalog_features_spec,
    facts_spec,
    key_problem_counts,
    month_dirs,
    raise_problems,
    read_months,
    read_table,
    rows_read_problems,
    validate,
)
from spark_app.errors import UserError
from spark_app.horizons import feature_calendar_month, target_calendar_month
from spark_app.layout import LATEST, MANIFEST, dataset_dir, datasets_root, latest_file
from spark_app.metrics import push_job_metrics, split_figures
from spark_app.months import add_months, fmt, month_range
from spark_app.parties import (
    CUSTOMER,
    GENERATION,
    HOUSEHOLD,
    PERSON,
    SPLIT_KEY,
    PartyInputs,
    carry_tenure,
    newest_per_customer,
    party_feature_rows,
    party_key,
    read_party_inputs,
    with_customer,
)
from spark_app.progress import StageTimer
from spark_app.seasonality import monthly_means
from spark_app.storage import Storage

log = logging.getLogger(__name__)

SPLITS = ("train_surv", "train_reg", "val", "test", "oot")
SPLIT = "split"
FEATURE_MONTH = "feature_month"
TARGET_MONTH = "target_month"


_UNIT = 1 << 53  # hash → uniform [0, 1) with double precision


class DatasetNotFoundError(UserError):
    """No training set under paths.datasets (or not the requested id)."""


@dataclass(frozen=True)
class DatasetPlan:
    """The target window and horizons of one build, and the hash parameters that pick rows."""

    target_months: tuple[dt.date, ...]
    horizons: tuple[int, ...]
    salt: str
    sample_rate: float
    population: str  # "base", or the fact flag whose value 1 at T − h admits a row
    val_share: float
    test_share: float
    train_reg_share: float

    @classmethod
    def from_config(cls, cfg: DatasetConfig, target_end: dt.date, catalog: ModelCatalog) -> DatasetPlan:
        first = add_months(target_end, -(cfg.target_months - 1))
        population = "base" if cfg.population == "base" else catalog[cfg.population].fact
        return cls(
            target_months=tuple(month_range(first, target_end)),
            horizons=tuple(cfg.horizons),
            salt=cfg.salt,
            sample_rate=cfg.sample_rate,
            population=population,
            val_share=cfg.val_share,
            test_share=cfg.test_share,
            train_reg_share=cfg.train_reg_share,
        )

    @property
    def first_target(self) -> dt.date:
        return self.target_months[0]

    @property
    def last_target(self) -> dt.date:
        return self.target_months[-1]

    @property
    def n_slots(self) -> int:
        return len(self.target_months) * len(self.horizons)

    @property
    def feature_months(self) -> list[dt.date]:
        """Months rows are read from: T1 − max(h) .. T2 − min(h)."""
        first = add_months(self.first_target, -max(self.horizons))
        return month_range(first, add_months(self.last_target, -min(self.horizons)))

    @property
    def fact_months(self) -> list[dt.date]:
        """Target months, plus the feature months when the population is read from the facts."""
        months = set(self.target_months)
        if self.population != "base":
            months |= set(self.feature_months)
        return sorted(months)

    def describe(self) -> str:
        return (
            f"target window {fmt(self.first_target)}..{fmt(self.last_target)}, "
            f"horizons {min(self.horizons)}..{max(self.horizons)}"
        )


@dataclass(frozen=True)
class DatasetResult:
    dataset_id: str
    path: str
    manifest: dict[str, Any] = field(hash=False)


# ---------------------------------------------------------------- pure transformations
def unit_hash(key: str, *salts: str) -> Column:
    """A uniform [0, 1) number from a 64-bit hash of column `key` and `salts`: deterministic, whatever
    the partitioning, and independent of any hash with other salts."""
    hashed = F.xxhash64(F.col(key), *[F.lit(s) for s in salts])
    return F.pmod(hashed, F.lit(_UNIT)).cast("double") / float(_UNIT)


def with_slot(df: DataFrame, *, plan: DatasetPlan, key: str = ID) -> DataFrame:
    """Add the subscriber's one slot: `target_month`, `horizon` and `feature_month` = T − h.

    slot = xxhash64(key, salt) mod (months × horizons); slot div n_h picks T, slot mod n_h picks h. A
    contiguous horizon range is plain arithmetic, so the plan is the same for 3 horizons or 24. The key is
    the subscriber, or with parties the customer (`parties.customer_id`: every id of a number change gets
    the same slot, so a customer enters once whatever id it had at T − h).
    """
    n_h = len(plan.horizons)
    slot = F.pmod(F.xxhash64(F.col(key), F.lit(plan.salt)), F.lit(plan.n_slots))
    h_index = F.pmod(slot, F.lit(n_h))
    contiguous = list(plan.horizons) == list(range(plan.horizons[0], plan.horizons[0] + n_h))
    if contiguous:
        horizon = (h_index + F.lit(plan.horizons[0])).cast("int")
    else:
        horizon = F.element_at(F.array(*[F.lit(h) for h in plan.horizons]), (h_index + 1).cast("int"))
    t_index = ((slot - h_index) / F.lit(n_h)).cast("int")
    target_month = F.add_months(F.lit(plan.first_target), t_index)
    return (
        df.withColumn(TARGET_MONTH, target_month)
        .withColumn(HORIZON, horizon)
        .withColumn(FEATURE_MONTH, F.add_months(F.col(TARGET_MONTH), -F.col(HORIZON)))
    )


def keep_sampled(df: DataFrame, *, plan: DatasetPlan, key: str = ID) -> DataFrame:
    """Keep the hash-chosen `sample_rate` share of subscribers (a hash independent of the slot's)."""
    if plan.sample_rate >= 1:
        return df
    return df.where(unit_hash(key, plan.salt, "sample") < F.lit(plan.sample_rate))


def feature_rows(features: DataFrame, *, plan: DatasetPlan, columns: list[str]) -> DataFrame:
    """Each sampled subscriber's feature row at T − h of its slot (none when absent from the base then)."""
    months = plan.feature_months
    return (
        features.where(F.col(MONTH).between(F.lit(months[0]), F.lit(months[-1])))
        .select(ID, MONTH, *columns)
        .transform(keep_sampled, plan=plan)
        .transform(with_slot, plan=plan)
        .where(F.col(MONTH) == F.col(FEATURE_MONTH))
        .drop(MONTH)
    )


def fact_rows(
    facts: DataFrame,
    *,
    plan: DatasetPlan,
    columns: list[str],
    chains: DataFrame | None = None,
    flags: tuple[str, ...] = (),
) -> DataFrame:
    """Each sampled subscriber's facts at T of its slot, keyed (subscriber_id, target_month).

    With population active/paid the fact row at T − h comes along too, folded into the same row as
    `_population` (the base flag at T − h), so the population needs no second join.

    With parties (`chains`: the number-change chains, `parties.chain_members`) the key is the customer: the
    facts at T of every id of the customer count (an old id gone and its successor in the base is a customer
    still in it), keyed (customer_id, target_month): `flags` (0/1) by their maximum, amounts summed.
    """
    months = plan.fact_months
    in_window = facts.where(F.col(MONTH).between(F.lit(months[0]), F.lit(months[-1])))
    key = ID
    if chains is not None:
        in_window, key = with_customer(in_window, chains), CUSTOMER
    slotted = in_window.transform(keep_sampled, plan=plan, key=key).transform(with_slot, plan=plan, key=key)
    at_target = F.col(MONTH) == F.col(TARGET_MONTH)
    if plan.population == "base" and key == ID:
        return slotted.where(at_target).select(ID, TARGET_MONTH, *columns)
    wanted = at_target if plan.population == "base" else at_target | (F.col(MONTH) == F.col(FEATURE_MONTH))
    population = (
        [F.max(F.when(~at_target, F.col(plan.population))).alias("_population")]
        if plan.population != "base"
        else []
    )
    combine = {c: F.max if c in flags or key == ID else F.sum for c in columns}
    return (
        slotted.where(wanted)
        .groupBy(key, TARGET_MONTH)
        .agg(*[combine[c](F.when(at_target, F.col(c))).alias(c) for c in columns], *population)
    )


def customer_feature_rows(
    features: DataFrame, *, plan: DatasetPlan, columns: list[str], party: PartyInputs, catalog: ModelCatalog
) -> DataFrame:
    """With parties: each sampled customer's feature row at T − h of its slot, as the id it had then (the
    newest, when an old and a new id were both in the base that month), with the customer's tenure carried
    (`parties.carry_tenure`), its person and household at T − h, the split key (`parties.party_key`) and,
    when some model reads them, the party features (`parties.party_feature_rows`)."""
    months = plan.feature_months
    window = features.where(F.col(MONTH).between(F.lit(months[0]), F.lit(months[-1])))
    kept = (
        window.select(ID, MONTH, *columns)
        .transform(with_customer, chains=party.chains)
        .transform(keep_sampled, plan=plan, key=CUSTOMER)
        .transform(with_slot, plan=plan, key=CUSTOMER)
        .where(F.col(MONTH) == F.col(FEATURE_MONTH))
        .transform(newest_per_customer, month_col=MONTH)
        .transform(carry_tenure, starts=party.starts, tenure_column=catalog.tenure_column, month_col=MONTH)
    )
    in_window = party.parties.where(F.col(MONTH).between(F.lit(months[0]), F.lit(months[-1])))
    if catalog.party_features():
        party_rows = party_feature_rows(
            in_window, window, chains=party.chains, starts=party.starts,
            tenure_column=catalog.tenure_column, home_internet=catalog.home_internet,
        ).select(ID, MONTH, PERSON, HOUSEHOLD, *catalog.party_features())  # fmt: skip
    else:  # only the rows of the kept ids: each party row slotted by its own customer, as the features
        party_rows = (
            in_window.select(ID, MONTH, PERSON, HOUSEHOLD)
            .transform(with_customer, chains=party.chains)
            .transform(keep_sampled, plan=plan, key=CUSTOMER)
            .transform(with_slot, plan=plan, key=CUSTOMER)
            .where(F.col(MONTH) == F.col(FEATURE_MONTH))
            .select(ID, MONTH, PERSON, HOUSEHOLD)
        )
    return (
        kept.join(party_rows, [ID, MONTH], "left")
        .withColumn(PERSON, F.coalesce(PERSON, CUSTOMER))
        .withColumn(SPLIT_KEY, party_key())
        .drop(MONTH, GENERATION)
    )


def with_targets(df: DataFrame, *, targets: dict[str, str], flags: tuple[str, ...]) -> DataFrame:
    """Flags as 0/1 ints, amounts as daily averages over month T; absent from facts at T → 0.

    A flag other than 0/1 becomes -1, which the check after the write turns into a contract error.
    """
    days = F.dayofmonth(F.last_day(F.col(TARGET_MONTH))).cast("double")
    out = df
    for name, fact in targets.items():
        raw = F.col(fact).cast("double")
        if fact in flags:
            value = (
                F.when(raw.isNull(), F.lit(0)).when(raw.isin(0.0, 1.0), raw.cast("int")).otherwise(F.lit(-1))
            )
        else:
            value = F.coalesce(raw, F.lit(0.0)) / days
        out = out.withColumn(name, value)
    return out


def with_split(df: DataFrame, *, plan: DatasetPlan, key: str = ID) -> DataFrame:
    """oot = T2; the rest by a third independent hash: test, val, then train_reg / train_surv. The key is
    the subscriber, or with parties its household (else person, customer: `parties.party_key`), so the
    members of one household never straddle train / val / test."""
    u = unit_hash(key, plan.salt, "split")
    held_out = plan.val_share + plan.test_share
    train_u = (u - F.lit(held_out)) / F.lit(1.0 - held_out)
    split = (
        F.when(F.col(TARGET_MONTH) == F.lit(plan.last_target), F.lit("oot"))
        .when(u < F.lit(plan.test_share), F.lit("test"))
        .when(u < F.lit(held_out), F.lit("val"))
        .when(train_u < F.lit(plan.train_reg_share), F.lit("train_reg"))
        .otherwise(F.lit("train_surv"))
    )
    return df.withColumn(SPLIT, split)


def training_rows(
    features: DataFrame,
    facts: DataFrame,
    *,
    plan: DatasetPlan,
    catalog: ModelCatalog,
    party: PartyInputs | None = None,
) -> DataFrame:
    """The whole training set with its `split` column: one features scan, one facts scan, one join.

    With `party` (paths.parties set) history follows the customer across number changes — slots and the
    sample by customer, targets from every id of the customer at T, the tenure carried — and the splits
    hash the household; the rows gain customer_id, person_id, household_id (and the party features some
    model reads)."""
    feature_cols = catalog.input_columns()
    targets = catalog.targets()
    fact_cols = sorted(set(targets.values()))
    if party is None:
        joined = feature_rows(features, plan=plan, columns=feature_cols).join(
            fact_rows(facts, plan=plan, columns=fact_cols), on=[ID, TARGET_MONTH], how="left"
        )
        split_key, extra = ID, []
    else:
        rows = customer_feature_rows(features, plan=plan, columns=feature_cols, party=party, catalog=catalog)
        customer_facts = fact_rows(
            facts, plan=plan, columns=fact_cols, chains=party.chains, flags=catalog.flags()
        )
        joined = rows.join(customer_facts, on=[CUSTOMER, TARGET_MONTH], how="left")
        split_key, extra = SPLIT_KEY, [*catalog.party_features(), CUSTOMER, PERSON, HOUSEHOLD]
    if plan.population != "base":
        joined = joined.where(F.col("_population") == 1)
    return (
        joined.withColumn(CALENDAR_MONTH, target_calendar_month(F.col(TARGET_MONTH)))
        .withColumn(FEATURE_CALENDAR_MONTH, feature_calendar_month(F.col(FEATURE_MONTH)))
        .transform(with_targets, targets=targets, flags=catalog.flags())
        .transform(with_split, plan=plan, key=split_key)
        .select(ID, FEATURE_MONTH, TARGET_MONTH, *DERIVED_FEATURES, *feature_cols, *extra, *targets, SPLIT)
    )


# ---------------------------------------------------------------- I/O at the edges
def read_inputs(spark: SparkSession, settings: Settings, plan: DatasetPlan) -> tuple[DataFrame, DataFrame]:
    """Read both tables and check, before any work, what can be checked cheaply; raise InputContractError.

    Months and every file's schema always (contract.read_months). Null ids, duplicate keys and 0/1
    flags: with `validate_all_rows` on every
    row of the window (contract.validate); with population active/paid on the rows the build reads; with
    population base after the build, on its output (`check_rows_read`), which costs no extra scan.
    """
    catalog = settings.models.catalog()
    specs = (catalog_features_spec(catalog), facts_spec(catalog))
    context = f"needed by {plan.describe()}"
    features, facts = read_months(
        spark,
        [
            (settings.paths.features, specs[0], plan.feature_months),
            (settings.paths.facts, specs[1], plan.fact_months),
        ],
        context=context,
    )
    if settings.dataset.validate_all_rows:
        validate(features, specs[0], plan.feature_months, context=context)
        validate(facts, specs[1], plan.fact_months, context=context)
    elif plan.population != "base":
        raise_problems(inputs_read_problems(features, facts, plan=plan, catalog=catalog), context)
    return features, facts


def inputs_read_problems(
    features: DataFrame, facts: DataFrame, *, plan: DatasetPlan, catalog: ModelCatalog
) -> list[str]:
    """Every contract problem of both tables that can reach the training set (contract.rows_read_problems
    on the rows this plan reads)."""
    problems = rows_read_problems(
        features, catalog_features_spec(catalog), plan.feature_months, partial(read_feature_keys, plan=plan)
    )
    facts_read = partial(read_fact_keys, plan=plan)
    return problems + rows_read_problems(facts, facts_spec(catalog), plan.fact_months, facts_read)


def check_rows_read(
    written: DataFrame, features: DataFrame, facts: DataFrame, *, plan: DatasetPlan, settings: Settings
) -> None:
    """After the write (still staged): a null or repeated id, or a flag outside 0/1, in the output can
    only come from a contract breach in the rows read; name it precisely, or raise with the counts."""
    catalog = settings.models.catalog()
    found = key_problem_counts(written, [e.target for e in catalog.survival])
    if not found:
        return
    text = ", ".join(f"{k} {v:,}" for k, v in found.items())
    log.warning("training rows break the contract (%s); checking the inputs", text)
    problems = inputs_read_problems(features, facts, plan=plan, catalog=catalog)
    if not problems:
        problems = [f"training rows: {k}: {v}" for k, v in found.items()]
    context = f"needed by {plan.describe()}"
    raise InputContractError(f"input contract violated ({context}):\n  " + "\n  ".join(problems))


def read_feature_keys(features: DataFrame, *, plan: DatasetPlan) -> DataFrame:
    """The rows of `features` the build reads: each sampled subscriber's row at T − h of its slot."""
    return (
        features.transform(keep_sampled, plan=plan)
        .transform(with_slot, plan=plan)
        .where(F.col(MONTH) == F.col(FEATURE_MONTH))
        .select(*features.columns)
    )


def read_fact_keys(facts: DataFrame, *, plan: DatasetPlan) -> DataFrame:
    """The rows of `facts` the build reads: at T of each slot, and at T − h for a population."""
    wanted = F.col(MONTH) == F.col(TARGET_MONTH)
    if plan.population != "base":
        wanted = wanted | (F.col(MONTH) == F.col(FEATURE_MONTH))
    return (
        facts.transform(keep_sampled, plan=plan)
        .transform(with_slot, plan=plan)
        .where(wanted)
        .select(*facts.columns)
    )


def dataset_id_for(settings: Settings, target_end: dt.date) -> str:
    """Same target end + same resolved config → same id, so a rerun replaces the dataset it rebuilds."""
    return f"ds-{target_end:%Y%m}-{settings.config_hash()[:8]}"


def split_stats(
    written: DataFrame | None, targets: list[str], floors: dict[str, float] | None = None
) -> dict[str, dict[str, Any]]:
    """Rows per split × horizon, target means per split, and targets below their plausibility floor
    (`fact_min`), from the written Parquet (one small job)."""
    rows = []
    floors = floors or {}
    if written is not None:
        rows = (
            written.groupBy(SPLIT, HORIZON)
            .agg(
                F.count(F.lit(1)).alias("rows"),
                *[F.sum(c).alias(c) for c in targets],
                *[
                    F.sum((F.col(c) < F.lit(low)).cast("long")).alias(f"below:{c}")
                    for c, low in floors.items()
                ],
            )
            .collect()
        )
    stats: dict[str, dict[str, Any]] = {}
    for name in SPLITS:
        mine = sorted((r for r in rows if r[SPLIT] == name), key=lambda r: r[HORIZON])
        n = sum(r["rows"] for r in mine)
        stats[name] = {
            "rows": n,
            "rows_by_horizon": {str(r[HORIZON]): r["rows"] for r in mine},
            "target_means": {c: (sum(r[c] for r in mine) / n if n else None) for c in targets},
            "below_fact_min": {c: int(sum(r[f"below:{c}"] for r in mine)) for c in floors},
        }
    return stats


def implausible_facts(
    stats: dict[str, dict[str, Any]], catalog: ModelCatalog, action: str, context: str
) -> dict[str, int]:
    """Facts below their model's `fact_min` (e.g. negative volumes) among the rows read: a warning, or
    with dataset.implausible_facts: error, a contract error."""
    below: dict[str, int] = {}
    for entry in catalog:
        n = sum(split.get("below_fact_min", {}).get(entry.target, 0) for split in stats.values())
        if n:
            below[entry.fact] = n
    if below:
        text = ", ".join(f"{fact}: {n:,} rows below {catalog.fact_floor(fact)}" for fact, n in below.items())
        if action == "error":
            raise InputContractError(
                f"facts: implausible values ({context}): {text} (dataset.implausible_facts)"
            )
        log.warning("facts: implausible values (%s): %s; trained as they are", context, text)
    return below


class EmptyDatasetError(UserError):
    """The build would leave a training set `train` cannot use; nothing is swapped in, `latest` stays."""


def refuse_empty(stats: dict[str, dict[str, Any]], plan: DatasetPlan, dataset_id: str) -> None:
    """An empty training set (or one without rows for the survival models or the regressors) never
    becomes `latest`: name the setting that emptied it."""
    empty = [name for name in ("train_surv", "train_reg") if not stats[name]["rows"]]
    if not empty:
        return
    total = sum(s["rows"] for s in stats.values())
    if plan.sample_rate < 1:
        why = f"dataset.sample_rate={plan.sample_rate:g} keeps too few subscribers"
    elif plan.population != "base":
        why = f"dataset.population={plan.population!r}: too few subscribers are in that base at T - h"
    elif not total:
        why = f"no subscriber of the features is in the months {plan.describe()} reads"
    elif stats["oot"]["rows"] == total:
        why = f"every row is in the OOT month: dataset.target_months={len(plan.target_months)} leaves none"
    else:
        why = "dataset.val_share / test_share / train_reg_share leave no rows for them"
    raise EmptyDatasetError(
        f"dataset {dataset_id} ({plan.describe()}): {total:,} rows, none in split "
        f"{' and '.join(empty)} — {why}; nothing was written and `latest` still names the previous set"
    )


def read_splits(spark: SparkSession, storage: Storage, path: str) -> DataFrame | None:
    """All split directories under `path` as one DataFrame with a `split` column (None: no rows at all)."""
    dirs = [f"{path}/{name}" for name in storage.list_dir(path) if name.startswith(f"{SPLIT}=")]
    return spark.read.option("basePath", path).parquet(*dirs) if dirs else None


def fact_history(
    spark: SparkSession, settings: Settings, plan: DatasetPlan, catalog: ModelCatalog
) -> dict[str, Any]:
    """The base's monthly count and Σ of each amount (daily units) over the `dataset.season_months` months
    before the OOT month that the facts table has: the seasonal index's input (spark_app.seasonality). The
    OOT month is left out, so the release's OOT report stays untouched by what it is judged on."""
    amounts = {e.model_id: e.fact for e in catalog.amounts}
    span = settings.dataset.season_months
    if not span or not amounts:
        return {}
    wanted = month_range(add_months(plan.last_target, -span), add_months(plan.last_target, -1))
    dirs, _ = month_dirs(Storage(spark), settings.paths.facts, "facts")
    months = [m for m in wanted if m in dirs]
    if not months:
        return {}
    facts = read_table(spark, settings.paths.facts, "facts", months)
    rows = monthly_means(facts.select(MONTH, *sorted(set(amounts.values()))), amounts).collect()
    return {
        "months": [r[MONTH].isoformat() for r in rows],
        "rows": [int(r["rows"]) for r in rows],
        "sums": {m: [float(r[m] or 0.0) for r in rows] for m in amounts},
    }


def build_dataset(spark: SparkSession, settings: Settings, target_end: dt.date) -> DatasetResult:
    """Build, validate-first, the training set ending at `target_end` and swap it in atomically."""
    catalog = settings.models.catalog()
    plan = DatasetPlan.from_config(settings.dataset, target_end, catalog)
    storage = Storage(spark)
    timer = StageTimer()
    dataset_id = dataset_id_for(settings, target_end)
    target = dataset_dir(settings.paths, dataset_id)
    log.info(
        "building dataset %s: %s, %d slots, sample rate %s, population %s",
        dataset_id,
        plan.describe(),
        plan.n_slots,
        plan.sample_rate,
        plan.population,
    )
    with timer.stage("check inputs", spark):
        features, facts = read_inputs(spark, settings, plan)
        if catalog.party_features() and settings.paths.parties is None:
            raise UserError(
                f"models read the party features {list(catalog.party_features())} (models.profiles.*."
                "feature_cols) but paths.parties is not set: set it, or take them out of the profiles"
            )
        party = read_party_inputs(
            spark, settings.paths, sorted(set(plan.feature_months) | set(plan.target_months)),
            plan.last_target, catalog.tenure_column,
        )  # fmt: skip
    with timer.stage("season history", spark):
        history = fact_history(spark, settings, plan, catalog)
    targets = catalog.targets()
    feature_cols = catalog.input_columns()
    party_features = list(catalog.party_features()) if party is not None else []
    party_cols = [*party_features, CUSTOMER, PERSON, HOUSEHOLD] if party is not None else []
    parties_manifest = None
    if party is not None and settings.paths.parties:
        parties_manifest = {
            "path": storage.qualify(settings.paths.parties),
            "split_key": "household_id, else person_id, else customer_id",
            "number_changes": party.chains is not None,
            "party_features": party_features,
        }
    with storage.staged(target) as staging:
        with timer.stage("build and write splits", spark):
            rows = training_rows(features, facts, plan=plan, catalog=catalog, party=party)
            rows.write.mode("overwrite").partitionBy(SPLIT).parquet(staging)
        with timer.stage("check and summarize splits", spark):
            written = read_splits(spark, storage, staging)
            if written is not None and plan.population == "base" and not settings.dataset.validate_all_rows:
                check_rows_read(written, features, facts, plan=plan, settings=settings)
            floors = {e.target: e.fact_min for e in catalog if e.fact_min is not None}
            stats = split_stats(written, list(targets), floors)
            refuse_empty(stats, plan, dataset_id)
            implausible = implausible_facts(
                stats, catalog, settings.dataset.implausible_facts, f"needed by {plan.describe()}"
            )
        manifest = {
            "dataset_id": dataset_id,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "package_version": __version__,
            "config_hash": settings.config_hash(),
            "target_end": fmt(plan.last_target),
            "target_months": [fmt(m) for m in plan.target_months],
            "horizons": list(plan.horizons),
            "population": settings.dataset.population,
            "sample_rate": plan.sample_rate,
            "salt": plan.salt,
            "inputs": {
                "features": {
                    "path": storage.qualify(settings.paths.features),
                    "months": [fmt(m) for m in plan.feature_months],
                },
                "facts": {
                    "path": storage.qualify(settings.paths.facts),
                    "months": [fmt(m) for m in plan.fact_months],
                },
            },
            "columns": [ID, FEATURE_MONTH, TARGET_MONTH, *DERIVED_FEATURES, *feature_cols, *party_cols,
                        *targets],
            "feature_columns": [*DERIVED_FEATURES, *feature_cols, *party_features],
            "parties": parties_manifest,
            "categorical_columns": catalog.input_categorical(),
            "target_columns": {name.removesuffix("_fact"): name for name in targets},
            "rows": sum(s["rows"] for s in stats.values()),
            "splits": stats,
            "implausible_facts": implausible,
            "fact_history": history,
            "seconds": {k: round(v, 1) for k, v in timer.seconds.items()},
        }
        storage.write_json(f"{staging}/{MANIFEST}", manifest)
    storage.write_text(latest_file(settings.paths), dataset_id + "\n")
    log.info(
        "dataset %s: %s rows (%s) in %s; %s",
        dataset_id,
        f"{manifest['rows']:,}",
        ", ".join(f"{k} {v['rows']:,}" for k, v in stats.items()),
        target,
        timer.summary(),
    )
    push_job_metrics(
        settings.monitoring, "build-dataset", target_end, None, timer.seconds, split_figures(stats), "ok"
    )
    return DatasetResult(dataset_id=dataset_id, path=storage.qualify(target), manifest=manifest)


def read_dataset(
    spark: SparkSession, settings: Settings, dataset_id: str | None = None
) -> tuple[str, dict, dict[str, DataFrame]]:
    """(id, manifest, split → DataFrame) of `dataset_id`, or of the newest one (`latest`) when None.

    A split with no rows (e.g. val_share 0) comes back as an empty DataFrame with the dataset's schema.
    """
    storage = Storage(spark)
    if dataset_id is None:
        latest = latest_file(settings.paths)
        if not storage.exists(latest):
            raise DatasetNotFoundError(
                f"no training set under paths.datasets={datasets_root(settings.paths)} (no '{LATEST}' "
                "file): run `cltv build-dataset` first"
            )
        dataset_id = storage.read_text(latest).strip()
    path = dataset_dir(settings.paths, dataset_id)
    if not storage.exists(f"{path}/{MANIFEST}"):
        raise DatasetNotFoundError(f"training set {dataset_id!r} not found: no {path}/{MANIFEST}")
    manifest = storage.read_json(f"{path}/{MANIFEST}")
    present = {name: f"{path}/{SPLIT}={name}" for name in SPLITS if storage.exists(f"{path}/{SPLIT}={name}")}
    frames = {name: spark.read.parquet(p) for name, p in present.items()}
    schema = next(iter(frames.values())).schema if frames else T.StructType([])
    for name in SPLITS:
        if name not in frames:
            frames[name] = spark.createDataFrame([], schema)
    return dataset_id, manifest, {name: frames[name] for name in SPLITS}
