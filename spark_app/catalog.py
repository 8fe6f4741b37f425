"""What each model is, declared once: the catalog every stage reads instead of naming models or columns.

Fed by `models.profiles` in conf/models.yaml (the declaration) and stored in every release's release.json,
so a release scores, explains and backtests with the facts it was trained with. A model is either a
survival classifier (the probability of being in a base at T+h; its curve carries amounts and overheads
past the forecast horizon) or an amount regressor (a daily-unit expectation of a fact column, which enters
CLTV with a sign and a unit cost). Another operator's columns, or a ninth model, are edits of conf/ only.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

CLASSIFICATION = "classification"
REGRESSION = "regression"
STACKED_PREFIX = "p_"  # a survival model's prediction as a feature of the models that stack it
HORIZON = "horizon"
CALENDAR_MONTH = "target_calendar_month"
# month of year of the features' own month: a December full of seasonal top-ups forecasts a January
# differently from an ordinary month's features (the prepaid profile's peak)
FEATURE_CALENDAR_MONTH = "feature_calendar_month"
# computed by the project, not read from the features table
DERIVED_FEATURES = (HORIZON, CALENDAR_MONTH, FEATURE_CALENDAR_MONTH)
ID = "subscriber_id"  # the key of every table with a row per subscriber (spark_app.contract)
VALUE_AT_RISK = "value_at_risk"  # a score column (cltv.value_at_risk), the campaigns' default ranking key
INTERVAL_LEVELS = (0.5, 0.8, 0.9, 0.95)  # the interval levels every release stores (spark_app.intervals)
# computed from the parties table (paths.parties) and the features of the same month, for the models that
# list them (spark_app.parties.party_feature_rows): lines of the subscriber's person and household, whether
# the household has home internet (`models.home_internet`), the household's longest customer tenure
PARTY_PERSON_LINES = "party_person_lines"
PARTY_HOUSEHOLD_LINES = "party_household_lines"
PARTY_HOME_INTERNET = "party_household_home_internet"
PARTY_HOUSEHOLD_TENURE = "party_household_tenure"
PARTY_FEATURES = (PARTY_PERSON_LINES, PARTY_HOUSEHOLD_LINES, PARTY_HOME_INTERNET, PARTY_HOUSEHOLD_TENURE)
NULL_CATEGORY = "<null>"  # a missing categorical value, as CatBoost sees it and as drift counts it


# Evaluation metrics per kind (spark_app.evaluation computes them; promotion.main_metric names one).
# agg_bias = Σforecast / Σactual − 1: CLTV sums expectations, so this is shown before any other metric.
BIAS_METRICS = ("agg_bias", "agg_bias_se")  # the bias, and its sampling noise (standard error)
CLASSIFICATION_METRICS = (
    *BIAS_METRICS,
    "roc_auc",
    "gini",
    "brier",
    "decile_error",
    "mean_pred",
    "mean_actual",
)
REGRESSION_METRICS = (*BIAS_METRICS, "rmse", "gini", "spearman", "decile_error", "mae", "wape", "r2", "bias",
                      "mean_pred", "mean_actual")  # fmt: skip
METRICS = frozenset(CLASSIFICATION_METRICS + REGRESSION_METRICS)
HIGHER_IS_BETTER = frozenset({"roc_auc", "gini", "spearman", "r2"})
CLOSER_TO_ZERO_IS_BETTER = frozenset({"agg_bias", "bias"})


def stacked_feature(model_id: str) -> str:
    return f"{STACKED_PREFIX}{model_id}"


@dataclass(frozen=True)
class ValueTerm:
    """How a regressor's monthly amount enters CLTV: sign × unit cost × amount, reported as `component`."""

    component: str
    sign: float
    unit_cost: float | str = 1.0  # a number, or the name of a key of `costs` (resolved at scoring)


