"""Every job's figures pushed to a Prometheus Pushgateway (`monitoring.pushgateway_url`), for Grafana.

One group per job and deployment: the grouping key is {job: cltv_<job>, instance:
`monitoring.pushgateway_instance`} — never the month or the release, which are labels of every series —
so next month's run replaces this month's series instead of adding a group that would stay forever
(Prometheus keeps the history; the Pushgateway only holds the latest run of each job).

Push semantics, on purpose:
- a run that succeeded PUTs its group: the group becomes exactly that run (a figure or a stage that did
  not occur this time does not linger with an old month's label);
- any other run (a verdict, an error) POSTs: only the series it carries are replaced (status, exit code,
  and the figures a verdict has), so `cltv_last_success_timestamp_seconds` and the figures of the last
  success stay and "time since last success" keeps growing until the job succeeds again.

A Pushgateway that cannot be reached, or refuses a push, is one warning naming the (masked) URL — never a
failed job. Metric names and labels: docs/monitoring.md#grafana; the dashboard: dashboards/cltv-monthly.json.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.exposition import default_handler, push_to_gateway, pushadd_to_gateway

from spark_app.config import MonitoringConfig
from spark_app.errors import EXIT_VERDICT
from spark_app.months import fmt
from spark_app.redact import redact

log = logging.getLogger(__name__)

PREFIX = "cltv_"
SUCCEEDED = frozenset({"ok", "warn"})  # statuses of a run that ended with exit code 0
FAILED = "failed"  # an error (exit code 2, 3, 75, 70): the CLI pushes it
COMMON_LABELS = ("month", "release")  # on every series; never in the grouping key
# the jobs the CLI reports an exit code for (not `config show`, `demo`, `release …`, `generate`)
JOBS = frozenset({
    "build-dataset", "train", "promote", "score", "monitor", "report", "publish", "validate-inputs",
    "validate-output", "wait-for-inputs", "campaign design", "campaign publish", "campaign evaluate",
})  # fmt: skip

# name (without the prefix) → (help, labels beyond month/release); one help per name across every job,
# as the Pushgateway refuses a push whose help differs from the same metric's in another group
METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "job_status": ("1 on the series of the last run's status (ok, warn, fail, refused, failed)", ("status",)),
    "job_succeeded": ("1 if the last run succeeded (exit code 0), else 0", ()),
    "job_exit_code": ("exit code of the last run (0 done, 1 verdict, 2 user error, 3 not ready, 75, 70)", ()),
    "job_duration_seconds": ("wall time of the last run's command, Spark start-up included", ()),
    "job_last_run_timestamp_seconds": ("end of the last run, Unix time", ()),
    "last_success_timestamp_seconds": ("end of the last successful run, Unix time", ()),
    "stage_duration_seconds": ("wall time of each stage of the last run", ("stage",)),
    "rows": ("rows the last run wrote (subscribers scored, training rows)", ()),
    "holdout_rows": ("subscribers of the scored month in the holdout", ()),
    "split_rows": ("training-set rows per split", ("split",)),
    "total": ("sum of the 60-month CLTV over every subscriber scored (currency of costs)", ()),
    "mean": ("mean 60-month CLTV of the subscribers scored", ()),
    "quantile": ("quantiles of the 60-month CLTV of the subscribers scored", ("quantile",)),
    "monitor_failures": ("checks of the month beyond their fail threshold", ()),
    "monitor_warnings": ("checks of the month beyond their warn threshold", ()),
    "feature_psi": ("PSI of each feature against the release's reference sample", ("feature",)),
    "feature_psi_max": ("largest feature PSI of the month", ()),
    "unseen_share_max": ("largest share of unseen categories of a categorical feature", ()),
    "prediction_psi": ("PSI of each score column against the previous month", ("column",)),
    "prediction_psi_max": ("largest score-column PSI against the previous month", ()),
    "backtest_bias": ("aggregate bias (forecast - actual) / sum|actual| of earlier forecasts of the month",
                      ("model", "horizon")),
    "backtest_wape": ("WAPE of earlier forecasts of the month, all subscribers", ("model", "horizon")),
    "interval_coverage": ("share of subscribers whose realized cumulative value lies inside the interval",
                          ("population", "horizon")),
    "interval_level": ("nominal level of the interval", ()),
    "survival_gap": ("predicted minus realized share in base of a survival model", ("model", "horizon")),
    "party_backtest_bias": ("aggregate bias of earlier forecasts of the month summed per person / household",
                            ("level", "model", "horizon")),
    "party_interval_coverage": ("share of persons / households whose realized cumulative value lies inside "
                                "the party interval", ("level", "horizon")),
    "model_quality": ("a release's main metric per model on the OOT split", ("model", "metric")),
    "model_naive": ("the naive baseline's value of that metric", ("model", "metric")),
    "model_beats_naive": ("1 if the model beats its naive baseline", ("model",)),
    "model_bias": ("a release's aggregate bias per model on the OOT split", ("model",)),
    "promoted": ("1 if the last promotion moved champion, else 0", ()),
    "champion_version": ("registered version carrying alias champion after the run", ()),
}  # fmt: skip


@dataclass(frozen=True)
class Figure:
    """One series: `name` (a METRICS key, or a free name without labels), value, labels beyond month and
    release."""

    name: str
    value: float
    labels: tuple[tuple[str, str], ...] = ()


Figures = Mapping[str, float] | Iterable[Figure]


def job_name(job: str) -> str:
    """`build-dataset` → `cltv_build_dataset`: the grouping key's job, and the `job` label in Prometheus."""
    return PREFIX + job.replace("-", "_").replace(" ", "_")


