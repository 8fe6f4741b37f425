"""Typed configuration: YAML layers (base.yaml, models.yaml ← environment file ← CLTV_* env vars).

The CLI builds one `Settings` and hands the relevant section to each function; nothing else reads files
or environment variables for configuration.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import stat
import typing
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    confloat,
    conint,
    conlist,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from spark_app.catalog import (
    INTERVAL_LEVELS,
    METRICS,
    PARTY_HOME_INTERNET,
    STACKED_PREFIX,
    VALUE_AT_RISK,
    ModelCatalog,
    ModelEntry,
    NaiveSpec,
    ValueTerm,
)
from spark_app.errors import UserError
from spark_app.redact import redact_obj, register_secret, secret_values

try:
    from importlib.resources.abc import Traversable
except ImportError:  # Python 3.10
    from importlib.abc import Traversable

log = logging.getLogger(__name__)

ENV_PREFIX = "CLTV_"
ENV_NESTING = "__"
BASE_FILES = ("base.yaml", "models.yaml")

# Bounds of what a config can ask for (README "Configuration"): a value beyond them is a typo, and would
# otherwise fail deep inside a job — or never finish
MAX_HORIZON = 60  # forecast horizons h (and backtest / report horizons): five years
MAX_TARGET_MONTHS = 120  # target months T1..T2 of a training set: ten years
MAX_EXTRAPOLATION_MONTHS = 240
# A config file is small and written by people: limits that stop a hostile or broken one at once
MAX_CONFIG_BYTES = 1 << 20  # 1 MiB per file (or environment variable)
MAX_CONFIG_VALUES = 100_000  # values after expanding YAML aliases (an "alias bomb" expands exponentially)
MAX_CONFIG_DEPTH = 32  # nesting of mappings and lists


class ConfigError(UserError):
    """A configuration file or override is wrong; the message names the key and where it came from."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PathsConfig(_Section):
    """Hadoop-compatible URIs or local paths (relative ones resolve against the working directory)."""

    features: str = Field(default="work/panel/features", min_length=1)
    facts: str = Field(default="work/panel/facts", min_length=1)
    datasets: str = Field(default="work/datasets", min_length=1)
    scores: str = Field(default="work/scores", min_length=1)
    monitoring: str = Field(default="work/monitoring", min_length=1)
    campaigns: str = Field(default="work/campaigns", min_length=1)  # designs and evaluations
    # the contact history (optional input; campaign publish writes its own partitions into it): a path
    # that does not exist yet is an empty history
    contacts: str = Field(default="work/contacts", min_length=1)
    # persons and households (optional input, spark_app/parties.py): subscriber → person, household and the
    # id it continues after a number change; None = everything per subscriber, as without the table
    parties: str | None = Field(default=None, min_length=1)
    # {party_scores}/level=person|household/score_month=…; None = `party_scores` beside paths.scores
    party_scores: str | None = Field(default=None, min_length=1)
    # `cltv wait-for-inputs` (inputs_ready.py) checks hdfs:// inputs over WebHDFS, without a JVM
    webhdfs_url: str | None = None  # e.g. http://namenode:9870; None = hdfs:// inputs cannot be checked
    webhdfs_user: str | None = None  # user name for simple auth (ignored with kerberos)
    kerberos: bool = False  # SPNEGO via the ticket cache (kinit from the keytab Secret first)


class MlflowConfig(_Section):
    tracking_uri: str = Field(default="sqlite:///work/mlflow.db", min_length=1)
    registry_uri: str | None = None
    experiment: str = "cltv"
    monitoring_experiment: str = "cltv-monitoring"
    campaign_experiment: str = "cltv-campaigns"  # one run per campaign design and per evaluation
    model_name: str = "cltv"
    artifact_location: str | None = "work/mlartifacts"
    # MLflow's HTTP client retries ~4 minutes by default before a job learns the server is down; Argo
    # retries the job with backoff anyway (exit 75), so each call gives up sooner
    http_retries: int = Field(default=3, ge=0, le=10)
    http_timeout: PositiveInt = Field(default=60, le=3600)  # seconds per request
    # the MLflow UI's address (e.g. https://mlflow.example.com): links to reports and runs point there
    ui_url: str | None = None