@dataclass(frozen=True)
class NaiveSpec:
    """The naive baseline a model must beat. `last_value`: the feature holding the last observed monthly
    amount (restricted to rows matching `where`), times the carrier's base rate; None: the mean daily
    target by horizon × tenure band (classification models always use their base rate)."""

    last_value: str | None = None
    where: tuple[tuple[str, str], ...] = ()
    scale: float = 1.0  # last_value's unit → the fact's unit (e.g. 0.001 for MB → GB)

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(c for c in (self.last_value, *(w for w, _ in self.where)) if c)


@dataclass(frozen=True)
class ModelEntry:
    model_id: str
    kind: str  # classification | regression
    fact: str  # column of the facts table: a 0/1 flag (classification) or a monthly amount
    feature_cols: tuple[str, ...]  # read from the features table, plus the derived horizon / calendar month
    stacked: tuple[str, ...] = ()  # survival models whose predictions this model reads as p_<id>
    carrier: str | None = None  # regression: the survival curve that carries the amount past the horizon
    inside: str | None = None  # classification: this base lies inside that one (paid inside active)
    value: ValueTerm | None = None  # regression: how the amount enters CLTV
    naive: NaiveSpec = field(default_factory=NaiveSpec)
    fact_min: float | None = None  # facts below this are implausible; forecasts are floored at it
    params: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)
    fit_params: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def is_survival(self) -> bool:
        return self.kind == CLASSIFICATION

    @property
    def features(self) -> tuple[str, ...]:
        """What CatBoost reads: the declared features, then the stacked survival predictions."""
        return (*self.feature_cols, *(stacked_feature(m) for m in self.stacked))

    @property
    def target(self) -> str:
        """The training set's column of this model's target (daily units for amounts, 0/1 for flags)."""
        return f"{self.model_id}_fact"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "fact": self.fact,
            "feature_cols": list(self.feature_cols),
            "stacked": list(self.stacked),
            "carrier": self.carrier,
            "inside": self.inside,
            "value": None if self.value is None else vars(self.value).copy(),
            "naive": {
                "last_value": self.naive.last_value,
                "where": dict(self.naive.where),
                "scale": self.naive.scale,
            },
            "fact_min": self.fact_min,
            "params": dict(self.params),
            "fit_params": dict(self.fit_params),
            "file": f"{self.model_id}.cbm",
        }

    @classmethod
    def from_json(cls, model_id: str, data: Mapping[str, Any]) -> ModelEntry:
        value = data.get("value")
        naive = data.get("naive") or {}
        return cls(
            model_id=model_id,
            kind=data["kind"],
            fact=data["fact"],
            feature_cols=tuple(data["feature_cols"]),
            stacked=tuple(data.get("stacked") or ()),
            carrier=data.get("carrier"),
            inside=data.get("inside"),
            value=None if value is None else ValueTerm(**value),
            naive=NaiveSpec(
                naive.get("last_value"),
                tuple(sorted((naive.get("where") or {}).items())),
                float(naive.get("scale", 1.0)),
            ),
            fact_min=data.get("fact_min"),
            params=dict(data.get("params") or {}),
            fit_params=dict(data.get("fit_params") or {}),
        )


