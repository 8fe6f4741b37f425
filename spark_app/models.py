"""One `Learner` fits and predicts any subset of models, from the catalog (spark_app.catalog).

The survival models run first; their raw probabilities become the `p_<id>` features of the regressors that
stack them, in training exactly as in scoring. Every output is then calibrated per horizon
(spark_app.calibration) and amounts are floored at the catalog's `fact_min`, so the scoring job, the
registered pyfunc, evaluation and the report see the same numbers. Features reach CatBoost as float32
columns and pandas Categoricals (`MatrixBuilder`); models sharing a layout share one Pool per call.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from catboost import CatBoost, CatBoostClassifier, CatBoostError, CatBoostRegressor, Pool

from spark_app import calibration
from spark_app.calibration import Calibration, CalibrationReport
from spark_app.catalog import (
    CALENDAR_MONTH,
    HORIZON,
    NULL_CATEGORY,
    ModelCatalog,
    ModelEntry,
    stacked_feature,
)
from spark_app.errors import UserError
from spark_app.progress import StepClock
from spark_app.seasonality import SeasonalIndex

if TYPE_CHECKING:  # the config (pydantic) stays off a scoring worker's imports
    from spark_app.config import Settings

log = logging.getLogger(__name__)

BUNDLE_FORMAT = 2
RELEASE_JSON = "release.json"
REFERENCE = "reference.parquet"


class ModelFitError(UserError):
    """A model cannot be fitted on the rows it was given; the message names the model, split and fix."""


class BundleError(UserError):
    """A release bundle is incomplete or inconsistent; the message names the file or model."""


@dataclass
class FitReport:
    """What a fit did, per model: rows, best iteration, seconds."""

    rows: int
    eval_rows: int
    best_iteration: int | None
    tree_count: int
    seconds: float


class MatrixBuilder:
    """The rows' feature columns converted once and handed to CatBoost per model layout.

    Numerics become float32 (what CatBoost reads); categoricals become pandas Categoricals (codes over the
    distinct values, a missing value as `<null>`): CatBoost hashes each distinct value once instead of
    one Python string per row — ten times faster than UTF-8 bytes in `FeaturesData`, the same predictions.
    Built from a pandas frame (training, evaluation, the pyfunc), or from columns already converted
    (scoring builds them from Arrow). A stacked prediction is added as one more column without copying
    the others; models with the same layout share one Pool.
    """

    def __init__(
        self,
        frame: pd.DataFrame | None = None,
        *,
        numeric: Mapping[str, np.ndarray] | None = None,
        categorical: Mapping[str, pd.Categorical] | None = None,
    ):
        self.frame = frame
        self._num: dict[str, np.ndarray] = dict(numeric or {})
        self._cat: dict[str, pd.Categorical] = dict(categorical or {})
        self._pools: dict[tuple, Pool] = {}

    @property
    def columns(self) -> set[str]:
        return {*(self.frame.columns if self.frame is not None else ()), *self._num, *self._cat}

    def __len__(self) -> int:
        if self.frame is not None:
            return len(self.frame)
        first = next(iter(self._num.values()), None)
        return len(first) if first is not None else len(next(iter(self._cat.values())))

    def numeric(self, col: str) -> np.ndarray:
        if col not in self._num:
            try:
                values = pd.to_numeric(self.frame[col], errors="raise")
            except (ValueError, TypeError) as exc:
                raise TypeError(f"feature column {col!r} is not numeric: {exc}") from None
            self._num[col] = values.to_numpy(dtype=np.float32, na_value=np.nan)
        return self._num[col]

    def categorical(self, col: str) -> pd.Categorical:
        if col not in self._cat:
            codes, uniques = pd.factorize(self.frame[col], use_na_sentinel=True)
            self._cat[col] = categories(codes, [str(u) for u in uniques])
        return self._cat[col]

    def matrix(self, layout: tuple[tuple[str, ...], tuple[str, ...]]) -> pd.DataFrame:
        """The layout's columns, in order, as one frame (numerics first, categoricals after)."""
        num_cols, cat_cols = layout
        columns: dict[str, Any] = {c: self.numeric(c) for c in num_cols}
        columns.update({c: self.categorical(c) for c in cat_cols})
        return pd.DataFrame(columns, copy=False)

    def pool(self, layout: tuple[tuple[str, ...], tuple[str, ...]], label: np.ndarray | None = None) -> Pool:
        if label is not None:
            return Pool(self.matrix(layout), label=label, cat_features=list(layout[1]))
        if layout not in self._pools:
            self._pools[layout] = Pool(self.matrix(layout), cat_features=list(layout[1]))
        return self._pools[layout]

    def add_column(self, name: str, values: np.ndarray) -> None:
        """A stacked feature (p_paid / p_active): replaces any column of that name in every cache."""
        self._num[name] = np.asarray(values, dtype=np.float32)
        self._pools = {k: v for k, v in self._pools.items() if name not in k[0]}


