"""One `Learner` fits and predicts any subset of the eight CatBoost models, from their profiles.

The survival models (`paid`, `active`) run first; their probabilities become the `p_paid` / `p_active`
features of the six regressors (stacking), in training exactly as in scoring. Features reach CatBoost
as `catboost.FeaturesData` (float32 numeric block + UTF-8 bytes categorical block), the fastest
documented way to build a Pool when most features are numeric: the numeric columns come first in every
model, the categorical ones after them, in the profile's order. Models sharing a feature list share
one Pool per `predict` call.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from catboost import CatBoost, CatBoostClassifier, CatBoostRegressor, FeaturesData, Pool

from spark_app.config import ALL_MODELS

log = logging.getLogger(__name__)

BUNDLE_FORMAT = 1
RELEASE_JSON = "release.json"
REFERENCE = "reference.parquet"
NULL_CATEGORY = "<null>"  # how a missing categorical value reaches CatBoost (report.py uses the same)
SURVIVAL_FEATURE = {"paid": "p_paid", "active": "p_active"}


class BundleError(ValueError):
    """A release bundle is incomplete or inconsistent; the message names the file or model."""


@dataclass(frozen=True)
class ModelSpec:
    """What one model reads and predicts: enough to rebuild its input matrix from a frame."""

    model_id: str
    kind: str  # classification | regression
    feature_cols: tuple[str, ...]
    cat_features: tuple[str, ...]
    params: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    fit_params: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def numeric_cols(self) -> tuple[str, ...]:
        return tuple(c for c in self.feature_cols if c not in self.cat_features)

    @property
    def layout(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(numeric, categorical) column order of the matrix; models with equal layouts share a Pool."""
        return self.numeric_cols, self.cat_features

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "feature_cols": list(self.feature_cols),
            "cat_features": list(self.cat_features),
            "file": f"{self.model_id}.cbm",
        }


@dataclass
class FitReport:
    """What a fit did, per model: rows, best iteration, seconds."""

    rows: int
    eval_rows: int
    best_iteration: int | None
    tree_count: int
    seconds: float


class MatrixBuilder:
    """Columns of one frame converted once (float32 / UTF-8 bytes) and stacked per model layout."""

    def __init__(self, frame: pd.DataFrame):
        self.frame = frame
        self._num: dict[str, np.ndarray] = {}
        self._cat: dict[str, np.ndarray] = {}
        self._pools: dict[tuple, Pool] = {}

    def numeric(self, col: str) -> np.ndarray:
        if col not in self._num:
            try:
                values = pd.to_numeric(self.frame[col], errors="raise")
            except (ValueError, TypeError) as exc:
                raise TypeError(f"feature column {col!r} is not numeric: {exc}") from None
            self._num[col] = values.to_numpy(dtype=np.float32, na_value=np.nan)
        return self._num[col]

    def categorical(self, col: str) -> np.ndarray:
        """Factorize, encode the few distinct values once, then take: no per-row Python work."""
        if col not in self._cat:
            values = self.frame[col]
            codes, uniques = pd.factorize(values, use_na_sentinel=True)
            encoded = np.array(
                [str(u).encode("utf-8") for u in uniques] + [NULL_CATEGORY.encode()], dtype=object
            )
            self._cat[col] = encoded[np.where(codes < 0, len(uniques), codes)]
        return self._cat[col]

    def features_data(self, layout: tuple[tuple[str, ...], tuple[str, ...]]) -> FeaturesData:
        num_cols, cat_cols = layout
        num = (
            np.column_stack([self.numeric(c) for c in num_cols]).astype(np.float32, copy=False)
            if num_cols
            else None
        )
        cat = np.column_stack([self.categorical(c) for c in cat_cols]) if cat_cols else None
        return FeaturesData(
            num_feature_data=num,
            cat_feature_data=cat,
            num_feature_names=list(num_cols) or None,
            cat_feature_names=list(cat_cols) or None,
        )

    def pool(self, layout: tuple[tuple[str, ...], tuple[str, ...]], label: np.ndarray | None = None) -> Pool:
        if label is not None:
            return Pool(self.features_data(layout), label=label)
        if layout not in self._pools:
            self._pools[layout] = Pool(self.features_data(layout))
        return self._pools[layout]

    def add_column(self, name: str, values: np.ndarray) -> None:
        """A stacked feature (p_paid / p_active): dropped from the caches so Pools are rebuilt with it."""
        self.frame = self.frame.assign(**{name: values})
        self._num.pop(name, None)
        self._pools = {k: v for k, v in self._pools.items() if name not in k[0]}