def month_label(month: dt.date | str | None) -> str:
    return "" if month is None else month if isinstance(month, str) else fmt(month)


def build_registry(
    job: str,
    month: dt.date | str | None,
    release: str | int | None,
    stages: Mapping[str, float],
    figures: Figures,
    status: str,
    *,
    exit_code: int | None = None,
    now: float | None = None,
) -> CollectorRegistry:
    """A fresh registry (never the process-global one) holding this run's series."""
    now = time.time() if now is None else now
    common = {"month": month_label(month), "release": "" if release is None else str(release)}
    succeeded = status in SUCCEEDED
    series: list[Figure] = [
        Figure("job_status", 1.0, (("status", status),)),
        Figure("job_succeeded", float(succeeded)),
        Figure("job_exit_code", float(exit_code if exit_code is not None else 0 if succeeded else 1)),
        Figure("job_last_run_timestamp_seconds", now),
        *(Figure("stage_duration_seconds", s, (("stage", name),)) for name, s in stages.items()),
    ]
    if succeeded:
        series.append(Figure("last_success_timestamp_seconds", now))
    series += [Figure(k, v) for k, v in figures.items()] if isinstance(figures, Mapping) else list(figures)
    registry = CollectorRegistry(auto_describe=True)
    gauges: dict[str, Gauge] = {}
    for fig in series:
        value = float("nan") if fig.value is None else float(fig.value)
        if not math.isfinite(value):
            continue  # NaN (no rows, nothing to compare) is no figure, not a point on a panel
        help_text, extra = METRICS.get(fig.name, (f"figure {fig.name} of a cltv job", ()))
        labels = dict(fig.labels)
        if set(labels) != set(extra):
            raise ValueError(f"metric {PREFIX}{fig.name}: labels {sorted(labels)}, expected {sorted(extra)}")
        if fig.name not in gauges:
            gauges[fig.name] = Gauge(
                PREFIX + fig.name, help_text, [*COMMON_LABELS, *extra], registry=registry
            )
        gauges[fig.name].labels(**common, **labels).set(value)
    return registry


def _http(url: str) -> str:
    return url if "://" in url else f"http://{url}"


def _handler(url: str) -> Callable[..., Callable[[], None]]:
    """prometheus_client's handler, with HTTP basic auth when the URL carries `user:password@`."""
    parts = urlsplit(_http(url))
    if parts.username is None:
        return default_handler
    token = base64.b64encode(f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()).decode()

    def handler(
        url: str, method: str, timeout: float | None, headers: list, data: bytes
    ) -> Callable[[], None]:
        return default_handler(url, method, timeout, [*headers, ("Authorization", f"Basic {token}")], data)

    return handler


def _without_userinfo(url: str) -> str:
    parts = urlsplit(_http(url))
    host = parts.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


# this process's pushes, so the CLI's closing push knows whether the job pushed during the command and
# does not warn twice about one unreachable Pushgateway: job → (time, config), URL → time of a failure
_pushed: dict[str, tuple[float, MonitoringConfig]] = {}
_failed: dict[str, float] = {}