def categories(codes: np.ndarray, values: list[str]) -> pd.Categorical:
    """Codes over distinct values as the Categorical CatBoost reads; code −1 (missing) → `<null>`."""
    names = [*values, NULL_CATEGORY] if NULL_CATEGORY not in values else list(values)
    null = names.index(NULL_CATEGORY)
    return pd.Categorical.from_codes(np.where(codes < 0, null, codes), names)


def missing_columns(frame: pd.DataFrame | MatrixBuilder, entries: list[ModelEntry]) -> list[str]:
    stacked = {stacked_feature(m) for e in entries for m in e.stacked}
    need = {c for e in entries for c in e.features if c not in stacked}
    have = frame.columns if isinstance(frame, MatrixBuilder) else set(frame.columns)
    return sorted(need - set(have))


def horizon_and_month(frame: pd.DataFrame | MatrixBuilder) -> tuple[np.ndarray, np.ndarray | None]:
    """The calibration's keys of each row: its horizon and its target's calendar month."""
    if isinstance(frame, MatrixBuilder):
        months = frame.numeric(CALENDAR_MONTH).astype(np.int64) if CALENDAR_MONTH in frame.columns else None
        return frame.numeric(HORIZON).astype(np.int64), months
    months = frame[CALENDAR_MONTH].to_numpy(np.int64) if CALENDAR_MONTH in frame else None
    return frame[HORIZON].to_numpy(np.int64), months


def seen_calendar_months(frames: list[pd.DataFrame | None]) -> tuple[int, ...] | None:
    """The target calendar months of the training rows, or None when all twelve occur."""
    seen: set[int] = set()
    for frame in frames:
        if frame is not None and len(frame) and CALENDAR_MONTH in frame:
            seen |= {int(m) for m in pd.unique(frame[CALENDAR_MONTH].dropna())}
    return None if not seen or len(seen) >= 12 else tuple(sorted(seen))


def neutral_share(seen: tuple[int, ...]) -> float:
    """Rows fitted with an unknown calendar month: as if it were one more month among those seen."""
    return 1.0 / (len(seen) + 1)


def calendar_dropout(builder: MatrixBuilder, seen: tuple[int, ...], seed: int) -> np.ndarray:
    """The calendar month column with a random `neutral_share` of the rows unknown (NaN), so the trees
    learn what to forecast when the season is unknown: an average over the seasons seen."""
    months = builder.numeric(CALENDAR_MONTH)
    drop = np.random.default_rng(seed).random(len(months)) < neutral_share(seen)
    return np.where(drop, np.float32(np.nan), months)


def floored(entry: ModelEntry, raw: np.ndarray) -> np.ndarray:
    return raw if entry.fact_min is None else np.maximum(raw, entry.fact_min)


def log_link(entry: ModelEntry) -> bool:
    """Losses whose raw prediction is the log of the mean (CatBoost's predict returns exp of it)."""
    loss = str(entry.params.get("loss_function", "")).split(":")[0]
    return loss in ("Tweedie", "Poisson")


def rms_bias_by_group(pred: np.ndarray, actual: np.ndarray, group: np.ndarray) -> float:
    """sqrt(Σ_g n_g · (Σ pred_g / Σ actual_g − 1)² / Σ_g n_g) over the groups whose actual sum is not 0."""
    keys, inverse, counts = np.unique(group, return_inverse=True, return_counts=True)
    pred_sum = np.bincount(inverse, weights=pred, minlength=len(keys))
    actual_sum = np.bincount(inverse, weights=actual, minlength=len(keys))
    ok = actual_sum != 0
    if not ok.any():
        return float("nan")
    bias = pred_sum[ok] / actual_sum[ok] - 1
    return float(np.sqrt(np.average(bias**2, weights=counts[ok])))


