"""Typed configuration: YAML layers (base.yaml, models.yaml ← environment file ← CLTV_* env vars).

The CLI builds one `Settings` and hands the relevant section to each function; nothing else reads files
or environment variables for configuration.
"""

from __future__ import annotations

import json
import logging
import os
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
    conlist,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

try:
    from importlib.resources.abc import Traversable
except ImportError:  # Python 3.10
    from importlib.abc import Traversable

log = logging.getLogger(__name__)

ENV_PREFIX = "CLTV_"
ENV_NESTING = "__"
BASE_FILES = ("base.yaml", "models.yaml")

SURVIVAL_MODELS = ("paid", "active")
AMOUNT_MODELS = ("sm_mobile", "sm_fmc", "sm_fttb", "data_gb", "voice_min", "sac")
ALL_MODELS = SURVIVAL_MODELS + AMOUNT_MODELS
ModelId = Literal["paid", "active", "sm_mobile", "sm_fmc", "sm_fttb", "data_gb", "voice_min", "sac"]


class ConfigError(ValueError):
    """A configuration file or override is wrong; the message names the key and where it came from."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PathsConfig(_Section):
    """Hadoop-compatible URIs or local paths (relative ones resolve against the working directory)."""

    features: str = "work/panel/features"
    facts: str = "work/panel/facts"
    datasets: str = "work/datasets"
    scores: str = "work/scores"
    monitoring: str = "work/monitoring"
    # inputs_ready.py (issue #6): `cltv wait-for-inputs` checks hdfs:// inputs over WebHDFS, without a JVM
    webhdfs_url: str | None = None  # e.g. http://namenode:9870; None = hdfs:// inputs cannot be checked
    webhdfs_user: str | None = None  # user name for simple auth (ignored with kerberos)
    kerberos: bool = False  # SPNEGO via the ticket cache (kinit from the keytab Secret first)


class MlflowConfig(_Section):
    tracking_uri: str = "sqlite:///work/mlflow.db"
    registry_uri: str | None = None
    experiment: str = "cltv"
    monitoring_experiment: str = "cltv-monitoring"
    model_name: str = "cltv"
    artifact_location: str | None = "work/mlartifacts"


class DatasetConfig(_Section):
    target_months: PositiveInt = 13
    horizons: conlist(PositiveInt, min_length=1) = Field(default_factory=lambda: list(range(1, 25)))
    sample_rate: confloat(gt=0, le=1) = 1.0
    salt: str = "cltv"
    population: Literal["base", "active", "paid"] = "base"
    val_share: confloat(ge=0, lt=1) = 0.1
    test_share: confloat(ge=0, lt=1) = 0.1
    train_reg_share: confloat(gt=0, lt=1) = 0.5
    # dataset.py (issue #3): check duplicate keys on every row of the window, not only the rows read
    validate_all_rows: bool = False

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
    overhead_base: Literal["paid", "active"] = "paid"
    annual_discount_rate: confloat(ge=0, lt=1) = 0.1


class SparkConfig(_Section):
    master: str | None = "local[*]"
    app_name: str = "cltv"
    driver_memory: str = "6g"
    shuffle_partitions: PositiveInt = 8
    conf: dict[str, str | int | float | bool] = Field(default_factory=dict)


class TrainingConfig(_Section):
    max_rows_per_model: PositiveInt = 400_000
    thread_count: PositiveInt = 2
    oof_folds: int = Field(default=3, ge=2)
    random_seed: int = 42
    # training.py / evaluation.py (issue #4)
    tenure_bands: list[int] = Field(default_factory=lambda: [0, 3, 6, 12, 24, 48])  # naive-baseline bands
    calibration_bins: int = Field(default=10, ge=2)  # equal-width probability bins of calibration tables


class PromotionConfig(_Section):
    """Relative worsening allowed per model on its main metric before a challenger is refused."""

    # per kind, or per model id (wins over its kind): sac is zero-inflated, WAPE/MAE reward forecasting 0
    main_metric: dict[str, str] = Field(
        default_factory=lambda: {"classification": "roc_auc", "regression": "wape", "sac": "rmse"}
    )
    tolerance: dict[str, confloat(ge=0)] = Field(default_factory=lambda: dict.fromkeys(ALL_MODELS, 0.01))


class ScoringConfig(_Section):
    holdout_share: confloat(ge=0, lt=1) = 0.05
    holdout_salt: str = "cltv-holdout"
    arrow_batch_rows: PositiveInt = 20_000
    extrapolation_months: PositiveInt = 60
    # scoring.py / cltv.py (issue #5): bounds on the year-over-year trend of per-survivor amounts
    # carried into the extrapolated months (docs/scoring.md)
    trend_floor: confloat(gt=0, le=1) = 0.8
    trend_cap: confloat(ge=1) = 1.25


class MonitoringConfig(_Section):
    psi_warn: confloat(gt=0) = 0.1
    psi_fail: confloat(gt=0) = 0.25
    unseen_warn: confloat(ge=0, le=1) = 0.01
    unseen_fail: confloat(ge=0, le=1) = 0.05
    reference_rows: PositiveInt = 50_000
    # monitoring.py / report.py (issue #7)
    psi_bins: int = Field(default=10, ge=2)  # quantile bins of the reference per numeric feature
    prediction_psi_warn: confloat(gt=0) = 0.1  # CLTV / survival distribution vs the previous month
    prediction_psi_fail: confloat(gt=0) = 0.25
    prediction_columns: list[str] = Field(default_factory=list)  # empty = every numeric score column
    backtest_max_horizon: int = Field(default=24, ge=1)  # score months T-1..T-k are backtested against T
    backtest_dimensions: list[str] = Field(default_factory=lambda: ["segment", "region"])
    tenure_column: str | None = "tenure_months"  # None = no tenure cohorts
    tenure_cohorts: list[int] = Field(default_factory=lambda: [0, 6, 12, 24, 48])  # cohort lower edges
    metric_horizons: list[int] = Field(default_factory=lambda: [1, 3, 6, 12, 24])  # logged to MLflow
    report_shap_rows: PositiveInt = 2_000  # subscribers whose SHAP values the report explains
    report_shap_horizon: PositiveInt = 12  # horizon at which the report explains the models


class ModelProfile(_Section):
    """One CatBoost model: what it predicts and how it is built."""

    model_id: ModelId
    kind: Literal["classification", "regression"]
    feature_cols: conlist(str, min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)
    fit_params: dict[str, Any] = Field(default_factory=dict)


class ModelsConfig(_Section):
    enabled: list[ModelId] = Field(default_factory=lambda: list(ALL_MODELS))
    categorical: list[str] = Field(default_factory=list)
    profiles: dict[str, ModelProfile] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> ModelsConfig:
        for key, profile in self.profiles.items():
            if key != profile.model_id:
                raise ValueError(f"profiles.{key}: model_id is {profile.model_id!r}, expected {key!r}")
        missing = [m for m in self.enabled if m not in self.profiles]
        if missing:
            raise ValueError(f"enabled models without a profile: {missing}")
        needs_survival = any(m in AMOUNT_MODELS for m in self.enabled)
        if needs_survival and not all(m in self.enabled for m in SURVIVAL_MODELS):
            raise ValueError("the amount models are stacked on 'paid' and 'active': enable both")
        return self

    def enabled_profiles(self) -> list[ModelProfile]:
        """Survival models first, because the regressors take their predictions as features."""
        return [self.profiles[m] for m in ALL_MODELS if m in self.enabled]

    def cat_features(self, profile: ModelProfile) -> list[str]:
        return [c for c in profile.feature_cols if c in self.categorical]

    def input_feature_cols(self) -> list[str]:
        """Feature-table columns any enabled model reads (no derived columns)."""
        derived = set(DERIVED_FEATURES)
        cols: dict[str, None] = {}
        for p in self.enabled_profiles():
            cols.update((c, None) for c in p.feature_cols if c not in derived)
        return list(cols)


# Features computed by the project itself rather than read from the features table.
DERIVED_FEATURES = ("horizon", "target_calendar_month", "p_paid", "p_active")


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
        return self.model_dump(mode="json")

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


def _read_yaml(path: Traversable | Path) -> dict[str, Any]:
    if isinstance(path, Path) and path.is_dir():
        raise ConfigError(f"config file {path} is a directory; pass a YAML file such as {path}/local.yaml")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text file ({exc.reason})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return data


def base_layers(conf_path: Path | None) -> list[Traversable | Path]:
    """base.yaml and models.yaml: each from beside the environment file when it is there, else packaged."""
    layers: list[Traversable | Path] = []
    for name in BASE_FILES:
        beside = conf_path.parent / name if conf_path is not None else None
        layers.append(beside if beside is not None and beside.is_file() else packaged_conf().joinpath(name))
    return layers


def _merge(into: dict[str, Any], layer: dict[str, Any], origin: dict[str, str], source: str, prefix=()):
    """Deep-merge `layer` into `into`, remembering which file set every leaf key."""
    for key, value in layer.items():
        path = (*prefix, str(key))
        if isinstance(value, dict) and isinstance(into.get(key), dict) and key != "conf":
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
                f"{name}: unknown config section {keys[0]!r} (known: {sorted(Settings.model_fields)})"
            )
        try:
            value = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError:
            value = raw
        node = layer
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
        names[".".join(keys)] = f"env {name}"
    return layer, names


def _origin_of(loc: tuple, origin: dict[str, str]) -> str:
    for i in range(len(loc), 0, -1):
        key = ".".join(str(p) for p in loc[:i])
        if key in origin:
            return origin[key]
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
        _merge(merged, _read_yaml(layer), origin, str(layer))
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
            problems.append(f"  {key}: {err['msg']} (from {_origin_of(loc, origin)})")
        raise ConfigError("invalid configuration:\n" + "\n".join(problems)) from None
    log.info("config: %s", " <- ".join([*(str(layer) for layer in layers), *sorted(env_names.values())]))
    return settings


def dump_yaml(settings: Settings) -> str:
    return yaml.safe_dump(settings.resolved(), sort_keys=False)
