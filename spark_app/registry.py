"""Releases in the MLflow registry: log one (run + pyfunc + ONE model version), load one, promote one.

A release is one version of the registered model `mlflow.model_name`: an `mlflow.pyfunc` model whose
artifacts are the bundle (release.json, the .cbm files, reference.parquet). New versions get alias
`challenger`; production runs on alias `champion`, which `promote` moves only when the challenger is not
worse than the champion on the challenger's OOT month (per-model tolerance). Every MLflow call goes
through an `MlflowClient` built from the settings: no process-global tracking URI is set.
"""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import io
import json
import logging
import re
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature, infer_signature
from mlflow.tracking import MlflowClient
from mlflow.types.schema import AnyType, ColSpec, DataType, Schema

from spark_app import tracking
from spark_app.catalog import CALENDAR_MONTH, HORIZON, ModelCatalog
from spark_app.cltv import ValueFormula
from spark_app.config import Settings, Traversable
from spark_app.contract import ID
from spark_app.errors import UserError
from spark_app.evaluation import (
    NA,
    VALUE,
    Evaluation,
    actuals,
    agg_bias,
    agg_bias_se,
    cumulative_bias,
    finite,
    fmt_metric,
    fmt_noise,
    fmt_number,
    fmt_pct,
    fmt_seconds,
    main_metric_of,
    markdown_table,
    metrics_for,
    monthly_values,
    relative_worsening,
)
from spark_app.files import filesystem_for
from spark_app.horizons import horizon_frame
from spark_app.layout import promotion_target
from spark_app.metrics import push_job_metrics
from spark_app.models import RELEASE_JSON, Learner
from spark_app.parties import party_clusters
from spark_app.redact import redact

log = logging.getLogger(__name__)

Z95 = 1.96  # a bias beyond the limit by more than its 95 % sampling noise refuses a release
CHAMPION = "champion"
CHALLENGER = "challenger"
MODEL_DIR = "release"  # run artifact path of the pyfunc model
BUNDLE_KEY = "bundle"  # pyfunc artifact key of the bundle directory
EVALUATION_DIR = "evaluation"
OOT_SAMPLE = "oot.parquet"
OOT_FILE = f"{EVALUATION_DIR}/{OOT_SAMPLE}"  # the promotion's evaluation data: digested with the bundle
# Where a release's digests live: tags of its model version (the registry, reviewed and permissioned)
# and of its run, never only beside the artifacts they vouch for
DIGESTS_TAG = "sha256"  # model version tag: {file: SHA-256} of every file a job loads
RELEASE_DIGEST_TAG = "release_digest"  # model version tag: the digest score rows carry
RUN_DIGESTS_TAG = f"cltv.{DIGESTS_TAG}"  # the same on the run
RUN_RELEASE_DIGEST_TAG = f"cltv.{RELEASE_DIGEST_TAG}"
SEALED_BY_TAG = "sealed_by"  # set by `cltv release seal` on a release registered before digests
SEALED_AT_TAG = "sealed_at"
_VERSION_REF = re.compile(r"[1-9][0-9]{0,9}")
_ALIAS_REF = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,254}")
MAX_VERSION = 2**31 - 1  # the registry stores versions as 32-bit integers


class ReleaseNotFoundError(UserError):
    """No registered version behind an alias or number; the message names the model and the reference."""


class ReleaseIntegrityError(UserError):
    """A release's files are not what was registered (edited, missing, added, unreadable) or it has no
    recorded digests; nothing is scored, compared or reported with it (docs/failure_modes.md)."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_digests(files: Mapping[str, bytes]) -> dict[str, str]:
    return {name: sha256(data) for name, data in sorted(files.items())}


def release_digest(digests: Mapping[str, str]) -> str:
    """One SHA-256 over the bundle's files (name and digest of each, sorted): what a score row carries."""
    lines = "".join(f"{name}\t{digest}\n" for name, digest in sorted(digests.items()) if "/" not in name)
    return sha256(lines.encode("utf-8"))


def verify_files(files: Mapping[str, bytes], expected: Mapping[str, str], what: str) -> None:
    """Raise ReleaseIntegrityError unless `files` are exactly the registered ones, byte for byte."""
    wanted = {n: d for n, d in expected.items() if "/" not in n}
    problems = []
    for name in sorted(set(wanted) - set(files)):
        problems.append(f"{name}: missing from the artifact store")
    for name in sorted(set(files) - set(wanted)):
        problems.append(f"{name}: in the artifact store but not registered")
    for name in sorted(set(files) & set(wanted)):
        found = sha256(files[name])
        if found != wanted[name]:
            problems.append(f"{name}: SHA-256 {found[:16]}… but {wanted[name][:16]}… was registered")
    if problems:
        raise ReleaseIntegrityError(
            f"{what}: its files are not the ones registered — " + "; ".join(problems) + ". It was changed "
            "after registration; nothing was scored, compared or reported with it (docs/failure_modes.md)"
        )


# ---------------------------------------------------------------- registry
def ensure_registered_model(client: MlflowClient, name: str) -> None:
    try:
        client.get_registered_model(name)
    except MlflowException:
        try:
            client.create_registered_model(
                name, description="CLTV release: the CatBoost models of one training, as one version."
            )
        except MlflowException:
            client.get_registered_model(name)  # created concurrently; raises if really absent


