"""One scoring batch, as a Python worker runs it: Arrow in, Arrow out, every step on whole numpy arrays.

A batch of a month's subscribers arrives as an Arrow record batch (`mapInArrow`): each feature column is
converted once (numerics straight to float32 in Arrow, categoricals dictionary-encoded so each distinct
value is encoded once), repeated for the 24 horizons, and scored by the release's Learner (survival first,
stacked into the regressors, calibrated); the 24 monthly forecasts become CLTV in the same batch
(spark_app.cltv) and the output goes back as Arrow, the detail arrays as list columns over the forecast
matrix without a Python object per row. Along the way the batch counts what the job reports and checks
(rows, holdout, CLTV sum and histogram, missing / non-finite / unseen inputs), so the job needs no extra
pass over the month's outputs; null and duplicate ids are checked before it (`scoring.check_ids`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.accumulators import AccumulatorParam
from pyspark.sql import types as T

from spark_app.catalog import HORIZON, ID, NULL_CATEGORY
from spark_app.cltv import (
    SURVIVAL_POINTS,
    VALUE_AT_RISK,
    Extrapolation,
    ValueFormula,
    cltv_columns,
    value_at_risk,
)
from spark_app.horizons import horizon_columns
from spark_app.intervals import IntervalTable, cltv_bounds, cumulative_values
from spark_app.models import Learner, MatrixBuilder, categories
from spark_app.months import forecast_days, month_index
from spark_app.progress import StepClock

log = logging.getLogger(__name__)

HOLDOUT = "holdout"
RELEASE_DIGEST = "release_digest"  # every score row names the verified bytes that scored it
EPOCH = dt.date(1970, 1, 1)
# CLTV histogram for the job's quantiles: bins of t = sign(x)·log1p(|x|), 0.005 wide over ±15 (values
# up to ±3.3 million); a quantile read from it is within 0.5 % of the value
HIST_LOW, HIST_HIGH, HIST_BINS = -15.0, 15.0, 6000
VALUE_POINTS = (12, 24)  # cumulative value (undiscounted) reported with its interval at these months
VALUE_BOUNDS_H = ("value_cum_lower_h", "value_cum_upper_h")  # --detail: the bounds at every horizon


@dataclass(frozen=True)
class BatchPlan:
    """All a Python worker needs to score a batch; small and picklable (the bundle goes by broadcast)."""

    release_key: str  # version + digest of the bundle: workers are reused across jobs and releases
    release_version: int
    models: tuple[str, ...]  # model ids of the release, survival models first
    amounts: frozenset[str]  # the regressors among them (daily units → monthly)
    input_cols: tuple[str, ...]  # feature-table columns the models read
    categorical: tuple[str, ...]
    horizons: int
    score_month: dt.date
    formula: ValueFormula
    extrapolation: Extrapolation
    detail: bool
    seen: dict[str, frozenset[str]] = field(default_factory=dict)  # categorical values seen in training
    threads: int = 1  # CatBoost threads per Python worker: the cores of one Spark task
    intervals: IntervalTable | None = None  # None: a release without them (bounds NaN)
    interval_level: float = 0.8
    ranges: FeatureRanges | None = None  # numeric features' training ranges per horizon (None: not recorded)
    release_digest: str = ""  # SHA-256 of the release's files as registered and verified (registry)
    file_digests: dict[str, str] = field(default_factory=dict)  # what the worker checks its copy against

    @property
    def score_month_index(self) -> int:
        return month_index(self.score_month)

    @property
    def total_months(self) -> int:
        return max(self.extrapolation.months, self.horizons)


@dataclass(frozen=True)
class FeatureRanges:
    """Robust ranges of the numeric features in the release's training rows, per horizon: what the models
    saw. A subscriber beyond them at a horizon (tenure longer than any the model saw that far ahead) is
    scored by extrapolation; scoring counts those, per horizon and per feature."""

    columns: tuple[str, ...]
    low: np.ndarray  # (H, F)
    high: np.ndarray

    QUANTILES = (0.005, 0.995)

    @classmethod
    def fit(cls, frame: pd.DataFrame, columns: list[str], horizons: int) -> FeatureRanges:
        low = np.full((horizons, len(columns)), -np.inf)
        high = np.full((horizons, len(columns)), np.inf)
        h = frame[HORIZON].to_numpy(np.int64)
        for j, col in enumerate(columns):
            values = pd.to_numeric(frame[col], errors="coerce").to_numpy(np.float64)
            for k in range(horizons):
                x = values[(h == k + 1) & np.isfinite(values)]
                if len(x):
                    low[k, j], high[k, j] = np.quantile(x, cls.QUANTILES)
        return cls(tuple(columns), low, high)

    def to_json(self) -> dict[str, Any]:
        def clean(a: np.ndarray) -> list[list[float | None]]:
            return [[None if not np.isfinite(v) else float(v) for v in row] for row in a]

        return {"columns": list(self.columns), "quantiles": list(self.QUANTILES), "low": clean(self.low),
                "high": clean(self.high)}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> FeatureRanges | None:
        if not data:
            return None

        def arr(rows: list[list[float | None]], fill: float) -> np.ndarray:
            return np.array([[fill if v is None else v for v in row] for row in rows], dtype=np.float64)

        return cls(tuple(data["columns"]), arr(data["low"], -np.inf), arr(data["high"], np.inf))

    def count_outside(self, numeric: dict[str, np.ndarray], stats: BatchStats) -> None:
        cols = [c for c in self.columns if c in numeric]
        if not cols:
            return
        index = [self.columns.index(c) for c in cols]
        x = np.column_stack([numeric[c] for c in cols]).astype(np.float64)  # NaN compares False: not outside
        horizons = len(self.low)
        ever = np.zeros(x.shape, dtype=bool)
        counts = np.zeros(horizons, dtype=np.int64)
        for k in range(horizons):
            out = (x < self.low[k, index]) | (x > self.high[k, index])
            ever |= out
            counts[k] = int(out.any(axis=1).sum())
        before = stats.outside_by_horizon
        stats.outside_by_horizon = counts if not len(before) else before + counts
        for j, col in enumerate(cols):
            n = int(ever[:, j].sum())
            if n:
                stats.outside_by_feature[col] += n


def output_schema(plan: BatchPlan) -> T.StructType:
    """Columns of a month's scores, in order."""
    total = plan.total_months
    fields = [
        T.StructField(ID, T.StringType(), False),
        T.StructField("score_month", T.DateType(), False),
        T.StructField("release_version", T.IntegerType(), False),
        T.StructField(RELEASE_DIGEST, T.StringType(), False),
        T.StructField("cltv", T.DoubleType()),
        T.StructField(f"cltv_{min(24, total)}m", T.DoubleType()),
        *[T.StructField(name, T.DoubleType()) for name in interval_names(plan)],
        T.StructField(VALUE_AT_RISK, T.DoubleType()),
        *[T.StructField(f"{c}_{total}m", T.DoubleType()) for c in plan.formula.components],
        *[
            T.StructField(f"p_{base}_{p}m", T.DoubleType())
            for base in plan.formula.survival
            for p in SURVIVAL_POINTS
            if p <= total
        ],
    ]
    if plan.detail:
        fields += [T.StructField(f"{m}_h", T.ArrayType(T.DoubleType(), False)) for m in plan.models]
        fields += [T.StructField(name, T.ArrayType(T.DoubleType(), False)) for name in VALUE_BOUNDS_H]
    return T.StructType([*fields, T.StructField(HOLDOUT, T.BooleanType(), False)])