class Learner:
    """Fits and predicts the catalog's models; `models` maps model id → fitted CatBoost model."""

    def __init__(self, catalog: ModelCatalog, thread_count: int = 2, random_seed: int = 42):
        self.catalog = catalog
        self.thread_count = thread_count
        self.random_seed = random_seed
        self.models: dict[str, CatBoost] = {}
        self.calibration: dict[str, Calibration] = {}
        # amount model id → the season of its target, from the facts history (spark_app.seasonality):
        # fitted on target / index, forecast × index
        self.seasons: dict[str, SeasonalIndex] = {}
        self.fit_reports: dict[str, FitReport] = {}
        self.calibration_reports: dict[str, CalibrationReport] = {}
        self.meta: dict[str, Any] = {}
        # target calendar months the training window had; None = all twelve (no neutralizing needed)
        self.calendar_seen: tuple[int, ...] | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_settings(cls, settings: Settings) -> Learner:
        """The enabled models of settings.models, with settings.training's threads and seed."""
        return cls(settings.models.catalog(), settings.training.thread_count, settings.training.random_seed)

    @property
    def entries(self) -> list[ModelEntry]:
        """The catalog's models that are fitted (or all of them before fitting), survival first."""
        return [e for e in self.catalog if not self.models or e.model_id in self.models]

    def _check_stacking(self) -> None:
        for entry in self.catalog:
            for base in entry.stacked:
                if base not in self.catalog:
                    raise BundleError(
                        f"model {entry.model_id} reads {stacked_feature(base)} but model {base!r} is not in "
                        "the release"
                    )

    def _new_model(self, entry: ModelEntry) -> CatBoost:
        params = {
            "random_seed": self.random_seed,
            **entry.params,
            "thread_count": self.thread_count,
            "allow_writing_files": False,
            "verbose": False,
        }
        cls = CatBoostClassifier if entry.is_survival else CatBoostRegressor
        return cls(**params)

    # ------------------------------------------------------------------ fit
    def fit(
        self, train_surv: pd.DataFrame, train_reg: pd.DataFrame, val: pd.DataFrame | None = None
    ) -> Learner:
        """Survival models on `train_surv`, regressors on `train_reg` with stacked survival predictions.

        train_reg is disjoint from train_surv, so the survival predictions it gets are out-of-sample —
        the same kind of input the regressors see at scoring time. `val` drives early stopping.
        """
        self._check_stacking()
        entries = list(self.catalog)
        for name, frame in (("train_surv", train_surv), ("train_reg", train_reg), ("val", val)):
            if frame is not None and len(frame):
                missing = missing_columns(frame, entries)
                if missing:
                    raise KeyError(f"{name}: columns {missing} missing (needed by the model profiles)")
        has_val = val is not None and len(val) > 0
        if not has_val:
            log.warning("no val rows: models train for their full iterations without early stopping")
        surv_m = MatrixBuilder(train_surv)
        reg_m = MatrixBuilder(train_reg)
        val_m = MatrixBuilder(val) if has_val else None
        self.calendar_seen = seen_calendar_months([train_surv, train_reg, val])
        if self.calendar_seen is not None:
            log.warning(
                "the training window's targets fall in %d calendar months only (%s): %.0f%% of the training "
                "rows are fitted with an unknown calendar month, and forecasts for the other months are "
                "scored with it unknown — the trees do not extrapolate a season they never saw",
                len(self.calendar_seen), list(self.calendar_seen), 100 * neutral_share(self.calendar_seen),
            )  # fmt: skip
            for builder in (surv_m, reg_m):
                masked = calendar_dropout(builder, self.calendar_seen, self.random_seed)
                builder.add_column(CALENDAR_MONTH, masked)
        for entry in entries:
            train_m = surv_m if entry.is_survival else reg_m
            split = "train_surv" if entry.is_survival else "train_reg"
            if len(train_m.frame) == 0:
                raise ValueError(f"model {entry.model_id}: no training rows ({split})")
            layout = self.catalog.layout(entry)
            model = self._new_model(entry)
            label = self.deseasoned(entry, train_m.frame)
            if np.ptp(label) == 0:
                raise ModelFitError(
                    f"model {entry.model_id}: all {len(label):,} {split} targets equal {label[0]:g} "
                    f"({entry.fact} never varies in the training window); CatBoost cannot fit a constant. "
                    "Disable the model (models.enabled) or train on more subscribers or target months."
                )
            pool = train_m.pool(layout, label=label)
            eval_pool = val_m.pool(layout, label=self.deseasoned(entry, val_m.frame)) if val_m else None
            fit_params = dict(entry.fit_params)
            if eval_pool is None:
                fit_params.pop("early_stopping_rounds", None)
            started = time.perf_counter()
            model.fit(pool, eval_set=eval_pool, **fit_params)
            seconds = time.perf_counter() - started
            best = model.get_best_iteration() if eval_pool is not None else None
            self.models[entry.model_id] = model
            report = FitReport(
                rows=len(train_m.frame),
                eval_rows=len(val_m.frame) if val_m else 0,
                best_iteration=best,
                tree_count=int(model.tree_count_),
                seconds=seconds,
            )
            self.fit_reports[entry.model_id] = report
            log.info(
                "model %s: %s rows (%s), %s eval rows, best iteration %s of %d trees, %.1fs",
                entry.model_id, f"{report.rows:,}", split, f"{report.eval_rows:,}", best,
                report.tree_count, seconds,
            )  # fmt: skip
            if entry.is_survival:
                for builder in (reg_m, val_m):
                    if builder is not None and len(builder):
                        raw = self._raw(entry, self._pool(entry, builder))
                        builder.add_column(stacked_feature(entry.model_id), raw)
        return self

    def deseasoned(self, entry: ModelEntry, frame: pd.DataFrame) -> np.ndarray:
        """The target a model is fitted on: an amount divided by its target calendar month's index."""
        label = frame[entry.target].to_numpy(np.float64)
        season = self.seasons.get(entry.model_id)
        return label if season is None else label / season.apply(frame[CALENDAR_MONTH].to_numpy())

    def season_of(self, entry: ModelEntry, months: np.ndarray | None, rows: int) -> np.ndarray | None:
        season = self.seasons.get(entry.model_id)
        if season is None or entry.is_survival:
            return None
        return season.apply(months if months is not None else np.zeros(rows))

    # ------------------------------------------------------------------ calibrate
    def calibrate(
        self, val: pd.DataFrame, test: pd.DataFrame | None = None, test_clusters: np.ndarray | None = None
    ) -> dict[str, CalibrationReport]:
        """Per-horizon calibration from `val` (see spark_app.calibration); a survival recalibration is kept
        only where it lowers the Brier score on `test` (or on `val` when there is no test split); an amount
        calibration only as far as it lowers the test bias by more than that bias's own sampling noise
        (`evaluation.agg_bias_se`, by `test_clusters` — households — when given): on a small base the test
        rows cannot tell a calibration from noise, and the model's own estimate is kept."""
        from spark_app.evaluation import agg_bias_se  # training only: scipy.stats stays off the workers

        self.calibration = {}
        if not len(val):
            log.warning("no val rows: the release is not calibrated")
            return {}
        raw_val = self.predict(val, calibrated=False)
        check = test if test is not None and len(test) else val
        raw_check = self.predict(check, calibrated=False) if check is not val else raw_val
        h_val, m_val = horizon_and_month(val)
        h_check, m_check = horizon_and_month(check)
        reports: dict[str, CalibrationReport] = {}
        for entry in self.entries:
            m = entry.model_id
            y, y_check = val[entry.target].to_numpy(np.float64), check[entry.target].to_numpy(np.float64)
            if entry.is_survival:
                fitted = calibration.fit_logistic(y, raw_val[m], h_val)
                before = float(np.mean((raw_check[m] - y_check) ** 2))
                after = float(np.mean((fitted.apply(raw_check[m], h_check) - y_check) ** 2))
                kept = after < before
                if kept:
                    self.calibration[m] = fitted
                reports[m] = CalibrationReport(
                    len(y), "logistic", kept, "test Brier" if check is test else "val Brier",
                    {"brier": before}, {"brier": after},
                )  # fmt: skip
            else:
                fitted = calibration.fit_amount_scale(y, floored(entry, raw_val[m]), h_val, m_val)
                raw = floored(entry, raw_check[m])
                total = y_check.sum()

                def bias_of(pred: np.ndarray, total: float = total) -> float:
                    return float(pred.sum() / total - 1) if total else float("nan")

                # fitted on val; kept only as far as it lowers the test bias (a small base's val is noise)
                candidates: dict[str, Calibration | None] = {
                    "horizon x calendar month": fitted,
                    "horizon": calibration.AmountScale(fitted.factors, fitted.overall),
                    "overall": calibration.AmountScale({}, fitted.overall),
                    "none": None,
                }
                if check is val:
                    candidates = {"horizon x calendar month": fitted}
                predicted = {
                    name: raw if cal is None else cal.apply(raw, h_check, m_check)
                    for name, cal in candidates.items()
                }
                # judged per target calendar month (rms): an OOT month is one calendar month, so a factor
                # that fixes January but not the pooled sum counts, one that trades months does not
                monthly = {n: rms_bias_by_group(pred, y_check, m_check) for n, pred in predicted.items()}
                biases = {name: bias_of(pred) for name, pred in predicted.items()}
                best = min(monthly, key=lambda k: monthly[k] if np.isfinite(monthly[k]) else np.inf)
                noise = agg_bias_se(y_check, raw, test_clusters) if check is not val else 0.0
                if "none" in monthly and best != "none" and not monthly["none"] - monthly[best] > noise:
                    best = "none"  # not better than the test can tell: the model's own estimate stays
                chosen = candidates[best]
                if chosen is not None:
                    self.calibration[m] = chosen
                full = "horizon x calendar month"
                reports[m] = CalibrationReport(
                    len(y), "scale", chosen is not None,
                    f"kept: {best} (test bias per target month, rms: without "
                    f"{monthly.get('none', float('nan')):.2%}, with the full calibration "
                    f"{monthly[full]:.2%}, kept {monthly[best]:.2%}); overall factor {fitted.overall:.3f}",
                    {"agg_bias": bias_of(raw), "monthly_rms_bias": monthly.get("none", float("nan"))},
                    {"agg_bias": biases[best], "monthly_rms_bias": monthly[best]},
                )  # fmt: skip
                log.info(
                    "calibration %s: fitted on %s val rows; on the test rows its bias per target month "
                    "(rms) is %s without it and %s with it (the test's noise ± %s), so %s (pooled test bias "
                    "%s)", m, f"{len(y):,}", f"{monthly.get('none', float('nan')):.2%}",
                    f"{monthly[full]:.2%}", f"{noise:.2%}",
                    "it is kept whole" if best == full
                    else "it is dropped" if best == "none"
                    else f"only its {best} factor is kept ({monthly[best]:.2%})",
                    f"{biases[best]:+.2%}",
                )  # fmt: skip
            if entry.is_survival:
                r = reports[m]
                log.info(
                    "calibration %s: per-horizon logistic recalibration %s (%s %.5f → %.5f)", m,
                    "kept" if r.kept else "dropped: it does not lower", r.note, r.before["brier"],
                    r.after["brier"],
                )  # fmt: skip
        self.calibration_reports = reports
        return reports

    # ------------------------------------------------------------------ predict
    def _pool(self, entry: ModelEntry, builder: MatrixBuilder) -> Pool | None:
        return builder.pool(self.catalog.layout(entry)) if len(builder) else None

    def _raw(self, entry: ModelEntry, pool: Pool | None) -> np.ndarray:
        """The model's own output: P(class 1), or the regressor's mean: the raw value for RMSE/Huber,
        exp(raw) for log-link losses such as Tweedie. No pool: no rows."""
        model = self.models[entry.model_id]
        if pool is None:
            return np.zeros(0, dtype=np.float64)
        if entry.is_survival:
            return model.predict(pool, prediction_type="Probability", thread_count=self.thread_count)[:, 1]
        # explicit: a model loaded from a .cbm does not know its loss, and would return log values
        kind = "Exponent" if log_link(entry) else "RawFormulaVal"
        return np.asarray(
            model.predict(pool, prediction_type=kind, thread_count=self.thread_count), np.float64
        )

    def finish(
        self, entry: ModelEntry, raw: np.ndarray, horizons: np.ndarray, months: np.ndarray | None
    ) -> np.ndarray:
        """Raw output → what the release forecasts: floored at fact_min, calibrated for the horizon (and
        the target's calendar month)."""
        out = floored(entry, raw)
        cal = self.calibration.get(entry.model_id)
        return cal.apply(out, horizons, months) if cal is not None else out

    def predict(
        self,
        frame: pd.DataFrame | MatrixBuilder,
        calibrated: bool = True,
        seconds: Counter | None = None,
    ) -> dict[str, np.ndarray]:
        """model id → prediction per row: probability of being in the base, or the DAILY-unit amount.

        `frame` holds the input feature columns, `horizon` and `target_calendar_month`; the stacked
        `p_<id>` features are added from the survival models' raw outputs before the regressors run.
        """
        if not self.models:
            raise BundleError("learner has no fitted models")
        entries = self.entries
        missing = missing_columns(frame, entries)
        if missing:
            raise KeyError(f"predict: columns {missing} missing from the frame")
        builder = frame if isinstance(frame, MatrixBuilder) else MatrixBuilder(frame)
        # the keys before unseen calendar months are neutralized: the season and the calibration know them
        horizons, months = (
            horizon_and_month(builder)
            if (calibrated and self.calibration) or self.seasons
            else (np.zeros(0), None)
        )
        self.neutralize_calendar(builder)
        out: dict[str, np.ndarray] = {}
        clock = StepClock(seconds)
        for entry in entries:
            pool = self._pool(entry, builder)
            clock.lap("pool")
            raw = self._raw(entry, pool)
            clock.lap("catboost predict")
            if entry.is_survival:
                builder.add_column(stacked_feature(entry.model_id), raw)
            season = self.season_of(entry, months, len(raw))
            if season is not None:
                raw = raw * season
            out[entry.model_id] = self.finish(entry, raw, horizons, months) if calibrated else raw
            clock.lap("calibration")
        return out

    def neutralize_calendar(self, builder: MatrixBuilder) -> None:
        """Target calendar months the training window never had become unknown (NaN), as a share of the
        training rows were: a season the trees never saw is not extrapolated from the ones they did."""
        if self.calendar_seen is None or CALENDAR_MONTH not in builder.columns:
            return
        months = builder.numeric(CALENDAR_MONTH)
        unseen = ~np.isin(months, np.asarray(self.calendar_seen, dtype=np.float32)) & ~np.isnan(months)
        if unseen.any():
            builder.add_column(CALENDAR_MONTH, np.where(unseen, np.float32(np.nan), months))

    def shap_values(self, frame: pd.DataFrame) -> dict[str, tuple[list[str], np.ndarray]]:
        """Per model: feature names and SHAP values (rows × features) of what the release forecasts.

        CatBoost explains the raw output (log-odds for survival, the amount or its log for log-link
        losses); the per-horizon calibration is linear there — a slope in log-odds, a factor on the
        amount, a shift of the log — so each row's values are scaled by that map at its horizon. Stacked
        features are filled exactly as `predict` fills them.
        """
        builder = MatrixBuilder(frame)
        horizons, months = horizon_and_month(frame)
        self.neutralize_calendar(builder)
        out: dict[str, tuple[list[str], np.ndarray]] = {}
        for entry in self.entries:
            layout = self.catalog.layout(entry)
            model = self.models[entry.model_id]
            shap = model.get_feature_importance(builder.pool(layout), type="ShapValues")[:, :-1]
            cal = self.calibration.get(entry.model_id)
            if cal is not None and not log_link(entry):
                shap = shap * cal.shap_scale(horizons, months)[:, None]
            season = self.season_of(entry, months, len(shap))
            if season is not None and not log_link(entry):
                shap = shap * season[:, None]
            out[entry.model_id] = ([*layout[0], *layout[1]], shap)
            if entry.is_survival:
                raw = self._raw(entry, self._pool(entry, builder))
                builder.add_column(stacked_feature(entry.model_id), raw)
        return out

    # ------------------------------------------------------------------ bundle
    def manifest(self) -> dict[str, Any]:
        """release.json: the catalog, the calibration and whatever the trainer put in `meta`."""
        catalog = self.catalog.subset(list(self.models)) if self.models else self.catalog
        return {
            **self.meta,
            "format": BUNDLE_FORMAT,
            **catalog.to_json(),
            "calibration": {m: c.to_json() for m, c in self.calibration.items()},
            "seasons": {m: s.to_json() for m, s in self.seasons.items()},
            "thread_count": self.thread_count,
            "calendar_months_seen": None if self.calendar_seen is None else list(self.calendar_seen),
        }

    def save_bundle(self, directory: str | Path, reference: pd.DataFrame | None = None) -> Path:
        """Write release.json + <model_id>.cbm (+ reference.parquet) into `directory`."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        for model_id, model in self.models.items():
            model.save_model(str(out / f"{model_id}.cbm"), format="cbm")
        if reference is not None:
            reference.to_parquet(out / REFERENCE, index=False)
        (out / RELEASE_JSON).write_text(json.dumps(self.manifest(), indent=2, sort_keys=True, default=str))
        return out

    @classmethod
    def from_bundle(cls, directory: str | Path) -> Learner:
        root = Path(directory)
        if not (root / RELEASE_JSON).exists():
            raise BundleError(f"{root}: no {RELEASE_JSON}")
        files = {p.name: p.read_bytes() for p in root.iterdir() if p.is_file() and p.name != REFERENCE}
        return cls.from_bundle_bytes(files)

    @classmethod
    def from_bundle_bytes(cls, files: Mapping[str, bytes], thread_count: int | None = None) -> Learner:
        """Rebuild from the bundle's bytes (release.json + .cbm files), without touching disk or MLflow."""
        if RELEASE_JSON not in files:
            raise BundleError(f"bundle has no {RELEASE_JSON} (files: {sorted(files)})")
        manifest = json.loads(files[RELEASE_JSON])
        if manifest.get("format") != BUNDLE_FORMAT:
            raise BundleError(
                f"{RELEASE_JSON}: format {manifest.get('format')!r}, expected {BUNDLE_FORMAT} "
                "(a release from an older version: train a new one)"
            )
        learner = cls(ModelCatalog.from_json(manifest), thread_count or int(manifest.get("thread_count", 2)))
        skip = (
            "format",
            "model_ids",
            "models",
            "categorical",
            "tenure_column",
            "calibration",
            "thread_count",
            "calendar_months_seen",
            "seasons",
        )
        learner.meta = {k: v for k, v in manifest.items() if k not in skip}
        learner.calibration = {
            m: calibration.from_json(c) for m, c in (manifest.get("calibration") or {}).items()
        }
        learner.seasons = {
            m: SeasonalIndex.from_json(v) for m, v in (manifest.get("seasons") or {}).items()
        }
        seen = manifest.get("calendar_months_seen")
        learner.calendar_seen = None if seen is None else tuple(int(m) for m in seen)
        for entry in learner.catalog:
            name = manifest["models"][entry.model_id]["file"]
            if name not in files:
                raise BundleError(f"bundle: model {entry.model_id} file {name} missing")
            try:
                model = load_cbm(bytes(files[name]), entry.is_survival)
            except CatBoostError as exc:
                first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
                raise BundleError(f"bundle: model {entry.model_id} file {name} is not a readable CatBoost "
                                  f"model ({first})") from None  # fmt: skip
            learner.models[entry.model_id] = model
        learner._check_stacking()
        return learner


def load_cbm(blob: bytes, survival: bool) -> CatBoostClassifier | CatBoostRegressor:
    """CatBoost's loader crashes the whole process (SIGSEGV) on a .cbm whose declared core size runs
    past the end of the file (random bytes behind the magic do that about once in a few hundred), so
    the frame is checked first and such a file raises CatBoostError like any other unreadable one."""
    if len(blob) < 8 or blob[:4] != b"CBM1":
        raise CatBoostError("no CBM1 header")
    core = int.from_bytes(blob[4:8], "little")
    if core > len(blob) - 8:
        raise CatBoostError(f"declared model core of {core} bytes, the file has {len(blob) - 8}")
    model = CatBoostClassifier() if survival else CatBoostRegressor()
    model.load_model(blob=blob, format="cbm")
    return model


def read_reference(files: Mapping[str, bytes]) -> pd.DataFrame | None:
    blob = files.get(REFERENCE)
    return pd.read_parquet(io.BytesIO(blob)) if blob else None