# ---------------------------------------------------------------- the pyfunc
def forecast_frame(learner: Learner, features: pd.DataFrame, horizons: list[int]) -> pd.DataFrame:
    """One row per input row × horizon with every model's forecast (probabilities / DAILY amounts).

    The calendar month of the target comes from `feature_month` (or `report_month`): the month the
    features describe; T = that month + h.
    """
    month_col = next((c for c in ("feature_month", "report_month") if c in features.columns), None)
    if month_col is None:
        raise KeyError(
            "model input needs a feature_month (or report_month) column: the month of the features"
        )
    months = pd.to_datetime(features[month_col])
    frame = horizon_frame(features, (months.dt.year * 12 + months.dt.month - 1).to_numpy(), horizons)
    predictions = learner.predict(frame)
    out = frame[["row", HORIZON, CALENDAR_MONTH]].copy()
    if ID in frame:
        out.insert(0, ID, frame[ID].to_numpy())
    for model_id, values in predictions.items():
        out[model_id] = values
    return out


class CltvRelease(mlflow.pyfunc.PythonModel):
    """pyfunc of a release: features of a month (one row per subscriber) → 24-horizon forecasts.

    Output: one row per input row per horizon (`row`, `horizon`, `target_calendar_month`, then one column
    per model: probability for paid/active, DAILY-unit forecast for the amounts).
    """

    def load_context(self, context) -> None:
        self._learner = Learner.from_bundle(context.artifacts[BUNDLE_KEY])
        self._horizons = list(self._learner.meta.get("horizons") or range(1, 25))

    def predict(
        self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        return forecast_frame(self._learner, pd.DataFrame(model_input), self._horizons)


def pip_requirements() -> list[str]:
    import catboost
    import pyarrow
    import pydantic
    import yaml  # noqa: F401

    return [
        f"catboost=={catboost.__version__}",
        f"pandas=={pd.__version__}",
        f"numpy=={np.__version__}",
        f"pyarrow=={pyarrow.__version__}",
        f"pydantic=={pydantic.VERSION}",
        "pydantic-settings>=2.2",
        "PyYAML>=6",
        "scipy>=1.11",
        f"mlflow=={mlflow.__version__}",
    ]


def copy_package(into: Path) -> Path:
    """This package's files copied to `into/spark_app` through importlib.resources: the same from a source
    tree, a wheel or the zip shipped with --py-files (where there is no directory to point at)."""

    def copy(node: Traversable, dst: Path) -> None:
        dst.mkdir(parents=True, exist_ok=True)
        for child in node.iterdir():
            if child.name == "__pycache__":
                continue
            if child.is_dir():
                copy(child, dst / child.name)
            else:
                (dst / child.name).write_bytes(child.read_bytes())

    target = into / "spark_app"
    copy(resources.files("spark_app"), target)
    return target


def model_input(features: pd.DataFrame, learner: Learner, rows: int = 5) -> pd.DataFrame:
    """What the pyfunc takes: a month's features (one row per subscriber) and the month they describe, with
    the party features when the models read them (the pyfunc cannot compute them: no parties table)."""
    wanted = [*learner.catalog.input_columns(), *learner.catalog.party_features()]
    columns = [c for c in wanted if c in features]
    frame = features.head(rows)[columns].copy()
    month = features["feature_month"] if "feature_month" in features else features["report_month"]
    frame.insert(0, "feature_month", pd.to_datetime(month.head(rows)).to_numpy())
    return frame.reset_index(drop=True)


def input_schema(catalog: ModelCatalog) -> Schema:
    """The pyfunc's input columns: the month, categorical features as strings, numeric ones of any numeric
    type (a month read from Spark has int columns, or floats where they hold nulls; MLflow would refuse
    to convert int64 to a declared double); the party features as given columns when the models read them."""
    cols = [ColSpec(DataType.datetime, "feature_month")]
    for column in [*catalog.input_columns(), *catalog.party_features()]:
        cols.append(ColSpec(DataType.string if column in catalog.categorical else AnyType(), column))
    return Schema(cols)


def save_pyfunc(bundle_dir: Path, out: Path, learner: Learner, input_example: pd.DataFrame) -> Path:
    """The release as an MLflow pyfunc directory with its signature and an input example; the package
    travels along (code_paths)."""
    horizons = list(learner.meta.get("horizons") or range(1, 25))
    with warnings.catch_warnings():  # the output's int columns (row, horizon, month) are never missing
        warnings.simplefilter("ignore", UserWarning)
        output = infer_signature(input_example, forecast_frame(learner, input_example, horizons)).outputs
    signature = ModelSignature(inputs=input_schema(learner.catalog), outputs=output)
    with tempfile.TemporaryDirectory(prefix="cltv-code-") as tmp:
        mlflow.pyfunc.save_model(
            path=str(out),
            python_model=CltvRelease(),
            artifacts={BUNDLE_KEY: str(bundle_dir)},
            code_paths=[str(copy_package(Path(tmp)))],
            pip_requirements=pip_requirements(),
            signature=signature,
            input_example=input_example,
        )
    return out


# ---------------------------------------------------------------- logging a release
# MLflow 3's UI opens an experiment without this tag in its GenAI layout (traces, prompts); this value
# (the UI's CUSTOM_MODEL_DEVELOPMENT kind) gives the classic one: runs, metrics, models.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
CLASSIC_EXPERIMENT = "custom_model_development"


def mark_classic_experiment(client: MlflowClient, experiment_id: str) -> None:
    """Have the MLflow UI show the experiment as a classic ML experiment (once; a tag, nothing else)."""
    found = client.get_experiment(experiment_id)
    if found.tags.get(EXPERIMENT_KIND_TAG) != CLASSIC_EXPERIMENT:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, CLASSIC_EXPERIMENT)


NOT_MEASURABLE = "¹"  # footnote marker of an n/a cell in the registry's tables


def _or_na(value: Any, text: str, missing: list[str]) -> str:
    """`text` for a finite value; "n/a¹" otherwise, noting that the table needs its footnote."""
    if finite(value):
        return text
    missing.append(NOT_MEASURABLE)
    return f"{NA}{NOT_MEASURABLE}"