def _push(config: MonitoringConfig, job: str, registry: CollectorRegistry, replace: bool) -> bool:
    """PUT (`replace`) or POST the registry to the job's group; a warning, never an exception."""
    url = str(config.pushgateway_url)
    try:
        (push_to_gateway if replace else pushadd_to_gateway)(
            _without_userinfo(url),
            job=job_name(job),
            registry=registry,
            grouping_key={"instance": config.pushgateway_instance},
            timeout=config.pushgateway_timeout_seconds,
            handler=_handler(url),
        )
    except Exception as exc:  # a metrics outage never fails a job that has done its work
        _failed[url] = time.time()
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        log.warning("metrics of %s not pushed to the Pushgateway %s: %s", job, redact(url), redact(reason))
        return False
    return True


def push_job_metrics(
    config: MonitoringConfig,
    job: str,
    month: dt.date | str | None,
    release: str | int | None,
    stages: Mapping[str, float],
    figures: Figures,
    status: str,
    *,
    exit_code: int | None = None,
) -> bool:
    """Push one run's series to the Pushgateway when `monitoring.pushgateway_url` is set; True if pushed.

    PUT when the run succeeded (`status` ok / warn), POST otherwise (module docstring: why). Never raises:
    whatever goes wrong is one warning naming the masked URL.
    """
    _pushed[job_name(job)] = (time.time(), config)  # also without a URL: the CLI then needs no config
    if not config.pushgateway_url:
        return False
    try:
        registry = build_registry(job, month, release, stages, figures, status, exit_code=exit_code)
    except Exception as exc:  # a figure this module does not know how to push is no reason to fail
        log.warning("metrics of %s not pushed: %s", job, exc)
        return False
    pushed = _push(config, job, registry, replace=status in SUCCEEDED)
    if pushed:
        log.info("metrics of %s %s pushed to %s", job, month_label(month), redact(config.pushgateway_url))
    return pushed


def push_job_exit(
    load_config: Callable[[], MonitoringConfig], args: Any, exit_code: int, started: float
) -> int:
    """The CLI's closing push for command `args` (argparse), returning `exit_code`: the exit code and wall
    time beside what the job pushed (POST) — or, when the job pushed nothing during the command or the
    command ended with an error, the run's status too (`failed` for exit codes 2, 3, 75, 70)."""
    job = " ".join(p for p in (args.command, getattr(args, "campaign_command", None)) if p)
    if job not in JOBS:
        return exit_code
    seconds = time.time() - started
    month = getattr(args, "month", None) or getattr(args, "target_end", None)
    at, config = _pushed.get(job_name(job), (0.0, None))
    pushed = config is not None and at >= started
    if not pushed:
        config = _quietly(load_config)
    if config is None or not config.pushgateway_url or _failed.get(config.pushgateway_url, 0.0) >= started:
        return exit_code  # no Pushgateway, or it failed during this command already (warned once)
    if pushed and exit_code in (0, EXIT_VERDICT):
        registry = CollectorRegistry(auto_describe=True)
        for name, value in (("job_exit_code", exit_code), ("job_duration_seconds", seconds)):
            gauge = Gauge(PREFIX + name, METRICS[name][0], list(COMMON_LABELS), registry=registry)
            gauge.labels(month=month_label(month), release="").set(value)
        _push(config, job, registry, replace=False)
    else:
        status = "ok" if exit_code == 0 else "fail" if exit_code == EXIT_VERDICT else FAILED
        figures = {"job_duration_seconds": seconds}
        push_job_metrics(config, job, month, None, {}, figures, status, exit_code=exit_code)
    return exit_code


def _quietly(load_config: Callable[[], MonitoringConfig]) -> MonitoringConfig | None:
    """The command's config again, without logging its files a second time; None when it is invalid (the
    error the command reported already)."""
    quiet = logging.getLogger("spark_app.config")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        return load_config()
    except Exception:
        return None
    finally:
        quiet.setLevel(level)


# ------------------------------------------------------------------ figures of a job, from its results
def _never_raises(build: Callable[..., list[Figure]]) -> Callable[..., list[Figure]]:
    """A figure builder runs whether or not a Pushgateway is set: a table it does not expect costs its
    figures (one warning), never the job."""

    @functools.wraps(build)
    def safe(*args: Any, **kwargs: Any) -> list[Figure]:
        try:
            return build(*args, **kwargs)
        except Exception as exc:
            log.warning("figures for the Pushgateway left out (%s): %r", build.__name__, exc)
            return []

    return safe


@_never_raises
def score_figures(
    rows: int, holdout_rows: int, cltv_mean: float, quantiles: Mapping[str, float]
) -> list[Figure]:
    """Rows, CLTV total and mean, and the quantiles of a scored month."""
    out = [Figure("rows", rows), Figure("holdout_rows", holdout_rows), Figure("mean", cltv_mean)]
    if rows:
        out.append(Figure("total", cltv_mean * rows))
    out += [Figure("quantile", v, (("quantile", str(q)),)) for q, v in quantiles.items()]
    return out