def interval_names(plan: BatchPlan) -> list[str]:
    """cltv_lower/upper, value_<k>m and its bounds, the level: columns of every scored row."""
    names = ["cltv_lower", "cltv_upper"]
    for k in VALUE_POINTS:
        if k <= plan.horizons:
            names += [f"value_{k}m", f"value_{k}m_lower", f"value_{k}m_upper"]
    return [*names, "interval_level"]


def interval_columns(
    forecasts: dict[str, np.ndarray], cltv: np.ndarray, plan: BatchPlan, segment: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Cumulative value at 12 / 24 months and CLTV with their intervals at the plan's level (the release's
    table, spark_app.intervals, by each row's `segment` when the table has segments); with detail also the
    bounds at every horizon, for the backtest."""
    value = cumulative_values(forecasts, plan.formula)
    n, horizons = value.shape
    table, level = plan.intervals, plan.interval_level

    def bounds(h: int) -> tuple[np.ndarray, np.ndarray]:
        if table is None:
            return np.full(n, np.nan), np.full(n, np.nan)
        return table.bounds(h, value[:, h - 1], level, segment)

    out: dict[str, np.ndarray] = {"interval_level": np.full(n, level if table else np.nan)}
    for k in (k for k in VALUE_POINTS if k <= horizons):
        lower, upper = bounds(k)
        out.update({f"value_{k}m": value[:, k - 1], f"value_{k}m_lower": lower, f"value_{k}m_upper": upper})
    last = min(24, horizons)
    out["cltv_lower"], out["cltv_upper"] = cltv_bounds(cltv, value[:, last - 1], *bounds(last))
    if plan.detail:
        every = [bounds(h) for h in range(1, horizons + 1)]
        out[VALUE_BOUNDS_H[0]] = np.column_stack([b[0] for b in every])
        out[VALUE_BOUNDS_H[1]] = np.column_stack([b[1] for b in every])
    return out


def arrow_type(data_type: T.DataType) -> pa.DataType:
    simple = {
        T.StringType: pa.string(),
        T.DateType: pa.date32(),
        T.IntegerType: pa.int32(),
        T.DoubleType: pa.float64(),
        T.BooleanType: pa.bool_(),
    }
    if isinstance(data_type, T.ArrayType):
        return pa.list_(arrow_type(data_type.elementType))
    return simple[type(data_type)]


# ---------------------------------------------------------------- what a batch counts
@dataclass
class BatchStats:
    """What the scoring pass learns about the month, summed over a task's batches."""

    rows: int = 0
    holdout: int = 0
    null_ids: int = 0
    missing: Counter = field(default_factory=Counter)
    non_finite: Counter = field(default_factory=Counter)
    unseen: Counter = field(default_factory=Counter)
    cltv_sum: float = 0.0
    cltv_histogram: np.ndarray = field(default_factory=lambda: np.zeros(HIST_BINS, dtype=np.int64))
    # subscribers with a numeric feature outside the release's training range, per horizon / per feature
    outside_by_horizon: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    outside_by_feature: Counter = field(default_factory=Counter)
    # where the workers' time goes: seconds per step, summed over tasks (docs/scoring.md)
    seconds: Counter = field(default_factory=Counter)

    def merge(self, other: BatchStats) -> BatchStats:
        if len(other.outside_by_horizon):
            self.outside_by_horizon = (
                other.outside_by_horizon.copy()
                if not len(self.outside_by_horizon)
                else self.outside_by_horizon + other.outside_by_horizon
            )
        self.outside_by_feature.update(other.outside_by_feature)
        self.seconds.update(other.seconds)
        self.rows += other.rows
        self.holdout += other.holdout
        self.null_ids += other.null_ids
        self.missing.update(other.missing)
        self.non_finite.update(other.non_finite)
        self.unseen.update(other.unseen)
        self.cltv_sum += other.cltv_sum
        self.cltv_histogram = self.cltv_histogram + other.cltv_histogram
        return self

    def add_cltv(self, cltv: np.ndarray) -> None:
        finite = cltv[np.isfinite(cltv)]
        self.cltv_sum += float(finite.sum())
        t = np.sign(finite) * np.log1p(np.abs(finite))
        index = np.clip(
            ((t - HIST_LOW) / (HIST_HIGH - HIST_LOW) * HIST_BINS).astype(np.int64), 0, HIST_BINS - 1
        )
        self.cltv_histogram += np.bincount(index, minlength=HIST_BINS)

    def quantiles(self, qs: tuple[float, ...]) -> dict[str, float]:
        """CLTV quantiles from the histogram (each within 0.5 % of the exact value)."""
        total = int(self.cltv_histogram.sum())
        if not total:
            return {}
        cumulative = np.cumsum(self.cltv_histogram)
        out = {}
        for q in qs:
            index = int(np.searchsorted(cumulative, q * total, side="left"))
            t = HIST_LOW + (index + 0.5) * (HIST_HIGH - HIST_LOW) / HIST_BINS
            out[f"p{round(q * 100):02d}"] = float(np.sign(t) * np.expm1(abs(t)))
        return out


class StatsAccumulator(AccumulatorParam):
    """Task results keyed by partition: a retried or speculative task replaces its partition's stats."""

    def zero(self, value: dict[int, BatchStats]) -> dict[int, BatchStats]:
        return {}

    def addInPlace(
        self, value1: dict[int, BatchStats], value2: dict[int, BatchStats]
    ) -> dict[int, BatchStats]:
        value1.update(value2)
        return value1


def merged(stats: dict[int, BatchStats]) -> BatchStats:
    total = BatchStats()
    for part in stats.values():
        total.merge(part)
    return total


# ---------------------------------------------------------------- Arrow → columns → scores
@dataclass
class Inputs:
    """One batch's subscribers as numpy columns: numerics float32 (missing and non-finite → NaN),
    categoricals as (codes, distinct values)."""

    ids: np.ndarray
    numeric: dict[str, np.ndarray]
    categorical: dict[str, tuple[np.ndarray, list[str]]]
    holdout: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


def inputs_from_arrow(batch: pa.RecordBatch, plan: BatchPlan, stats: BatchStats) -> Inputs:
    ids_col = batch.column(ID)
    stats.null_ids += ids_col.null_count
    ids = ids_col.to_numpy(zero_copy_only=False)
    numeric: dict[str, np.ndarray] = {}
    categorical: dict[str, tuple[np.ndarray, list[str]]] = {}
    for col in plan.input_cols:
        values = batch.column(col)
        if values.null_count:
            stats.missing[col] += values.null_count
        if col in plan.categorical:
            encoded = pc.cast(values, pa.string()).dictionary_encode()
            codes = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int32)
            distinct = [str(v) for v in encoded.dictionary.to_pylist()]
            seen = plan.seen.get(col)
            if seen is not None:
                unknown = [i for i, v in enumerate(distinct) if v not in seen]
                if unknown:
                    stats.unseen[col] += int(np.isin(codes, unknown).sum())
            categorical[col] = (codes, distinct)
        else:
            floats = pc.cast(values, pa.float32(), safe=False).to_numpy(zero_copy_only=False)
            floats = np.array(floats, dtype=np.float32)  # writable
            bad = ~np.isfinite(floats)
            n_bad = int(bad.sum()) - values.null_count  # nulls are NaN here too: counted as missing
            if n_bad:
                stats.non_finite[col] += n_bad
                floats[bad] = np.nan  # NaN, ±inf, beyond float32: scored as missing
            numeric[col] = floats
    holdout = batch.column(HOLDOUT).to_numpy(zero_copy_only=False).astype(bool)
    return Inputs(ids, numeric, categorical, holdout)