def quality_markdown(quality: pd.DataFrame) -> list[str]:
    """The OOT quality as two narrow tables (bias first, then the main metric), one unit per column:
    percent for every bias and its ± 95 % noise, the metric's own unit for the main metric."""
    if not len(quality):
        return ["(no OOT rows)"]
    missing: list[str] = []  # n/a cells of the bias table
    missing_metric: list[str] = []  # ... and of the main-metric table
    bias_rows, metric_rows = [], []
    for r in quality.itertuples(index=False):
        bias_rows.append(
            {
                "model": str(r.model_id),
                "OOT rows": fmt_number(r.rows),
                "bias ± noise": _or_na(r.agg_bias, fmt_noise(r.agg_bias, r.agg_bias_se), missing),
                "naive bias": _or_na(r.naive_agg_bias, fmt_pct(r.naive_agg_bias, 2), missing),
            }
        )
        metric_rows.append(
            {
                "model": str(r.model_id),
                "metric": r.metric,
                "model value": _or_na(r.value, fmt_metric(r.value, 4), missing_metric),
                "naive value": _or_na(r.naive, fmt_metric(r.naive, 4), missing_metric),
                "beats naive": "yes" if r.beats_naive else "**NO**",
            }
        )
    why = {NOT_MEASURABLE: "n/a: not measurable on this OOT sample (one class only, or no actual amount)."}
    out = [
        "**Bias on OOT, all horizons**",
        "Σ forecast / Σ actual − 1 in percent, ± its 95 % sampling noise: CLTV sums these forecasts, so a "
        "bias beyond its noise is what to look at first.",
        markdown_table(pd.DataFrame(bias_rows), footnotes=why if missing else None),
    ]
    value = quality[quality["model_id"] == VALUE]
    if len(value) and "cum_bias" in value and finite(value["cum_bias"].iloc[0]):
        v = value.iloc[0]
        naive = f" (naive {fmt_pct(v['naive_cum_bias'], 2)})" if finite(v.get("naive_cum_bias")) else ""
        out.append(
            f"**Cumulative 24-month value** (`value` summed over horizons 1..24): bias "
            f"**{fmt_noise(v['cum_bias'], v['cum_bias_se'])}**{naive}."
        )
    out += [
        "**Main metric on OOT against the naive baseline**",
        markdown_table(pd.DataFrame(metric_rows), footnotes=why if missing_metric else None),
    ]
    return out


def release_description(learner: Learner, evaluation: Evaluation, rows: dict[str, int]) -> str:
    """Markdown for the model version page and the run's note: what it was trained on, whether it beats
    naive, bias first — in tables narrow enough for MLflow's pane, numbers formatted for people."""
    meta = learner.meta
    quality = evaluation.quality
    fits = pd.DataFrame(
        [
            {
                "model": m,
                "rows": fmt_number(r.rows),
                "best iteration": fmt_number(r.best_iteration) if r.best_iteration is not None else "—",
                "trees": fmt_number(r.tree_count),
                "fit time": fmt_seconds(r.seconds),
            }
            for m, r in learner.fit_reports.items()
        ]
    )
    failing = [] if not len(quality) else list(quality.loc[~quality["beats_naive"].astype(bool), "model_id"])
    seasons = (
        ""
        if learner.calendar_seen is None
        else f" The training window's targets fall in calendar months {list(learner.calendar_seen)} only: "
        "forecasts for the other months are made with the calendar feature unknown (fitted on a share of "
        "the rows with it unknown), not extrapolated from the seasons the trees saw."
    )
    verdict = (
        "Every model beats its naive baseline on OOT (main metric and |aggregate bias|)."
        if not failing
        else f"**Not beating their naive baseline on OOT: {', '.join(failing)}.**"
    )
    return "\n\n".join(
        [
            f"### CLTV release — dataset `{meta.get('dataset_id')}`, "
            f"target window {meta.get('target_window')}",
            f"Package {meta.get('package_version')}, trained {meta.get('trained_at')}. "
            f"Rows per split: {', '.join(f'{k} {v:,}' for k, v in rows.items())}.{seasons}",
            verdict,
            *quality_markdown(quality),
            "**Fits**",
            markdown_table(fits) if len(fits) else "(no fits)",
            "Metrics against the horizon: the run's `*.by_horizon` metrics (step = horizon). Tables: "
            "`evaluation/metrics_by_horizon.csv`, `deciles.csv`, `calibration_report.json`; plots under "
            "`evaluation/plots/`.",
        ]
    )


def local_digests(bundle_dir: Path, evaluation_dir: Path) -> dict[str, str]:
    """SHA-256 of every file a job will load from the release: the bundle's, and the OOT sample promotion
    compares on — computed before upload, so what the store holds later is checked against these."""
    digests = file_digests({p.name: p.read_bytes() for p in Path(bundle_dir).iterdir() if p.is_file()})
    oot = Path(evaluation_dir) / OOT_SAMPLE
    if oot.is_file():
        digests[OOT_FILE] = sha256(oot.read_bytes())
    return digests