def missing_columns(frame: pd.DataFrame, specs: list[ModelSpec]) -> list[str]:
    derived = set(SURVIVAL_FEATURE.values())
    need = {c for s in specs for c in s.feature_cols if c not in derived}
    return sorted(need - set(frame.columns))


class Learner:
    """Fits and predicts the enabled subset of models; `models` maps model id → fitted CatBoost model."""

    def __init__(self, specs: list[ModelSpec], thread_count: int = 2, random_seed: int = 42):
        # canonical order (survival first: the regressors read their outputs), whatever the input order
        rank = {m: i for i, m in enumerate(ALL_MODELS)}
        self.specs: dict[str, ModelSpec] = {
            s.model_id: s
            for s in sorted(specs, key=lambda s: (s.kind != "classification", rank.get(s.model_id, 99)))
        }
        self.thread_count = thread_count
        self.random_seed = random_seed
        self.models: dict[str, CatBoost] = {}
        self.fit_reports: dict[str, FitReport] = {}
        self.meta: dict[str, Any] = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_settings(cls, settings: Any) -> Learner:
        """From settings.models (enabled profiles, categorical list) and settings.training (threads, seed)."""
        models_cfg = settings.models
        specs = [
            ModelSpec(
                model_id=p.model_id,
                kind=p.kind,
                feature_cols=tuple(p.feature_cols),
                cat_features=tuple(models_cfg.cat_features(p)),
                params=dict(p.params),
                fit_params=dict(p.fit_params),
            )
            for p in models_cfg.enabled_profiles()
        ]
        return cls(specs, settings.training.thread_count, settings.training.random_seed)

    def _check_stacking(self) -> None:
        for spec in self.specs.values():
            for base, col in SURVIVAL_FEATURE.items():
                if col in spec.feature_cols and base not in self.specs:
                    raise BundleError(
                        f"model {spec.model_id} reads {col} but model {base!r} is not in the release"
                    )

    def _new_model(self, spec: ModelSpec) -> CatBoost:
        params = {
            "random_seed": self.random_seed,
            **spec.params,
            "thread_count": self.thread_count,
            "allow_writing_files": False,
            "verbose": False,
        }
        cls = CatBoostClassifier if spec.kind == "classification" else CatBoostRegressor
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
        specs = list(self.specs.values())
        for name, frame in (("train_surv", train_surv), ("train_reg", train_reg), ("val", val)):
            if frame is not None and len(frame):
                missing = missing_columns(frame, specs)
                if missing:
                    raise KeyError(f"{name}: columns {missing} missing (needed by the model profiles)")
        has_val = val is not None and len(val) > 0
        if not has_val:
            log.warning("no val rows: models train for their full iterations without early stopping")
        surv_m = MatrixBuilder(train_surv)
        reg_m = MatrixBuilder(train_reg)
        val_m = MatrixBuilder(val) if has_val else None
        for spec in specs:
            is_surv = spec.kind == "classification"
            train_m = surv_m if is_surv else reg_m
            if len(train_m.frame) == 0:
                raise ValueError(
                    f"model {spec.model_id}: no training rows ({'train_surv' if is_surv else 'train_reg'})"
                )
            target = f"{spec.model_id}_fact"
            model = self._new_model(spec)
            pool = train_m.pool(spec.layout, label=train_m.frame[target].to_numpy(np.float64))
            eval_pool = (
                val_m.pool(spec.layout, label=val_m.frame[target].to_numpy(np.float64)) if val_m else None
            )
            fit_params = dict(spec.fit_params)
            if eval_pool is None:
                fit_params.pop("early_stopping_rounds", None)
            started = time.perf_counter()
            model.fit(pool, eval_set=eval_pool, **fit_params)
            seconds = time.perf_counter() - started
            best = model.get_best_iteration() if eval_pool is not None else None
            self.models[spec.model_id] = model
            self.fit_reports[spec.model_id] = FitReport(
                rows=len(train_m.frame),
                eval_rows=len(val_m.frame) if val_m else 0,
                best_iteration=best,
                tree_count=int(model.tree_count_),
                seconds=seconds,
            )
            log.info(
                "model %s: %s rows (%s), %s eval rows, best iteration %s of %d trees, %.1fs",
                spec.model_id,
                f"{len(train_m.frame):,}",
                "train_surv" if is_surv else "train_reg",
                f"{self.fit_reports[spec.model_id].eval_rows:,}",
                best,
                model.tree_count_,
                seconds,
            )
            if spec.model_id in SURVIVAL_FEATURE:
                col = SURVIVAL_FEATURE[spec.model_id]
                for builder in (reg_m, val_m):
                    if builder is not None and len(builder.frame):
                        builder.add_column(col, self._predict_one(spec, builder))
        return self

    # ------------------------------------------------------------------ predict
    def _predict_one(self, spec: ModelSpec, builder: MatrixBuilder) -> np.ndarray:
        model = self.models[spec.model_id]
        if len(builder.frame) == 0:
            return np.zeros(0, dtype=np.float64)
        pool = builder.pool(spec.layout)
        if spec.kind == "classification":
            return model.predict(pool, prediction_type="Probability", thread_count=self.thread_count)[:, 1]
        # the regressor's own default: the raw value for RMSE/Huber, exp(raw) for log-link losses (Tweedie)
        return np.asarray(model.predict(pool, thread_count=self.thread_count), dtype=np.float64)

    def predict(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """model id → prediction per row: probability of class 1, or the DAILY-unit amount forecast.

        `frame` holds the input feature columns, `horizon` and `target_calendar_month`; `p_paid` /
        `p_active` are added from the survival models before the regressors run.
        """
        if not self.models:
            raise BundleError("learner has no fitted models")
        specs = [s for s in self.specs.values() if s.model_id in self.models]
        missing = missing_columns(frame, specs)
        if missing:
            raise KeyError(f"predict: columns {missing} missing from the frame")
        builder = MatrixBuilder(frame)
        out: dict[str, np.ndarray] = {}
        for spec in specs:
            out[spec.model_id] = self._predict_one(spec, builder)
            if spec.model_id in SURVIVAL_FEATURE:
                builder.add_column(SURVIVAL_FEATURE[spec.model_id], out[spec.model_id])
        return out

    # ------------------------------------------------------------------ bundle
    def manifest(self) -> dict[str, Any]:
        """release.json: the models' layout plus whatever the trainer put in `meta`."""
        return {
            **self.meta,
            "format": BUNDLE_FORMAT,
            "models": {m: self.specs[m].to_json() for m in self.specs if m in self.models},
            "thread_count": self.thread_count,
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
            raise BundleError(f"{RELEASE_JSON}: format {manifest.get('format')!r}, expected {BUNDLE_FORMAT}")
        specs = [
            ModelSpec(m, e["kind"], tuple(e["feature_cols"]), tuple(e["cat_features"]))
            for m, e in manifest["models"].items()
        ]
        learner = cls(specs, thread_count or int(manifest.get("thread_count", 2)))
        learner.meta = {k: v for k, v in manifest.items() if k not in ("format", "models", "thread_count")}
        for spec in learner.specs.values():
            name = manifest["models"][spec.model_id]["file"]
            if name not in files:
                raise BundleError(f"bundle: model {spec.model_id} file {name} missing")
            model = CatBoostClassifier() if spec.kind == "classification" else CatBoostRegressor()
            model.load_model(blob=bytes(files[name]), format="cbm")
            learner.models[spec.model_id] = model
        learner._check_stacking()
        return learner


def read_reference(files: Mapping[str, bytes]) -> pd.DataFrame | None:
    blob = files.get(REFERENCE)
    return pd.read_parquet(io.BytesIO(blob)) if blob else None