@dataclass(frozen=True)
class ModelCatalog:
    """The enabled models, survival models first (the regressors read their predictions)."""

    entries: tuple[ModelEntry, ...]
    categorical: tuple[str, ...] = ()
    tenure_column: str | None = None
    # a line is home internet where this features column has one of these values (party features)
    home_internet: tuple[str, tuple[str, ...]] | None = None

    def __post_init__(self) -> None:
        ordered = sorted(self.entries, key=lambda e: not e.is_survival)  # stable: declared order kept
        object.__setattr__(self, "entries", tuple(ordered))

    def __iter__(self) -> Iterator[ModelEntry]:
        return iter(self.entries)

    def __contains__(self, model_id: object) -> bool:
        return any(e.model_id == model_id for e in self.entries)

    def __getitem__(self, model_id: str) -> ModelEntry:
        for entry in self.entries:
            if entry.model_id == model_id:
                return entry
        raise KeyError(model_id)

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(e.model_id for e in self.entries)

    @property
    def survival(self) -> tuple[ModelEntry, ...]:
        return tuple(e for e in self.entries if e.is_survival)

    @property
    def amounts(self) -> tuple[ModelEntry, ...]:
        return tuple(e for e in self.entries if not e.is_survival)

    def subset(self, model_ids: list[str] | tuple[str, ...]) -> ModelCatalog:
        keep = set(model_ids)
        return ModelCatalog(tuple(e for e in self.entries if e.model_id in keep), self.categorical,
                            self.tenure_column, self.home_internet)  # fmt: skip

    def cat_features(self, entry: ModelEntry) -> tuple[str, ...]:
        return tuple(c for c in entry.features if c in self.categorical)

    def layout(self, entry: ModelEntry) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(numeric, categorical) column order of the model's matrix; equal layouts share a Pool."""
        cats = self.cat_features(entry)
        return tuple(c for c in entry.features if c not in cats), cats

    def input_columns(self) -> list[str]:
        """Feature-table columns read: model inputs, naive-baseline sources, the tenure column, and what the
        party features are computed from (the home-internet column)."""
        computed = (*DERIVED_FEATURES, *PARTY_FEATURES)
        cols: dict[str, None] = {}
        for entry in self.entries:
            cols.update((c, None) for c in entry.feature_cols if c not in computed)
        for entry in self.entries:
            cols.update((c, None) for c in entry.naive.columns)
        if self.tenure_column:
            cols[self.tenure_column] = None
        if self.party_features() and self.home_internet:
            cols[self.home_internet[0]] = None
        return list(cols)

    def party_features(self) -> tuple[str, ...]:
        """The party features some model reads (a release with any needs the parties table to score)."""
        used = {c for e in self.entries for c in e.feature_cols}
        return tuple(c for c in PARTY_FEATURES if c in used)

    def input_categorical(self) -> list[str]:
        return [c for c in self.input_columns() if c in self.categorical]

    def column_users(self) -> dict[str, str]:
        """Feature column → which setting reads it, for error messages."""
        users: dict[str, str] = {}
        for entry in self.entries:
            for c in entry.feature_cols:
                users.setdefault(c, f"models.profiles.{entry.model_id}.feature_cols")
            for c in entry.naive.columns:
                users.setdefault(c, f"models.profiles.{entry.model_id}.naive")
        if self.tenure_column:
            users.setdefault(self.tenure_column, "models.tenure_column")
        return users

    def fact_users(self) -> dict[str, str]:
        return {e.fact: f"models.profiles.{e.model_id}.fact" for e in self.entries}

    def targets(self) -> dict[str, str]:
        """`<model_id>_fact` column of the training set → fact column it comes from."""
        return {e.target: e.fact for e in self.entries}

    def fact_floor(self, fact: str) -> float | None:
        return next((e.fact_min for e in self.entries if e.fact == fact), None)

    def flags(self) -> tuple[str, ...]:
        return tuple(e.fact for e in self.survival)

    def to_json(self) -> dict[str, Any]:
        return {
            "model_ids": list(self.ids),  # the order (release.json is written with sorted keys)
            "models": {e.model_id: e.to_json() for e in self.entries},
            "categorical": list(self.categorical),
            "tenure_column": self.tenure_column,
            "home_internet": None if self.home_internet is None else {
                "column": self.home_internet[0], "values": list(self.home_internet[1])
            },
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelCatalog:
        order = data.get("model_ids") or list(data["models"])
        return cls(
            tuple(ModelEntry.from_json(m, data["models"][m]) for m in order),
            tuple(data.get("categorical") or ()),
            data.get("tenure_column"),
            home_internet_of(data.get("home_internet")),
        )


def home_internet_of(rule: Mapping[str, Any] | None) -> tuple[str, tuple[str, ...]] | None:
    """{'column': 'segment', 'values': ['fmc', 'fttb']} → ('segment', ('fmc', 'fttb'))."""
    if not rule:
        return None
    return str(rule["column"]), tuple(str(v) for v in rule["values"])