class DatasetConfig(_Section):
    target_months: int = Field(default=13, ge=1, le=MAX_TARGET_MONTHS)
    horizons: conlist(conint(ge=1, le=MAX_HORIZON), min_length=1) = Field(
        default_factory=lambda: list(range(1, 25))
    )
    sample_rate: confloat(gt=0, le=1) = 1.0
    salt: str = "cltv"
    # months of facts before the OOT month whose base-wide means give each amount its seasonal index
    # (spark_app/seasonality.py); 0 = no index, the trees and the calibration see the season alone
    season_months: int = Field(default=36, ge=0, le=120)
    population: str = "base"  # base, or a survival model id: only rows in that base at T − h enter
    val_share: confloat(ge=0, lt=1) = 0.1
    test_share: confloat(ge=0, lt=1) = 0.1
    train_reg_share: confloat(gt=0, lt=1) = 0.5
    # check duplicate keys on every row of the window, not only the rows read (docs/dataset.md)
    validate_all_rows: bool = False
    # facts below a model's fact_min (negative volumes, negative SAC): warn and train, or refuse
    implausible_facts: Literal["warn", "error"] = "warn"

    @field_validator("horizons")
    @classmethod
    def _sorted_unique(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError("horizons must not repeat")
        return sorted(v)

    @model_validator(mode="after")
    def _shares(self) -> DatasetConfig:
        if self.val_share + self.test_share >= 1:
            raise ValueError("val_share + test_share must be below 1")
        return self

    @property
    def max_horizon(self) -> int:
        return max(self.horizons)


class CostsConfig(_Section):
    """Unit costs and per-subscriber monthly overhead rates, in the operator's currency."""

    cost_per_gb: confloat(ge=0) = 0.35
    cost_per_minute: confloat(ge=0) = 0.004
    overhead_sb: confloat(ge=0) = 0.9
    overhead_ga: confloat(ge=0) = 0.6
    overhead_am: confloat(ge=0) = 0.3
    overhead_base: str = "paid"  # the survival model whose probability carries the overheads
    annual_discount_rate: confloat(ge=0, lt=1) = 0.1
    currency: str = Field(default="EUR", min_length=1, max_length=12)  # a label: amounts are not converted


class SparkConfig(_Section):
    master: str | None = "local[*]"
    app_name: str = "cltv"
    driver_memory: str = "6g"
    shuffle_partitions: int = Field(default=8, ge=1, le=100_000)
    conf: dict[str, str | int | float | bool] = Field(default_factory=dict)


class TrainingConfig(_Section):
    max_rows_per_model: int = Field(default=400_000, ge=1, le=100_000_000)
    thread_count: int = Field(default=2, ge=1, le=1024)
    random_seed: int = 42
    tenure_bands: list[int] = Field(default_factory=lambda: [0, 3, 6, 12, 24, 48])  # naive-baseline bands
    # equal-width probability bins of calibration tables
    calibration_bins: int = Field(default=10, ge=2, le=1000)
    # held-out subscribers the intervals are fitted on (cap)
    interval_subscribers: int = Field(default=20_000, ge=1, le=100_000_000)
    # recent feature months pooled per horizon: a year of seasons
    interval_months: int = Field(default=12, ge=1, le=MAX_TARGET_MONTHS)
    # intervals Mondrian by this categorical feature too (each value with enough residuals gets its own
    # bands, the others the overall ones); null: by forecast decile only
    interval_segment: str | None = "segment"
    interval_min_segment_rows: int = Field(default=1000, ge=50, le=10_000_000)


class PromotionConfig(_Section):
    """Relative worsening allowed per model on its main metric before a challenger is refused."""

    # per kind, or per model id (wins over its kind): sac is zero-inflated, WAPE/MAE reward forecasting 0
    main_metric: dict[str, str] = Field(
        default_factory=lambda: {"classification": "roc_auc", "regression": "rmse"}
    )
    tolerance: dict[str, confloat(ge=0)] = Field(default_factory=dict)  # model id → allowed worsening
    # refuse a challenger whose OOT |Σ forecast / Σ actual − 1| exceeds this for an amount model or for
    # the cumulative 24-month value: CLTV sums these expectations
    max_abs_bias: confloat(gt=0) = 0.05
    # one promotion at a time (a lease beside the training sets): a second one waits this long for the
    # first to finish, then compares with the champion the first left (exit 75 if it never finishes)
    lock_wait_seconds: float = Field(default=600.0, ge=0, le=86_400)




class ScoringConfig(_Section):
    holdout_share: confloat(ge=0, lt=1) = 0.05
    holdout_salt: str = "cltv-holdout"
    arrow_batch_rows: int = Field(default=20_000, ge=1, le=10_000_000)
    extrapolation_months: int = Field(default=60, ge=1, le=MAX_EXTRAPOLATION_MONTHS)
    # bounds on the year-over-year trend of per-survivor amounts
    # carried into the extrapolated months (docs/scoring.md)
    # how survival is carried past the forecast horizon: shifted-beta-geometric, or its generalization the
    # beta-discrete-Weibull (retention rising or falling with tenure); docs/scoring.md, measured
    extrapolation_method: Literal["sbg", "bdw"] = "sbg"
    trend_floor: confloat(gt=0, le=1) = 0.8
    trend_cap: confloat(ge=1) = 1.25
    interval_level: float = 0.8  # of cltv_lower/upper and value_<k>m_lower/upper; one of INTERVAL_LEVELS
    # a release whose models differ from models.enabled: score with the release's models and warn, or refuse
    models_mismatch: Literal["warn", "error"] = "warn"

    @field_validator("interval_level")
    @classmethod
    def _stored_level(cls, level: float) -> float:
        if level not in INTERVAL_LEVELS:
            raise ValueError(f"{level} is not one of the levels releases store: {list(INTERVAL_LEVELS)}")
        return level


class MonitoringConfig(_Section):
    psi_warn: confloat(gt=0) = 0.1
    psi_fail: confloat(gt=0) = 0.25
    unseen_warn: confloat(ge=0, le=1) = 0.01
    unseen_fail: confloat(ge=0, le=1) = 0.05
    reference_rows: int = Field(default=50_000, ge=1, le=10_000_000)
    psi_bins: int = Field(default=10, ge=2, le=1000)  # quantile bins of the reference per numeric feature
    prediction_psi_warn: confloat(gt=0) = 0.1  # CLTV / survival distribution vs the previous month
    prediction_psi_fail: confloat(gt=0) = 0.25
    prediction_columns: list[str] = Field(default_factory=list)  # empty = every numeric score column
    # hash-chosen subscribers compared per month
    prediction_drift_rows: int = Field(default=200_000, ge=1, le=100_000_000)
    # score months T-1..T-k are backtested against T
    backtest_max_horizon: int = Field(default=24, ge=1, le=MAX_HORIZON)
    backtest_dimensions: list[str] = Field(default_factory=lambda: ["segment", "region"])
    tenure_cohorts: list[int] = Field(default_factory=lambda: [0, 6, 12, 24, 48])  # cohort lower edges
    metric_horizons: list[int] = Field(default_factory=lambda: [1, 3, 6, 12, 24])  # logged to MLflow
    # subscribers whose SHAP values the report explains
    report_shap_rows: int = Field(default=2_000, ge=1, le=1_000_000)
    # horizon at which the report explains the models
    report_shap_horizon: int = Field(default=12, ge=1, le=MAX_HORIZON)
    # interval coverage (share of subscribers whose realized cumulative value lies inside the interval)
    # further than this from the nominal level, at any horizon, per population: warn / fail
    coverage_warn: confloat(gt=0, lt=1) = 0.05
    coverage_fail: confloat(gt=0, lt=1) = 0.1
    # fewer subscribers at a horizon: coverage shown, not judged
    coverage_min_rows: int = Field(default=500, ge=1, le=100_000_000)
    # survival calibration in the backtest: |predicted − realized share in base| of a survival model,
    # per horizon — a key k applies from horizon k on (the error of a forecast grows with its horizon)
    survival_warn: dict[int, confloat(gt=0, lt=1)] = Field(
        default_factory=lambda: {1: 0.02, 6: 0.04, 12: 0.06}
    )
    survival_fail: dict[int, confloat(gt=0, lt=1)] = Field(
        default_factory=lambda: {1: 0.05, 6: 0.08, 12: 0.12}
    )
    # Prometheus Pushgateway every job pushes its figures to (None: none); unreachable is a warning only
    pushgateway_url: str | None = None
    # `instance` of every group pushed (the group is {job, instance}): one name per deployment
    pushgateway_instance: str = Field(default="cltv", max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
    pushgateway_timeout_seconds: float = Field(default=5.0, gt=0, le=60)

    def survival_thresholds(self, horizon: int) -> tuple[float, float]:
        """(warn, fail) of the survival check at `horizon`: the entry of the largest key ≤ horizon."""

        def at(table: dict[int, float]) -> float:
            keys = [k for k in sorted(table) if k <= horizon] or [min(table)]
            return table[keys[-1]]

        return at(self.survival_warn), at(self.survival_fail)

    @model_validator(mode="after")
    def _thresholds_in_order(self) -> MonitoringConfig:
        pairs = [("psi", self.psi_warn, self.psi_fail), ("unseen", self.unseen_warn, self.unseen_fail),
                 ("prediction_psi", self.prediction_psi_warn, self.prediction_psi_fail),
                 ("coverage", self.coverage_warn, self.coverage_fail)]  # fmt: skip
        wrong = [f"{name}_fail ({fail}) < {name}_warn ({warn})" for name, warn, fail in pairs if fail < warn]
        if not self.survival_warn or not self.survival_fail:
            wrong.append("survival_warn and survival_fail need at least one horizon each")
        else:
            for h in sorted({*self.survival_warn, *self.survival_fail}):
                warn, fail = self.survival_thresholds(h)
                if fail < warn:
                    wrong.append(f"survival_fail ({fail}) < survival_warn ({warn}) from horizon {h}")
        if wrong:
            raise ValueError("a fail threshold below its warn threshold: " + "; ".join(wrong))
        return self


RULE_OPS = ("==", "!=", "<", "<=", ">", ">=", "in", "not_in", "is_null", "not_null")
NAME_PATTERN = r"^[a-z][a-z0-9_]{0,39}$"  # campaign and channel names: they become paths and labels


class AudienceRule(_Section):
    """One filter of a channel's audience over the month's score and feature columns: column op value."""

    column: str = Field(min_length=1)
    op: Literal[RULE_OPS] = "=="  # type: ignore[valid-type]
    value: str | int | float | bool | list[str | int | float | bool] | None = None

    @model_validator(mode="after")
    def _value_fits_op(self) -> AudienceRule:
        listed = isinstance(self.value, list)
        if self.op in ("in", "not_in") and not listed:
            raise ValueError(f"op {self.op!r} takes a list of values")
        if self.op in ("is_null", "not_null") and self.value is not None:
            raise ValueError(f"op {self.op!r} takes no value")
        if self.op not in ("in", "not_in", "is_null", "not_null") and (listed or self.value is None):
            raise ValueError(f"op {self.op!r} takes one value")
        return self


class ChannelConfig(_Section):
    """A contact channel of a campaign: who it may reach, whom it reaches first, how many, at what cost."""

    name: str = Field(pattern=NAME_PATTERN)
    audience: list[AudienceRule] = Field(default_factory=list)  # all must hold
    ranking_key: str = VALUE_AT_RISK  # a numeric score or feature column, or value_at_risk
    top_share: confloat(gt=0, le=1) | None = None  # of the channel's eligible audience, by ranking key
    capacity: int | None = Field(default=None, ge=1, le=1_000_000_000)  # treated subscribers at most
    control_share: confloat(gt=0, lt=1) = 0.1
    contact_cost: confloat(ge=0) = 0.0  # per treated subscriber, in the operator's currency


class CampaignConfig(_Section):
    """A retention campaign: channels in priority order and the design's statistics (docs/campaigns.md)."""

    description: str = ""
    channels: conlist(ChannelConfig, min_length=1)
    outcome_months: int = Field(default=2, ge=1, le=24)  # N of Retention_N; history month H = M − N
    retention_model: str = "active"  # Retention_N = in this survival model's base (its fact flag) at M + N
    freeze_days: int = Field(default=90, ge=0, le=3650)  # no contact on any channel this long before
    alpha: confloat(gt=0, lt=0.5) = 0.05
    power: confloat(gt=0.5, lt=1) = 0.8
    aa_splits: int = Field(default=1000, ge=1000, le=100_000)
    aa_rows: int = Field(default=200_000, ge=1000, le=10_000_000)  # hash-chosen subscribers the A/A uses
    balance_alpha: confloat(gt=0, lt=0.5) = 0.01  # a covariate's balance this far in its re-split tail
    strata_column: str | None = "segment"  # strata = value-at-risk decile × this column
    consent_column: str | None = "marketing_consent"  # 1/true = may be contacted
    consent_waived: bool = False  # no consent column: contact everyone (a deliberate choice)
    batch_days: int = Field(default=10, ge=1, le=366)  # daily lists, each with the same value distribution
    value_bins: int = Field(default=300, ge=1, le=100_000)  # bins of the ranking key the days share evenly

    @model_validator(mode="after")
    def _channels(self) -> CampaignConfig:
        names = [c.name for c in self.channels]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"channels listed twice (overlapping channels): {twice}")
        if self.consent_column is None and not self.consent_waived:
            raise ValueError("consent_column is not set: name it, or set consent_waived: true")
        for c in self.channels:
            if c.top_share is None and c.capacity is None:
                raise ValueError(f"channel {c.name!r}: set top_share and/or capacity")
        return self


class CltvTermConfig(_Section):
    """How a regressor's monthly amount enters CLTV: sign × unit cost × amount, reported as `component`."""

    component: str = Field(min_length=1)
    sign: Literal[1, -1]
    unit_cost: confloat(ge=0) | str = 1.0  # a number, or the name of a numeric `costs` key


class NaiveConfig(_Section):
    """The naive baseline: `last_value` (a feature column with the last observed monthly amount, kept
    where the `where` columns equal the given values) × the carrier's base rate; null: the mean target by
    horizon × tenure band."""

    last_value: str | None = None
    where: dict[str, str] | None = None
    scale: confloat(gt=0) = 1.0  # last_value's unit → the fact's (0.001: a feature in MB, a fact in GB)


class ModelProfile(_Section):
    """One model: what it predicts (fact, kind), what it reads, how it enters CLTV, how CatBoost builds it."""

    model_id: str | None = None  # defaults to its key under `profiles`
    kind: Literal["classification", "regression"]
    fact: str = Field(min_length=1)  # facts-table column: 0/1 flag (classification) or monthly amount
    feature_cols: conlist(str, min_length=1)
    stacked: list[str] = Field(default_factory=list)  # survival models read as features p_<id>
    carrier: str | None = None  # regression: survival model whose curve carries it past the horizon
    inside: str | None = None  # classification: this base lies inside that one's (its curve never above)
    cltv: CltvTermConfig | None = None  # regression: sign and unit cost in CLTV
    naive: NaiveConfig = Field(default_factory=NaiveConfig)
    fact_min: float | None = None  # facts below are implausible; forecasts are floored here
    params: dict[str, Any] = Field(default_factory=dict)
    fit_params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("params")
    @classmethod
    def _catboost_basics(cls, params: dict[str, Any]) -> dict[str, Any]:
        """What CatBoost would only reject deep inside `train`, rejected here with the key's name."""
        checks = {
            "iterations": (lambda v: v >= 1, "an integer >= 1"),
            "depth": (lambda v: 1 <= v <= 16, "in 1..16"),
            "learning_rate": (lambda v: v > 0, "> 0"),
        }
        for key, (ok, expected) in checks.items():
            value = params.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not ok(value):
                raise ValueError(f"{key} must be {expected}, got {value!r}")
        return params


class HomeInternetConfig(_Section):
    """Which lines are home internet: a features column and its values (the party feature
    party_household_home_internet; e.g. segment in [fmc, fttb])."""

    column: str = Field(min_length=1)
    values: list[str] = Field(min_length=1)


class ModelsConfig(_Section):
    enabled: list[str] = Field(default_factory=list)
    categorical: list[str] = Field(default_factory=list)
    tenure_column: str | None = "tenure_months"  # tenure in months: naive baselines' bands, cohorts
    home_internet: HomeInternetConfig | None = None  # party features: which lines are home internet
    profiles: dict[str, ModelProfile] = Field(default_factory=dict)

    @field_validator("profiles", mode="before")
    @classmethod
    def _ids_from_keys(cls, profiles: Any) -> Any:
        if isinstance(profiles, dict):
            return {
                k: ({"model_id": k, **v} if isinstance(v, dict) and "model_id" not in v else v)
                for k, v in profiles.items()
            }
        return profiles

    @model_validator(mode="after")
    def _consistent(self) -> ModelsConfig:
        """Every problem of the model declarations at once."""
        problems = []
        for key, profile in self.profiles.items():
            if profile.model_id != key:
                problems.append(f"profiles.{key}: model_id is {profile.model_id!r}, expected {key!r}")
        missing = [m for m in self.enabled if m not in self.profiles]
        if missing:
            problems.append(f"enabled models without a profile: {missing}")
        if len(set(self.enabled)) != len(self.enabled):
            problems.append(f"enabled lists a model twice: {self.enabled}")
        survival = {
            m for m in self.enabled if m in self.profiles and self.profiles[m].kind == "classification"
        }
        for m in self.enabled:
            p = self.profiles.get(m)
            if p is None:
                continue
            where = f"profiles.{m}"
            for s in p.stacked:
                if s not in survival:
                    problems.append(f"{where}.stacked: {s!r} is not an enabled classification model")
            if PARTY_HOME_INTERNET in p.feature_cols and self.home_internet is None:
                problems.append(
                    f"{where}.feature_cols: {PARTY_HOME_INTERNET} needs models.home_internet (the features "
                    "column and values that mark a home-internet line)"
                )
            derived = [c for c in p.feature_cols if c.startswith(STACKED_PREFIX) and c[2:] in self.profiles]
            if derived:
                problems.append(
                    f"{where}.feature_cols: {derived} are stacked predictions; list the models "
                    "under `stacked` instead"
                )
            if p.kind == "regression":
                if p.carrier not in survival:
                    problems.append(f"{where}.carrier: {p.carrier!r} is not an enabled classification model")
                if p.cltv is None:
                    problems.append(f"{where}.cltv: a regression model needs its sign and unit cost in CLTV")
                if p.inside is not None:
                    problems.append(f"{where}.inside: only classification models have a base")
            else:
                if p.carrier is not None or p.cltv is not None:
                    problems.append(f"{where}: carrier and cltv are for regression models")
                if p.inside is not None and p.inside not in survival - {m}:
                    problems.append(
                        f"{where}.inside: {p.inside!r} is not another enabled classification model"
                    )
        components = [
            self.profiles[m].cltv.component
            for m in self.enabled
            if m in self.profiles and self.profiles[m].cltv is not None
        ]
        if len(set(components)) != len(components):
            problems.append(f"cltv components must be unique, got {components}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def enabled_profiles(self) -> list[ModelProfile]:
        """Survival models first, because the regressors take their predictions as features."""
        return [self.profiles[m] for m in self.catalog().ids]

    def catalog(self) -> ModelCatalog:
        """The enabled models as the runtime catalog (spark_app.catalog)."""
        entries = []
        for m in self.enabled:
            p = self.profiles[m]
            entries.append(
                ModelEntry(
                    model_id=m,
                    kind=p.kind,
                    fact=p.fact,
                    feature_cols=tuple(p.feature_cols),
                    stacked=tuple(p.stacked),
                    carrier=p.carrier,
                    inside=p.inside,
                    value=None if p.cltv is None else ValueTerm(p.cltv.component, float(p.cltv.sign),
                                                                p.cltv.unit_cost),
                    naive=NaiveSpec(
                        p.naive.last_value, tuple(sorted((p.naive.where or {}).items())), p.naive.scale
                    ),
                    fact_min=p.fact_min,
                    params=dict(p.params),
                    fit_params=dict(p.fit_params),
                )
            )  # fmt: skip
        home = None if self.home_internet is None else (self.home_internet.column,
                                                         tuple(self.home_internet.values))  # fmt: skip
        return ModelCatalog(tuple(entries), tuple(self.categorical), self.tenure_column, home)


class Settings(BaseSettings):
    """The whole resolved configuration; `CLTV_SECTION__KEY` env vars override YAML."""

    model_config = SettingsConfigDict(
        extra="forbid", frozen=True, env_prefix=ENV_PREFIX, env_nested_delimiter=ENV_NESTING
    )

    paths: PathsConfig = Field(default_factory=PathsConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    costs: CostsConfig = Field(default_factory=CostsConfig)
    spark: SparkConfig = Field(default_factory=SparkConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    promotion: PromotionConfig = Field(default_factory=PromotionConfig)
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    campaigns: dict[str, CampaignConfig] = Field(default_factory=dict)

    @field_validator("campaigns")
    @classmethod
    def _campaign_names(cls, campaigns: dict[str, CampaignConfig]) -> dict[str, CampaignConfig]:
        bad = [n for n in campaigns if not re.fullmatch(NAME_PATTERN, n)]
        if bad:
            raise ValueError(f"campaign names must match {NAME_PATTERN} (they become paths): {bad}")
        return campaigns

    @model_validator(mode="after")
    def _cross_sections(self) -> Settings:
        """Keys that name models or cost keys must name real ones; every problem at once."""
        problems = []
        catalog = self.models.catalog()
        survival = {e.model_id for e in catalog.survival}
        if catalog.ids and self.costs.overhead_base not in survival:
            problems.append(
                f"costs.overhead_base: {self.costs.overhead_base!r} is not an enabled classification model "
                f"({sorted(survival)})"
            )
        numeric_costs = [k for k, v in self.costs.model_dump().items() if isinstance(v, int | float)]
        for entry in catalog.amounts:
            cost = entry.value.unit_cost if entry.value else 1.0
            if isinstance(cost, str) and cost not in numeric_costs:
                problems.append(
                    f"models.profiles.{entry.model_id}.cltv.unit_cost: {cost!r} is neither a number nor a "
                    f"costs key ({numeric_costs})"
                )
        for name, campaign in self.campaigns.items():
            if catalog.ids and campaign.retention_model not in survival:
                problems.append(
                    f"campaigns.{name}.retention_model: {campaign.retention_model!r} is not an enabled "
                    f"classification model ({sorted(survival)})"
                )
        if self.dataset.population != "base" and self.dataset.population not in survival:
            problems.append(
                f"dataset.population: {self.dataset.population!r} is neither base nor an enabled "
                f"classification model ({sorted(survival)})"
            )
        known = set(self.models.profiles)
        unknown = sorted(set(self.promotion.tolerance) - known)
        if unknown:
            problems.append(f"promotion.tolerance: unknown model ids {unknown} (known: {sorted(known)})")
        for key, metric in self.promotion.main_metric.items():
            if key not in {"classification", "regression", *known}:
                problems.append(f"promotion.main_metric.{key}: not a model id nor classification/regression")
            if metric not in METRICS:
                problems.append(
                    f"promotion.main_metric.{key}: unknown metric {metric!r} (known: {sorted(METRICS)})"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # load_settings merges CLTV_* variables itself as the last layer, so that an error can say
        # which variable set a bad value; the process environment is read there, once.
        return (init_settings,)

    def resolved(self) -> dict[str, Any]:
        """The whole configuration as JSON-like data, credentials in URIs masked: what `config show`
        prints and what releases and MLflow runs record."""
        return redact_obj(self.model_dump(mode="json"))

    def config_hash(self) -> str:
        import hashlib

        return hashlib.sha256(json.dumps(self.resolved(), sort_keys=True).encode()).hexdigest()[:16]


def packaged_conf() -> Traversable:
    """The defaults shipped inside the package (spark_app/conf, a link to conf/ in the source tree): readable
    from a source tree, a wheel and a zip on --py-files alike."""
    return resources.files("spark_app").joinpath("conf")


def default_conf_file() -> Traversable:
    """The embedded environment file (`conf/local.yaml`) for commands given no --conf."""
    return packaged_conf().joinpath("local.yaml")


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader (no Python tags) that refuses a key twice in one mapping: PyYAML keeps the
    last and drops the first without a word (`mlflow:` twice loses a whole section)."""

    source = "config"

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` merges; later keys win by design
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, dict | list):
                raise ConfigError(f"{self.source}: line {line}: a mapping or list used as a key")
            if key in seen:
                raise ConfigError(
                    f"{self.source}: key {key!r} appears twice in one mapping (lines {seen[key]} and {line});"
                    " YAML would silently drop the first — merge the two"
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, source: str) -> Any:
    """`text` as data: safe tags only, no duplicate keys, aliases expanded within MAX_CONFIG_VALUES values
    and MAX_CONFIG_DEPTH levels (a self-referencing alias is an error, not a RecursionError)."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source}: {len(text):,} characters; a config holds at most {MAX_CONFIG_BYTES:,}")
    loader = _StrictLoader(text)
    loader.source = source
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    finally:
        loader.dispose()
    return _unshared(data, source, [MAX_CONFIG_VALUES], ())


def _read_text(path: Traversable | Path) -> str:
    """A config file's text: a regular file (never a FIFO or a device, which would block or never end) of
    at most MAX_CONFIG_BYTES. Opened without blocking and checked on the open descriptor."""
    if not isinstance(path, Path):  # packaged defaults inside the wheel or zip
        return path.read_text()
    if path.is_dir():
        raise ConfigError(f"config file {path} is a directory; pass a YAML file such as {path}/local.yaml")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except PermissionError:
        raise ConfigError(f"config file {path}: permission denied") from None
    with os.fdopen(fd, "rb") as stream:
        info = os.fstat(stream.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"config file {path} is not a regular file (a pipe, a device?): pass a file")
        if info.st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"config file {path}: {info.st_size:,} bytes; a config holds at most "
                              f"{MAX_CONFIG_BYTES:,}")  # fmt: skip
        raw = stream.read(MAX_CONFIG_BYTES + 1)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text file ({exc.reason})") from None


def read_config_file(path: Traversable | Path) -> dict[str, Any]:
    data = parse_yaml(_read_text(path), str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return data


def _unshared(node: Any, source: str, budget: list[int], path: tuple[int, ...]) -> Any:
    """YAML aliases (`*features`) load as one shared object; copy them, so that overriding one model's
    value in a later layer does not change every model that shared it — within the limits of
    `parse_yaml` (`budget` counts the values left; `path` the containers being copied, for cycles)."""
    budget[0] -= 1
    if budget[0] < 0:
        raise ConfigError(
            f"{source}: more than {MAX_CONFIG_VALUES:,} values once YAML aliases are expanded "
            "(aliases of aliases multiply: an alias bomb?)"
        )
    if not isinstance(node, dict | list):
        return node
    if id(node) in path:
        raise ConfigError(f"{source}: a YAML alias refers to itself (a recursive structure)")
    if len(path) >= MAX_CONFIG_DEPTH:
        raise ConfigError(f"{source}: nested deeper than {MAX_CONFIG_DEPTH} levels")
    inner = (*path, id(node))
    if isinstance(node, dict):
        return {k: _unshared(v, source, budget, inner) for k, v in node.items()}
    return [_unshared(v, source, budget, inner) for v in node]


def base_layers(conf_path: Path | None) -> list[Traversable | Path]:
    """base.yaml and models.yaml: each from beside the environment file when it is there, else packaged."""
    layers: list[Traversable | Path] = []
    for name in BASE_FILES:
        beside = conf_path.parent / name if conf_path is not None else None
        layers.append(beside if beside is not None and beside.is_file() else packaged_conf().joinpath(name))
    return layers


def _merge(
    into: dict[str, Any], layer: dict[str, Any], origin: dict[str, str], source: str, prefix: tuple = ()
) -> None:
    """Deep-merge `layer` into `into`, remembering which file set every leaf key (spark.conf is replaced
    whole: its keys are Spark's, not ours)."""
    for key, value in layer.items():
        path = (*prefix, str(key))
        if isinstance(value, dict) and key != "conf":
            if not isinstance(into.get(key), dict):
                into[key] = {}
            _merge(into[key], value, origin, source, path)
        else:
            into[key] = value
            origin[".".join(path)] = source


def _env_layer(environ: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """CLTV_PATHS__FEATURES=x → {"paths": {"features": x}}; values are parsed as YAML scalars/lists."""
    layer: dict[str, Any] = {}
    names: dict[str, str] = {}
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        keys = [k.lower() for k in name[len(ENV_PREFIX) :].split(ENV_NESTING)]
        if keys[0] not in Settings.model_fields:
            raise ConfigError(
                f"{name}: unknown config section {keys[0]!r}{did_you_mean(keys[0], Settings.model_fields)} "
                f"(known: {sorted(Settings.model_fields)})"
            )
        try:
            value = parse_yaml(raw, f"env {name}") if raw.strip() else raw
        except ConfigError as exc:
            if "not valid YAML" not in str(exc):
                raise
            value = raw  # not YAML: the string itself
        node = layer
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
        names[".".join(keys)] = f"env {name}"
    return layer, names


def _origin_of(loc: tuple, origin: dict[str, str]) -> str:
    """The file or variable that set the key at `loc`; for a section-level problem, every one that set a
    key inside it."""
    for i in range(len(loc), 0, -1):
        key = ".".join(str(p) for p in loc[:i])
        if key in origin:
            return origin[key]
        inside = sorted({src for k, src in origin.items() if k.startswith(key + ".")})
        if inside:
            return ", ".join(inside)
    return "defaults"


def load_settings(
    conf_file: str | Path | Traversable | None = None,
    *,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Resolve base.yaml and models.yaml, then `conf_file`, then CLTV_* env vars (later wins).

    The base layers come from beside `conf_file` when it has them, else from the packaged defaults, so
    an environment file works from any directory. `overrides` is a last YAML-shaped layer (`cltv demo`).
    """
    return load_settings_with_origin(conf_file, overrides=overrides, environ=environ)[0]


def load_settings_with_origin(
    conf_file: str | Path | Traversable | None = None,
    *,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> tuple[Settings, dict[str, str]]:
    """`load_settings`, and which layer (file path, `env CLTV_…`, overrides) set each key it set: what
    `config show --origin` prints (a key no layer set has its default)."""
    if conf_file is None:
        env_file: Traversable | Path = default_conf_file()
        conf_path = None
    elif isinstance(conf_file, str | Path):
        env_file = conf_path = Path(conf_file)
    else:
        env_file, conf_path = conf_file, None
    environ = dict(os.environ if environ is None else environ)
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    layers = base_layers(conf_path)
    if conf_path is None or conf_path.name not in BASE_FILES:
        layers.append(env_file)
    for layer in layers:
        _merge(merged, read_config_file(layer), origin, str(layer))
    log.debug("config layers: %s", ", ".join(str(layer) for layer in layers))
    if overrides:
        _merge(merged, overrides, origin, "command-line overrides")
    env_layer, env_names = _env_layer(environ)
    _merge(merged, env_layer, origin, "env")
    origin.update(env_names)
    try:
        settings = Settings(**merged)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = err["loc"]
            key = ".".join(str(p) for p in loc)
            hint = ""
            if err["type"] == "extra_forbidden":
                hint = did_you_mean(str(loc[-1]), _fields_at(loc[:-1]), ".".join(str(p) for p in loc[:-1]))
            problems.append(f"  {key}: {err['msg']} (from {_origin_of(loc, origin)}){hint}")
        raise ConfigError("invalid configuration:\n" + "\n".join(problems)) from None
    for secret in secret_values(settings.model_dump(mode="json")):
        register_secret(secret)  # masked in every log line from now on
    log.info("config: %s", " <- ".join([*(str(layer) for layer in layers), *sorted(env_names.values())]))
    return settings, origin


# ------------------------------------------------------------------ `config show`: suggestions, origins
def did_you_mean(word: str, choices: typing.Iterable[str], prefix: str = "") -> str:
    """`; did you mean 'dataset.sample_rate'?` for a mistyped key (difflib), else ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    if not close:
        return ""
    return f"; did you mean {(prefix + '.' if prefix else '') + close[0]!r}?"


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation (`X`, `X | None`, `dict[str, X]`, `list[X]`)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _unwrapped(annotation: Any) -> Any:
    """`Annotated[list[X], …]` (conlist) → `list[X]`."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _fields_at(loc: tuple) -> list[str]:
    """The keys valid at `loc` (('dataset',) → DatasetConfig's fields, ('models', 'profiles', 'paid') →
    ModelProfile's); [] where any key is valid (a dict of names, spark.conf)."""
    model: type[BaseModel] | None = Settings
    keyed = False  # the next part is a dict key or a list index, not a field
    for part in loc:
        if keyed:
            keyed = False
            continue
        field = model.model_fields.get(str(part)) if model is not None else None
        if field is None:
            return []
        annotation = _unwrapped(field.annotation)
        model = _model_of(annotation)
        keyed = typing.get_origin(annotation) in (dict, list)
    return [] if keyed or model is None else list(model.model_fields)


def config_keys(data: Any, prefix: str = "") -> list[str]:
    """Every dotted key of a resolved configuration, sections included (what `--key` accepts)."""
    keys: list[str] = []
    if isinstance(data, dict):
        for key, value in data.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            keys.append(path)
            if path == "spark.conf":
                keys += [f"{path}.{k}" for k in value]
            else:
                keys += config_keys(value, path)
    return keys


def config_value(settings: Settings, key: str) -> Any:
    """The resolved (masked) value at dotted `key`; an unknown key is a ConfigError with a suggestion."""
    data = settings.resolved()
    conf = data["spark"]["conf"]
    if key.startswith("spark.conf.") and key.removeprefix("spark.conf.") in conf:
        return conf[key.removeprefix("spark.conf.")]  # Spark's own keys contain dots
    node: Any = data
    for part in key.split("."):
        match = [k for k in node if str(k) == part] if isinstance(node, dict) else []
        if not match:
            raise ConfigError(f"config: no key {key!r}{did_you_mean(key, config_keys(data))}")
        node = node[match[0]]
    return node


def _flatten(data: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) of every leaf; lists and spark.conf's entries are leaves."""
    if isinstance(data, dict) and data and prefix != "spark.conf":
        out: list[tuple[str, Any]] = []
        for key, value in data.items():
            out += _flatten(value, f"{prefix}.{key}" if prefix else str(key))
        return out
    if isinstance(data, dict) and data:  # spark.conf: its keys are Spark's and contain dots
        return [(f"{prefix}.{key}", value) for key, value in data.items()]
    return [(prefix, data)]


def origin_of_key(key: str, origin: dict[str, str]) -> str:
    """The layer that set `key` (or the nearest enclosing key a layer set whole), else 'default'."""
    parts = key.split(".")
    for i in range(len(parts), 0, -1):
        found = origin.get(".".join(parts[:i]))
        if found is not None:
            return found
    return "default"


def origin_lines(settings: Settings, origin: dict[str, str], key: str | None = None) -> list[str]:
    """`key  value  layer` per leaf (values masked, lists on one line), aligned; under `key` when given."""
    rows = [
        (k, _inline(v), origin_of_key(k, origin))
        for k, v in _flatten(settings.resolved())
        if key is None or k == key or k.startswith(key + ".")
    ]
    if not rows:
        config_value(settings, key or "")  # raises with a suggestion
    width = max(len(k) for k, _, _ in rows)
    value_width = min(max(len(v) for _, v, _ in rows), 60)
    return [f"{k:<{width}}  {v:<{value_width}}  {src}" for k, v, src in rows]


def _inline(value: Any) -> str:
    """A value as one line of YAML flow style (`[1, 2, 3]`, `0.05`, `null`)."""
    text = yaml.dump(value, Dumper=_CompactDumper, default_flow_style=True, width=1 << 20)
    return text.strip().removesuffix("...").strip()


class _CompactDumper(yaml.SafeDumper):
    """Block style for mappings, but every list of scalars on one line (`horizons: [1, 2, …, 24]`)."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(not isinstance(v, dict | list) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_CompactDumper.add_representer(list, _represent_list)
_CompactDumper.add_representer(tuple, _represent_list)


def to_yaml(data: Any) -> str:
    """YAML as `config show` prints it: key order kept, lists of scalars compact."""
    return yaml.dump(data, Dumper=_CompactDumper, sort_keys=False, width=1 << 20, allow_unicode=True)


def dump_yaml(settings: Settings) -> str:
    """The resolved configuration (secrets masked) as YAML, lists of scalars one line each."""
    return to_yaml(settings.resolved())