def _largest(name: str, values: Iterable[Any]) -> list[Figure]:
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return [Figure(name, max(finite))] if finite else []


def _rows(frame: Any) -> list[dict[str, Any]]:
    return [] if frame is None or getattr(frame, "empty", True) else frame.to_dict("records")


@_never_raises
def monitor_figures(
    tables: Mapping[str, Any], failures: int, warnings: int, horizons: Iterable[int]
) -> list[Figure]:
    """PSI, bias, coverage and survival gaps of `cltv monitor`'s tables (pandas), at `horizons` only
    (monitoring.metric_horizons: a few series per model, not 24); with parties, the party backtest's bias
    and the party interval coverage per level."""
    keep = set(horizons)
    out = [Figure("monitor_failures", failures), Figure("monitor_warnings", warnings)]
    drift = _rows(tables.get("drift"))
    out += [Figure("feature_psi", r["psi"], (("feature", str(r["feature"])),)) for r in drift]
    out += _largest("feature_psi_max", [r["psi"] for r in drift])
    out += _largest("unseen_share_max", [r["unseen_share"] for r in drift if r.get("kind") == "categorical"])
    pred = _rows(tables.get("prediction_drift"))
    out += [Figure("prediction_psi", r["psi"], (("column", str(r["column"])),)) for r in pred]
    out += _largest("prediction_psi_max", [r["psi"] for r in pred])
    for r in _rows(tables.get("backtest")):
        if r["population"] == "all" and r["dimension"] == "all" and int(r["horizon"]) in keep:
            labels = (("model", str(r["model_id"])), ("horizon", str(int(r["horizon"]))))
            out += [Figure("backtest_bias", r["bias"], labels), Figure("backtest_wape", r["wape"], labels)]
    levels = set()
    for r in _rows(tables.get("coverage")):
        if int(r["horizon"]) in keep:
            labels = (("population", str(r["population"])), ("horizon", str(int(r["horizon"]))))
            out.append(Figure("interval_coverage", r["coverage"], labels))
            levels.add(float(r["interval_level"]))
    out += [Figure("interval_level", level) for level in sorted(levels)[:1]]
    for r in _rows(tables.get("survival")):
        if int(r["horizon"]) in keep:
            labels = (("model", str(r["model_id"])), ("horizon", str(int(r["horizon"]))))
            out.append(Figure("survival_gap", r["gap"], labels))
    for r in _rows(tables.get("party_backtest")):  # with paths.parties only
        if r["size"] == "all" and int(r["horizon"]) in keep and r["model_id"] not in ("paid", "active"):
            labels = (
                ("level", str(r["level"])),
                ("model", str(r["model_id"])),
                ("horizon", str(int(r["horizon"]))),
            )
            out.append(Figure("party_backtest_bias", r["bias"], labels))
    for r in _rows(tables.get("party_coverage")):
        if int(r["horizon"]) in keep:
            labels = (("level", str(r["level"])), ("horizon", str(int(r["horizon"]))))
            out.append(Figure("party_interval_coverage", r["coverage"], labels))
    return [f for f in out if f.value is not None]


@_never_raises
def release_figures(quality: Iterable[Mapping[str, Any]]) -> list[Figure]:
    """A trained release's main metric per model beside its naive baseline."""
    out: list[Figure] = []
    for r in quality:
        labels = (("model", str(r["model_id"])), ("metric", str(r["metric"])))
        out += [Figure("model_quality", r["value"], labels), Figure("model_naive", r["naive"], labels)]
        if "agg_bias" in r:
            out.append(Figure("model_bias", r["agg_bias"], (("model", str(r["model_id"])),)))
        out.append(
            Figure("model_beats_naive", float(bool(r["beats_naive"])), (("model", str(r["model_id"])),))
        )
    return out


@_never_raises
def split_figures(splits: Mapping[str, Mapping[str, Any]]) -> list[Figure]:
    """Training-set rows in total and per split (a build-dataset manifest's `splits`)."""
    out = [Figure("split_rows", s["rows"], (("split", name),)) for name, s in splits.items()]
    return [Figure("rows", sum(float(s["rows"]) for s in splits.values())), *out]


__all__ = [
    "Figure",
    "build_registry",
    "job_name",
    "monitor_figures",
    "push_job_exit",
    "push_job_metrics",
    "release_figures",
    "score_figures",
    "split_figures",
]