def inputs_from_pandas(features: pd.DataFrame, plan: BatchPlan, holdout: np.ndarray | None = None) -> Inputs:
    """The same from a pandas frame (tests, benchmarks, the profile of a batch)."""
    table = pa.Table.from_pandas(features.assign(**{HOLDOUT: holdout if holdout is not None else False}),
                                 preserve_index=False)  # fmt: skip
    batch = table.combine_chunks().to_batches()[0] if table.num_rows else None
    if batch is None:
        raise ValueError("no rows")
    return inputs_from_arrow(batch, plan, BatchStats())


def horizon_rows(inputs: Inputs, plan: BatchPlan) -> MatrixBuilder:
    """n subscribers → n×H rows (subscriber-major) with `horizon` and `target_calendar_month`: integer
    takes of the converted columns, never H copies of Python strings."""
    n, horizons = len(inputs), plan.horizons
    rows = np.repeat(np.arange(n), horizons)
    numeric = {c: v[rows] for c, v in inputs.numeric.items()}
    numeric.update(horizon_columns(n, plan.score_month_index, horizons))
    categorical = {c: categories(codes[rows], values) for c, (codes, values) in inputs.categorical.items()}
    return MatrixBuilder(numeric=numeric, categorical=categorical)


def monthly_forecasts(predictions: dict[str, np.ndarray], n: int, plan: BatchPlan) -> dict[str, np.ndarray]:
    """Learner output (n×H flat) → (n, H) per model; amounts from daily to monthly units."""
    days = forecast_days(plan.score_month_index, plan.horizons)[None, :]
    out = {}
    for model_id in plan.models:
        values = np.asarray(predictions[model_id], dtype=np.float64).reshape(n, plan.horizons)
        out[model_id] = values * days if model_id in plan.amounts else values
    return out