@tracking.guarded
def log_release(
    settings: Settings,
    *,
    learner: Learner,
    bundle_dir: Path,
    evaluation_dir: Path,
    evaluation: Evaluation,
    rows: dict[str, int],
    input_example: pd.DataFrame,
) -> tuple[int, str]:
    """ONE run (params, metrics, evaluation artifacts, the pyfunc) → ONE new version, alias challenger."""
    cfg = settings.mlflow
    client = tracking.client(cfg)
    exp = tracking.experiment_id(client, cfg.experiment, cfg.artifact_location)
    mark_classic_experiment(client, exp)
    meta = learner.meta
    digests = local_digests(bundle_dir, evaluation_dir)
    tags = {
        "cltv.job": "train",
        "cltv.dataset_id": str(meta.get("dataset_id")),
        "cltv.target_window": str(meta.get("target_window")),
        "cltv.package_version": str(meta.get("package_version")),
        "cltv.models": ",".join(learner.models),
        "cltv.config_hash": settings.config_hash(),
        RUN_DIGESTS_TAG: json.dumps(digests, sort_keys=True),
        RUN_RELEASE_DIGEST_TAG: release_digest(digests),
    }
    run = client.create_run(exp, run_name=f"train {meta.get('dataset_id')}", tags=tags)
    run_id = run.info.run_id
    try:
        params = {
            "dataset_id": meta.get("dataset_id"),
            "target_window": meta.get("target_window"),
            "models": ",".join(learner.models),
            "max_rows_per_model": settings.training.max_rows_per_model,
            "thread_count": settings.training.thread_count,
            "random_seed": settings.training.random_seed,
            **{f"rows.{k}": v for k, v in rows.items()},
        }
        for entry in learner.entries:
            for key, value in entry.params.items():
                params[f"{entry.model_id}.{key}"] = value
        metrics = evaluation.summary_metrics()
        for model_id, report in learner.fit_reports.items():
            metrics[f"{model_id}.fit_seconds"] = report.seconds
            metrics[f"{model_id}.rows"] = report.rows
            if report.best_iteration is not None:
                metrics[f"{model_id}.best_iteration"] = report.best_iteration
        tracking.log_values(client, run_id, params, metrics, evaluation.metrics_by_horizon())
        client.log_dict(run_id, settings.resolved(), "config/resolved.json")
        client.log_artifacts(run_id, str(evaluation_dir), EVALUATION_DIR)
        description = release_description(learner, evaluation, rows)
        client.set_tag(run_id, "mlflow.note.content", description)
        with tempfile.TemporaryDirectory(prefix="cltv-pyfunc-") as tmp:
            model_dir = save_pyfunc(bundle_dir, Path(tmp) / MODEL_DIR, learner, input_example)
            client.log_artifacts(run_id, str(model_dir), MODEL_DIR)
        ensure_registered_model(client, cfg.model_name)
        version = client.create_model_version(
            cfg.model_name,
            source=f"{run.info.artifact_uri}/{MODEL_DIR}",
            run_id=run_id,
            tags={k.removeprefix("cltv."): v for k, v in tags.items() if k != "cltv.job"},
            description=description,
        )
        client.set_registered_model_alias(cfg.model_name, CHALLENGER, version.version)
        client.set_tag(run_id, "cltv.release_version", str(version.version))
        client.set_terminated(run_id)
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    log.info(
        "logged run %s; registered %s version %s with alias %s",
        run_id,
        cfg.model_name,
        version.version,
        CHALLENGER,
    )
    return int(version.version), run_id


# ---------------------------------------------------------------- loading a release
@dataclass
class Release:
    """A registered release, its bundle in memory (`files`: name → bytes, verified against the digests
    recorded in the registry) and its release.json."""

    version: int
    run_id: str
    files: dict[str, bytes]
    manifest: dict[str, Any]
    model_name: str = ""
    aliases: list[str] = field(default_factory=list)
    digests: dict[str, str] = field(default_factory=dict)  # file → SHA-256, as registered
    digest: str = ""  # release_digest(digests): what score rows carry

    def learner(self) -> Learner:
        return Learner.from_bundle_bytes(self.files)


def available_releases(client: MlflowClient, name: str) -> str:
    """`versions 1..3; aliases champion → v2, challenger → v3`: what a bad `--release` can choose from."""
    try:
        registered = client.get_registered_model(name)
    except MlflowException as exc:
        if tracking.is_not_found(exc):
            return f"no release is registered under {name!r} yet: run `cltv train` first"
        raise
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
    aliases = dict(getattr(registered, "aliases", {}) or {})
    listed = ", ".join(str(v) for v in versions[-20:]) or "none"
    more = f" (the latest 20 of {len(versions)})" if len(versions) > 20 else ""
    named = ", ".join(f"{a} → v{v}" for a, v in sorted(aliases.items())) or "none"
    return f"versions: {listed}{more}; aliases: {named}"


def model_version(client: MlflowClient, name: str, release: str):
    """The version behind "champion", "challenger" (any alias) or a version number; anything else (path
    characters, a number the registry cannot hold, an unknown alias or version) is a ReleaseNotFoundError
    listing the versions and aliases there are."""
    ref = str(release).strip()
    is_version = _VERSION_REF.fullmatch(ref) is not None and int(ref) <= MAX_VERSION
    if not is_version and _ALIAS_REF.fullmatch(ref) is None:
        raise ReleaseNotFoundError(
            f"--release {ref[:80]!r} is neither an alias nor a version number of registered model "
            f"{name!r} ({available_releases(client, name)})"
        )
    try:
        if is_version:
            return client.get_model_version(name, ref)
        return client.get_model_version_by_alias(name, ref)
    except MlflowException as exc:
        if not tracking.is_not_found(exc):
            raise
        what = f"version {ref}" if is_version else f"alias {ref!r}"
        hint = " — run `cltv train` and `cltv promote` first" if ref == CHAMPION else ""
        raise ReleaseNotFoundError(
            f"registered model {name!r} has no {what} ({available_releases(client, name)}){hint}"
        ) from None


def recorded_digests(client: MlflowClient, name: str, mv: Any) -> dict[str, str]:
    """The digests registered for a version, checked against its run's copy; an unsealed release (one
    registered before digests existed) is refused, naming the command that records them."""
    raw = (mv.tags or {}).get(DIGESTS_TAG)
    if not raw:
        raise ReleaseIntegrityError(
            f"registered model {name!r} version {mv.version} has no recorded file digests (registered "
            "before releases were sealed), so what would be loaded cannot be checked against what was "
            f"reviewed. Check the release, then record them: `cltv release seal --version {mv.version}`"
        )
    digests = json.loads(raw)
    run_raw = client.get_run(mv.run_id).data.tags.get(RUN_DIGESTS_TAG) if mv.run_id else None
    if run_raw is not None and json.loads(run_raw) != digests:
        raise ReleaseIntegrityError(
            f"registered model {name!r} version {mv.version}: the digests on the model version and on its "
            f"run {mv.run_id} differ (one was edited); not loaded"
        )
    return digests