def interval_segments(inputs: Inputs, plan: BatchPlan) -> np.ndarray | None:
    """Each row's value of the interval table's segment column (a categorical input), or None."""
    column = plan.intervals.segment_column if plan.intervals is not None else None
    if column is None or column not in inputs.categorical:
        return None
    codes, values = inputs.categorical[column]
    labels = np.asarray([*values, NULL_CATEGORY], dtype=object)
    return labels[np.where(codes < 0, len(values), codes)]


def score_inputs(
    inputs: Inputs, learner: Learner, plan: BatchPlan, seconds: Counter | None = None
) -> dict[str, np.ndarray]:
    """The output columns of one batch (name → numpy array; detail columns (n, H) matrices); the time
    of each step is added to `seconds` when given."""
    n = len(inputs)
    clock = StepClock(seconds)
    rows = horizon_rows(inputs, plan)
    clock.lap("horizon rows")
    predictions = learner.predict(rows, seconds=seconds)
    clock.skip()
    forecasts = monthly_forecasts(predictions, n, plan)
    cols = cltv_columns(forecasts, plan.score_month_index, plan.formula, plan.extrapolation)
    clock.lap("cltv and extension")
    cols.update(interval_columns(forecasts, cols["cltv"], plan, interval_segments(inputs, plan)))
    cols[VALUE_AT_RISK] = value_at_risk(forecasts, plan.formula)
    clock.lap("intervals")
    out: dict[str, np.ndarray] = {
        ID: inputs.ids,
        "score_month": np.full(n, (plan.score_month - EPOCH).days, dtype=np.int32),
        "release_version": np.full(n, plan.release_version, dtype=np.int32),
        RELEASE_DIGEST: constant_strings(plan.release_digest, n),
    }
    for name in output_schema(plan).names[4:]:
        if name == HOLDOUT:
            out[name] = inputs.holdout
        elif name in VALUE_BOUNDS_H:
            out[name] = cols[name]
        elif name.endswith("_h"):
            out[name] = forecasts[name[:-2]]
        else:
            out[name] = cols.get(name, np.full(n, np.nan))
    return out