def download_bundle(cfg: Any, client: MlflowClient, mv: Any) -> dict[str, bytes]:
    """The bytes of every file of the version's bundle, as the artifact store holds them now; a bundle
    that is gone or unreadable is a ReleaseIntegrityError naming it (exit 2), a store that cannot be
    reached stays Unreachable (exit 75)."""
    source = client.get_model_version_download_uri(cfg.model_name, mv.version)
    where = f"{source.rstrip('/')}/artifacts/{BUNDLE_KEY}"
    with tempfile.TemporaryDirectory(prefix="cltv-load-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=where, dst_path=tmp, tracking_uri=cfg.tracking_uri
            )
            files = {p.name: p.read_bytes() for p in Path(local).iterdir() if p.is_file()}
        except Exception as exc:
            if tracking.is_unreachable(exc):
                raise
            raise ReleaseIntegrityError(
                f"registered model {cfg.model_name!r} version {mv.version}: its bundle cannot be read from "
                f"{redact(where)}: {tracking.first_line(exc)} (artifacts deleted or moved?)"
            ) from None
    if not files:
        raise ReleaseIntegrityError(
            f"registered model {cfg.model_name!r} version {mv.version}: no files at {redact(where)}"
        )
    return files


@tracking.guarded
def load_release(settings: Settings, release: str) -> Release:
    """The bundle of `release` ("champion", "challenger" or a version number) in memory, every file
    verified against the SHA-256 the registry recorded for it — before anything uses it."""
    cfg = settings.mlflow
    client = tracking.client(cfg)
    mv = model_version(client, cfg.model_name, release)
    digests = recorded_digests(client, cfg.model_name, mv)
    files = download_bundle(cfg, client, mv)
    verify_files(files, digests, f"registered model {cfg.model_name!r} version {mv.version}")
    try:
        manifest = json.loads(files[RELEASE_JSON])
    except (KeyError, ValueError) as exc:
        raise ReleaseIntegrityError(
            f"registered model {cfg.model_name!r} version {mv.version}: {RELEASE_JSON} is unreadable ({exc})"
        ) from None
    digest = release_digest(digests)
    log.info(
        "loaded %s version %s (%s): %d files, SHA-256 verified (release digest %s)",
        cfg.model_name, mv.version, release, len(files), digest[:16],
    )  # fmt: skip
    return Release(
        version=int(mv.version),
        run_id=mv.run_id,
        files=files,
        manifest=manifest,
        model_name=cfg.model_name,
        aliases=list(getattr(mv, "aliases", []) or []),
        digests=digests,
        digest=digest,
    )


@dataclass(frozen=True)
class SealResult:
    version: int
    digest: str
    files: int
    already: bool  # the release was sealed before (its files match what was recorded)


@tracking.guarded
def seal_release(settings: Settings, version: int) -> SealResult:
    """Record the digests of a release registered before digests existed, after a person checked it: the
    files as the store holds them now become the reviewed ones. A sealed release is verified instead
    (sealing again changes nothing; a sealed release whose files changed is refused)."""
    cfg = settings.mlflow
    client = tracking.client(cfg)
    mv = model_version(client, cfg.model_name, str(version))
    what = f"registered model {cfg.model_name!r} version {mv.version}"
    files = download_bundle(cfg, client, mv)
    if (mv.tags or {}).get(DIGESTS_TAG):
        digests = recorded_digests(client, cfg.model_name, mv)
        verify_files(files, digests, what)
        log.info("%s is sealed already; its files match the recorded digests", what)
        return SealResult(int(mv.version), release_digest(digests), len(files), already=True)
    Learner.from_bundle_bytes(files)  # a release that cannot load is not sealed
    digests = file_digests(files)
    oot = download_run_file(client, mv.run_id, OOT_FILE)
    if oot is not None:
        digests[OOT_FILE] = sha256(oot)
    digest = release_digest(digests)
    stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    tags = {DIGESTS_TAG: json.dumps(digests, sort_keys=True), RELEASE_DIGEST_TAG: digest,
            SEALED_BY_TAG: getpass.getuser(), SEALED_AT_TAG: stamp}  # fmt: skip
    for key, value in tags.items():
        client.set_model_version_tag(cfg.model_name, str(mv.version), key, value)
        client.set_tag(mv.run_id, f"cltv.{key}", value)
    log.info("sealed %s: %d files, release digest %s, by %s", what, len(digests), digest[:16],
             tags[SEALED_BY_TAG])  # fmt: skip
    return SealResult(int(mv.version), digest, len(digests), already=False)


# ---------------------------------------------------------------- promotion
@dataclass
class PromotionDecision:
    promoted: bool
    reason: str
    challenger: int | None
    champion: int | None  # the champion the challenger was compared with (before the decision)
    comparison: list[dict[str, Any]] = field(default_factory=list)
    champion_after: int | None = None  # the champion as re-read after the decision was carried out
    attempts: int = 1  # comparisons made: the champion moved (by hand) while one was running
    overridden: bool = False  # promoted past a failed gate by `promote --override-gate` (on record)


@dataclass(frozen=True)
class AliasSwap:
    """What compare-and-set found and did: `before` is the champion re-read just before setting it."""

    done: bool
    before: int | None
    after: int | None