def constant_strings(value: str, n: int) -> pa.StringArray:
    """n copies of one string as an Arrow column, built from two buffers (no Python object per row)."""
    data = value.encode("utf-8")
    offsets = np.arange(0, (n + 1) * len(data), len(data), dtype=np.int32)[: n + 1]
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data * n))


def to_arrow(columns: dict[str, np.ndarray | pa.Array], plan: BatchPlan) -> pa.RecordBatch:
    arrays = []
    for f in output_schema(plan).fields:
        values = columns[f.name]
        if isinstance(values, pa.Array):
            arrays.append(values)
        elif isinstance(f.dataType, T.ArrayType):  # (n, H) matrix → list column over its flat buffer
            n, h = values.shape
            offsets = pa.array(np.arange(0, n * h + 1, h, dtype=np.int32))
            arrays.append(pa.ListArray.from_arrays(offsets, pa.array(values.ravel())))
        else:
            arrays.append(pa.array(values, type=arrow_type(f.dataType)))
    return pa.RecordBatch.from_arrays(arrays, names=output_schema(plan).names)


# ---------------------------------------------------------------- the worker side
_LEARNERS: dict[str, Learner] = {}


def cached_learner(plan: BatchPlan, bundle: Any) -> Learner:
    """The worker's Learner for a release, built from the broadcast bundle on first use only."""
    learner = _LEARNERS.get(plan.release_key)
    if learner is None:
        files = bundle.value if hasattr(bundle, "value") else bundle
        for name, data in files.items():  # this worker's copy is the bytes the driver verified
            expected = plan.file_digests.get(name)
            if plan.file_digests and hashlib.sha256(data).hexdigest() != expected:
                raise RuntimeError(f"release {plan.release_key}: the worker's copy of {name} is not the "
                                   "verified file (corrupted in transit?)")  # fmt: skip
        _LEARNERS.clear()  # one release at a time: a reused worker does not pile up old models
        learner = Learner.from_bundle_bytes(files, thread_count=plan.threads)
        _LEARNERS[plan.release_key] = learner
        log.info("release %s loaded in worker", plan.release_key)
    return learner


def score_arrow_batches(
    batches: Iterator[pa.RecordBatch], plan: BatchPlan, bundle: Any, accumulator: Any
) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: batches stream through, so a task's memory does not grow with the month; the
    task's stats go to the driver once, keyed by its partition."""
    from pyspark import TaskContext

    stats = BatchStats()
    clock = StepClock(stats.seconds)
    learner = cached_learner(plan, bundle)
    clock.lap("release load")
    for batch in batches:
        clock.lap("arrow wait")  # reading and decoding upstream, or Spark consuming the last output
        if batch.num_rows:
            inputs = inputs_from_arrow(batch, plan, stats)
            if plan.ranges is not None:
                plan.ranges.count_outside(inputs.numeric, stats)
            clock.lap("arrow in and checks")
            columns = score_inputs(inputs, learner, plan, stats.seconds)
            clock.skip()
            stats.rows += len(inputs)
            stats.holdout += int(inputs.holdout.sum())
            stats.add_cltv(columns["cltv"])
            out = to_arrow(columns, plan)
            clock.lap("arrow out")
            yield out
            clock.skip()
    context = TaskContext.get()
    accumulator.add({context.partitionId() if context is not None else 0: stats})