def champion_version(client: MlflowClient, name: str) -> int | None:
    try:
        return int(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException as exc:
        if not tracking.is_not_found(exc):
            raise
        return None


def compare_and_set_champion(
    client: MlflowClient, name: str, version: int, expected: int | None
) -> AliasSwap:
    """Move alias champion to `version` only if it still points at `expected` (the release it was compared
    with), then re-read it. MLflow has no conditional alias update: the promotion lease keeps other
    promotions out, and the two reads catch a champion moved by hand in the UI meanwhile."""
    before = champion_version(client, name)
    if before != expected:
        return AliasSwap(False, before, before)
    client.set_registered_model_alias(name, CHAMPION, str(version))
    return AliasSwap(True, before, champion_version(client, name))


def compare_releases(
    challenger: Learner, champion: Learner | None, data: pd.DataFrame, settings: Settings
) -> pd.DataFrame:
    """Per challenger model, on the same rows: the main metric of both releases (tolerance verdict) and
    the challenger's aggregate bias (limit `promotion.max_abs_bias` for amounts); plus the challenger's
    bias of the cumulative 24-month value."""
    cfg = settings.promotion
    limit = cfg.max_abs_bias
    new = challenger.predict(data)
    old = champion.predict(data) if champion is not None else {}
    catalog = challenger.catalog.subset(list(challenger.models))
    y_all = actuals(data, catalog)
    clusters = party_clusters(data)  # a release trained with parties: its OOT rows' households
    rows = []

    def row(model_id: str, metric: str, **values: Any) -> dict[str, Any]:
        base = dict(model_id=model_id, metric=metric, challenger=np.nan, champion=np.nan, worsening=np.nan,
                    tolerance=np.nan, agg_bias=np.nan, max_abs_bias=np.nan, ok=True, note="",
                    agg_bias_se=np.nan, champion_agg_bias=np.nan)  # fmt: skip
        return {**base, **values}

    for entry in catalog:
        model_id = entry.model_id
        metric = main_metric_of(cfg.main_metric, model_id, entry.kind)
        tolerance = float(cfg.tolerance.get(model_id, 0.0))
        y = y_all[model_id]
        value = metrics_for(entry.kind, y, new[model_id])[metric]
        bias, noise = agg_bias(y, new[model_id]), Z95 * agg_bias_se(y, new[model_id], clusters)
        checks_bias = not entry.is_survival
        bias_ok = not checks_bias or not abs(bias) - noise > limit
        common = dict(challenger=value, tolerance=tolerance, agg_bias=bias, agg_bias_se=noise / Z95,
                      max_abs_bias=limit if checks_bias else np.nan)  # fmt: skip
        note = "" if bias_ok else f"|aggregate bias| {abs(bias):.2%} ± {noise:.2%} beyond {limit:.0%}"
        if model_id not in old:
            rows.append(row(model_id, metric, **common, ok=bias_ok, note=note or "new model"))
            continue
        before = metrics_for(entry.kind, y, old[model_id])[metric]
        worse = relative_worsening(metric, value, before)
        rows.append(row(model_id, metric, **common, champion=before, worsening=worse,
                        champion_agg_bias=agg_bias(y, old[model_id]),
                        ok=bool(worse <= tolerance) and bias_ok, note=note))  # fmt: skip
    if len(catalog.ids) == len(challenger.catalog.ids) and catalog.amounts:
        formula = ValueFormula.from_catalog(catalog, settings.costs)
        f_value = monthly_values(data, new, catalog, formula)
        y_value = monthly_values(data, y_all, catalog, formula)
        cum, se = cumulative_bias(
            data[HORIZON].to_numpy(), f_value, y_value, settings.dataset.max_horizon, clusters
        )
        ok = bool(np.isfinite(cum) and not abs(cum) - Z95 * se > limit)
        note = (
            ""
            if ok
            else f"|cumulative 24-month value bias| {abs(cum):.2%} ± {Z95 * se:.2%} beyond {limit:.0%}"
        )
        champion_cum = np.nan
        if champion is not None and set(challenger.models) <= set(old):
            champion_cum, _ = cumulative_bias(
                data[HORIZON].to_numpy(), monthly_values(data, old, catalog, formula), y_value,
                settings.dataset.max_horizon,
            )  # fmt: skip
        rows.append(
            row(VALUE, "cum24_bias", challenger=cum, champion=champion_cum, agg_bias=cum, agg_bias_se=se,
                champion_agg_bias=champion_cum, max_abs_bias=limit, ok=ok, note=note)
        )  # fmt: skip
    for model_id in champion.models if champion is not None else ():
        if model_id not in challenger.models:
            rows.append(row(model_id, "", note="not in the challenger (disabled)"))
    return pd.DataFrame(rows)


def download_run_file(client: MlflowClient, run_id: str, path: str) -> bytes | None:
    """A run artifact's bytes, or None when the run has none (a store that cannot be reached raises)."""
    with tempfile.TemporaryDirectory(prefix="cltv-run-file-") as tmp:
        try:
            local = client.download_artifacts(run_id, path, tmp)
            return Path(local).read_bytes()
        except Exception as exc:
            if tracking.is_unreachable(exc):
                raise
            log.warning("run %s: no %s (%s)", run_id, path, tracking.first_line(exc))
            return None


def evaluation_sample(client: MlflowClient, release: Release) -> pd.DataFrame | None:
    """The release's OOT sample (a run artifact), verified against its registered digest; None when the
    release was registered without one."""
    expected = release.digests.get(OOT_FILE)
    data = download_run_file(client, release.run_id, OOT_FILE)
    what = f"registered model {release.model_name!r} version {release.version}"
    if data is None:
        if expected is not None:
            raise ReleaseIntegrityError(f"{what}: {OOT_FILE} is registered but gone from the artifact store")
        return None
    if expected is None:
        raise ReleaseIntegrityError(f"{what}: {OOT_FILE} in the artifact store but not registered")
    if sha256(data) != expected:
        raise ReleaseIntegrityError(
            f"{what}: {OOT_FILE}: SHA-256 {sha256(data)[:16]}… but {expected[:16]}… was registered — the "
            "promotion's evaluation data was changed after registration; nothing was compared"
        )
    return pd.read_parquet(io.BytesIO(data))


def replace_section(description: str, heading: str, body: str) -> str:
    """`description` with its `### heading` section (up to the next `### `) replaced by `body`, or with
    the section appended: a rerun rewrites its own section and leaves the rest as it was."""
    head = f"### {heading}"
    parts = re.split(r"(?m)^(?=### )", description or "")
    kept = [part.rstrip() for part in parts if part.strip() and not part.startswith(head)]
    return "\n\n".join([*kept, f"{head}\n\n{body.strip()}"])


def set_description_section(settings: Settings, version: Any, heading: str, body: str) -> None:
    """Rewrite one section of a model version's description (the page a reviewer opens in MLflow)."""
    client = tracking.client(settings.mlflow)
    name = settings.mlflow.model_name
    current = client.get_model_version(name, str(version)).description or ""
    client.update_model_version(name, str(version), description=replace_section(current, heading, body))


def comparison_markdown(table: pd.DataFrame, champion: int | None, challenger: int | None) -> list[str]:
    """Champion and challenger side by side on the same OOT rows: the main metric (with the tolerance
    verdict), then the aggregate bias in percent (with the challenger's noise and the limit)."""
    old, new = (f"champion v{champion}" if champion is not None else "champion"), f"challenger v{challenger}"
    missing: list[str] = []
    metric_rows, bias_rows = [], []
    for r in table.itertuples(index=False):
        if r.metric == "cum24_bias" or not r.metric:
            continue
        metric_rows.append(
            {
                "model": r.model_id,
                "metric": r.metric,
                old: fmt_metric(r.champion, 4) if finite(r.champion) else "—",
                new: _or_na(r.challenger, fmt_metric(r.challenger, 4), missing),
                "worse by": fmt_pct(r.worsening, 2) if finite(r.worsening) else "—",
                "tolerance": fmt_pct(r.tolerance, 1, signed=False),
                "ok": "yes" if r.ok else "**NO**",
            }
        )
    for r in table.itertuples(index=False):
        if not finite(r.agg_bias):
            continue
        bias_rows.append(
            {
                "model": "24-month value" if r.metric == "cum24_bias" else r.model_id,
                f"{old} bias": fmt_pct(r.champion_agg_bias, 2) if finite(r.champion_agg_bias) else "—",
                f"{new} bias ± noise": fmt_noise(r.agg_bias, r.agg_bias_se),
                "limit": fmt_pct(r.max_abs_bias, 0, signed=False) if finite(r.max_abs_bias) else "—",
                "note": r.note or "",
            }
        )
    notes = {NOT_MEASURABLE: "n/a: not measurable on this OOT sample."} if missing else {}
    out = ["**Main metric, same OOT rows**", markdown_table(pd.DataFrame(metric_rows), footnotes=notes)]
    if bias_rows:
        out += [
            "**Aggregate bias (Σ forecast / Σ actual − 1), same OOT rows**",
            "The limit applies to amounts and the 24-month value: refused when |bias| exceeds it by more "
            "than its 95 % noise. — : not measured (no champion, or survival models).",
            markdown_table(pd.DataFrame(bias_rows)),
        ]
    return out


def promotion_note(decision: PromotionDecision, verdict: str, table: pd.DataFrame | None) -> str:
    """The promote run's note: the verdict and its reason, then champion and challenger side by side."""
    parts = [
        f"### Promotion of v{decision.challenger}: {verdict}",
        f"**{verdict}**: {decision.reason}",
        f"Champion before: {decision.champion if decision.champion is not None else 'none'}; after: "
        f"{decision.champion_after if decision.champion_after is not None else 'none'}.",
    ]
    if table is not None and len(table):
        parts += comparison_markdown(table, decision.champion, decision.challenger)
    return "\n\n".join(parts)


def record_decision(
    client: MlflowClient, settings: Settings, decision: PromotionDecision, table: pd.DataFrame | None
) -> None:
    """A `promote` run with the comparison table, and tags on the challenger's model version."""
    cfg = settings.mlflow
    exp = tracking.experiment_id(client, cfg.experiment, cfg.artifact_location)
    mark_classic_experiment(client, exp)
    verdict = "promoted" if decision.promoted else "refused"
    run = client.create_run(
        exp,
        run_name=f"promote v{decision.challenger}",
        tags={
            "cltv.job": "promote",
            "cltv.decision": verdict,
            "cltv.challenger_version": str(decision.challenger),
            "cltv.champion_version": str(decision.champion),
            "cltv.champion_after": str(decision.champion_after),
            "mlflow.note.content": promotion_note(decision, verdict, table),
        },
    )
    if table is not None and len(table):
        client.log_table(run.info.run_id, table, "promotion/comparison.json")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "comparison.csv"
            table.to_csv(path, index=False)
            client.log_artifact(run.info.run_id, str(path), "promotion")
    client.set_terminated(run.info.run_id)
    if decision.challenger is not None:
        stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        for key, value in {
            "promotion.decision": verdict,
            "promotion.reason": decision.reason[:5000],
            "promotion.compared_with": str(decision.champion),
            "promotion.champion_after": str(decision.champion_after),
            "promotion.attempts": str(decision.attempts),
            "promotion.overridden": str(decision.overridden).lower(),
            "promotion.run_id": run.info.run_id,
            "promotion.at": stamp,
        }.items():
            client.set_model_version_tag(cfg.model_name, str(decision.challenger), key, value)
        body = promotion_note(decision, verdict, table).split("\n\n", 1)[1]
        set_description_section(settings, decision.challenger, "Promotion", f"{body}\n\n({stamp})")


def judge(
    settings: Settings, client: MlflowClient, candidate: Release, champ_v: int | None, override: bool = False
) -> tuple[PromotionDecision, pd.DataFrame | None]:
    """The decision on `candidate` against the champion `champ_v` (both loaded verified, compared on the
    candidate's OOT sample); nothing is changed here."""
    cand_v = candidate.version
    against = f"champion v{champ_v}" if champ_v is not None else "no champion (the first release)"
    if champ_v == cand_v:
        return PromotionDecision(True, f"version {cand_v} already is the champion", cand_v, champ_v), None
    champion = load_release(settings, str(champ_v)).learner() if champ_v is not None else None
    data = evaluation_sample(client, candidate)
    if data is None or not len(data):
        reason = f"version {cand_v}: no OOT sample in run {candidate.run_id} to check it on"
        return PromotionDecision(champ_v is None, reason, cand_v, champ_v), None
    try:
        table = compare_releases(candidate.learner(), champion, data, settings)
    except KeyError as exc:
        reason = f"{against} cannot be evaluated on v{cand_v}'s OOT sample: {exc}"
        return PromotionDecision(False, reason, cand_v, champ_v), None
    worse = table[~table["ok"]]
    rows = table.to_dict("records")
    if len(worse):
        details = "; ".join(
            (r.note and f"{r.model_id}: {r.note}")
            or f"{r.model_id} {r.metric} {r.challenger:.4f} vs champion {r.champion:.4f} "
            f"({r.worsening:+.2%} worse, tolerance {r.tolerance:.2%})"
            for r in worse.itertuples(index=False)
        )
        if override:
            reason = (
                f"v{cand_v} PROMOTED PAST THE GATE by --override-gate against {against} on {len(data):,} OOT "
                f"rows, overriding: {details}"
            )
            log.warning("%s", reason)
            return PromotionDecision(True, reason, cand_v, champ_v, rows, overridden=True), table
        reason = f"v{cand_v} refused against {against} on {len(data):,} OOT rows: {details}"
        return PromotionDecision(False, reason, cand_v, champ_v, rows), table
    reason = (
        f"v{cand_v} passes against {against}: no model worse beyond tolerance, no aggregate "
        f"bias beyond promotion.max_abs_bias ({len(data):,} OOT rows)"
    )
    return PromotionDecision(True, reason, cand_v, champ_v, rows), table


PROMOTION_ATTEMPTS = 3  # comparisons before giving up on a champion that keeps moving


@tracking.guarded
def promote(
    settings: Settings, version: int | None = None, auto: bool = False, override: bool = False
) -> PromotionDecision:
    """Move alias champion to `version` (or to the challenger) if no model is worse than the champion's
    beyond its tolerance and no amount (nor the cumulative value) is biased beyond the limit.

    Compare-and-set under the promotion lease (one promotion at a time; a second waits up to
    `promotion.lock_wait_seconds`, then compares with the champion the first left): the champion is read,
    both releases are loaded (verified) and scored on the challenger's OOT sample (the newer month), and
    the alias moves only if the champion is still the one compared with — a champion moved by hand
    meanwhile is compared with in turn. The first release goes through the same gate (its bias, with no
    champion to compare with); `override` promotes past a failed gate, deliberately and on record. A
    refusal leaves the champion untouched;
    the reason, what was compared with and the champion afterwards are logged and recorded.
    """
    cfg = settings.mlflow
    client = tracking.client(cfg)
    store = filesystem_for(settings.paths.datasets, settings.paths)
    target = promotion_target(settings.paths, cfg.model_name)
    with store.lock(target, wait=settings.promotion.lock_wait_seconds):
        mv = model_version(client, cfg.model_name, str(version) if version is not None else CHALLENGER)
        candidate = load_release(settings, str(mv.version))
        cand_v = candidate.version
        table: pd.DataFrame | None = None
        for attempt in range(1, PROMOTION_ATTEMPTS + 1):
            champ_v = champion_version(client, cfg.model_name)
            decision, table = judge(settings, client, candidate, champ_v, override)
            decision.attempts = attempt
            if not decision.promoted or champ_v == cand_v:
                decision.champion_after = champion_version(client, cfg.model_name)
                break
            swap = compare_and_set_champion(client, cfg.model_name, cand_v, champ_v)
            decision.champion_after = swap.after
            if swap.done:
                if swap.after != cand_v:
                    decision.reason += (
                        f"; champion was set to v{cand_v}, but re-read it is v{swap.after}: moved by someone "
                        "else right after"
                    )
                    log.warning("champion set to v%s, then moved to v%s by someone else", cand_v, swap.after)
                break
            log.warning(
                "the champion moved from v%s to v%s while v%s was compared with it (by hand?); comparing "
                "again", champ_v, swap.before, cand_v,
            )  # fmt: skip
        else:
            decision = PromotionDecision(
                False,
                f"v{cand_v} refused: the champion moved during each of {PROMOTION_ATTEMPTS} comparisons "
                f"(last v{decision.champion_after}); promote again when nobody is changing it",
                cand_v, decision.champion_after, decision.comparison, decision.champion_after,
                PROMOTION_ATTEMPTS,
            )  # fmt: skip
        record_decision(client, settings, decision, table)
    if decision.promoted:
        log.info("promotion: %s is now %s — %s", f"v{cand_v}", CHAMPION, decision.reason)
    else:
        log.error("promotion refused, champion stays v%s: %s", decision.champion_after, decision.reason)
    figures = {"promoted": decision.promoted, "champion_version": decision.champion_after or float("nan")}
    push_job_metrics(
        settings.monitoring, "promote", None, cand_v, {}, figures, "ok" if decision.promoted else "refused"
    )
    return decision
