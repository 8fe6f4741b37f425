"""`cltv status`: what the system holds, read from what the jobs write — in a second, without a JVM.

An on-call engineer's first question ("which months are scored, monitored, published; with which
release; is anything locked; can next month run?") answered from the registry and the files:

* releases: the registered model's versions, their aliases and the promotion gate's decision tags
  (`promotion.decision`, `.reason`, `.at`, `.overridden`, set by `cltv promote`);
* months: `{paths.scores}/score_month=M/` (`_SUCCESS`, `_summary.json`: rows, release; `_PUBLISHED`),
  `{paths.monitoring}/month=M/` (`_SUCCESS`, `summary.json`: status, release) and the review page
  `{paths.monitoring}/reports/cltv-report-M.html` (spark_app.layout), newest first;
* locks: the lease files (`_lock-…`, spark_app.lease) beside the outputs, with their owners;
* inputs: the months of both input tables, and whether the next month's partitions are complete
  (spark_app.inputs_ready, the check `cltv wait-for-inputs` makes).

Files are read through spark_app.files (local paths, file://, hdfs:// over WebHDFS). The registry is read
through spark_app.tracking; a store that cannot be reached is reported, and the command exits 75.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from spark_app.config import ConfigError, Settings
from spark_app.files import FileSystem, filesystem_for
from spark_app.inputs_ready import INPUT_TABLES, input_problems, listable, month_dirs, month_ranges
from spark_app.layout import (
    CAMPAIGN,
    MONITOR_MONTH,
    PUBLISHED,
    REPORT_MONTH,
    SCORE_MONTH,
    SCORE_SUMMARY,
    SUCCESS,
    datasets_root,
    monitoring_dir,
    report_file,
    scores_dir,
)
from spark_app.lease import LOCK_STALE_SECONDS, LeaseStore
from spark_app.months import add_months, fmt
from spark_app.redact import redact

log = logging.getLogger(__name__)

MONITOR_SUMMARY = "summary.json"  # what monitor_month writes beside its tables
PROMOTION_TAGS = ("decision", "reason", "at", "overridden", "compared_with")  # `promotion.<x>` version tags
MAX_RELEASES = 20  # the newest versions listed


@dataclass
class MonthStatus:
    """One month's outputs: scores, monitoring, review page, publication."""

    month: str
    scores: str = "none"  # complete | incomplete (no _SUCCESS) | none
    rows: int | None = None
    release: str | None = None  # the release the scores were made with
    monitor: str = "none"  # ok | warn | fail | incomplete | none
    monitor_release: str | None = None
    report: bool = False
    published_at: str | None = None

    @property
    def state(self) -> str:
        """One word for the month, from the furthest step it reached."""
        if self.published_at:
            return "published"
        if self.monitor not in ("none", "incomplete"):
            return f"monitored ({self.monitor})"
        if self.scores == "complete":
            return "scored"
        if self.scores == "incomplete" or self.monitor == "incomplete":
            return "incomplete"
        return "none"


@dataclass
class Lock:
    path: str
    held: bool  # a live owner (else stale: the next run takes it over)
    owner: str


@dataclass
class Status:
    model_name: str
    registry: str  # masked URI
    releases: list[dict[str, Any]] | None = None  # None: the registry could not be read
    aliases: dict[str, int] = field(default_factory=dict)
    registry_error: str | None = None
    months: list[MonthStatus] = field(default_factory=list)
    locks: list[Lock] = field(default_factory=list)
    inputs: dict[str, str] = field(default_factory=dict)  # table → its months, as ranges
    next_month: str | None = None
    next_inputs: list[str] = field(default_factory=list)  # problems; [] = ready
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The same as the table, for scripts (`--json`)."""
        out = asdict(self)
        out["months"] = [{**asdict(m), "state": m.state} for m in self.months]
        out["next_inputs_ready"] = self.next_month is not None and not self.next_inputs
        return out


# ------------------------------------------------------------------ files
def _fs(root: str, settings: Settings, notes: list[str]) -> FileSystem | None:
    """The filesystem of `root`, or None (with a note) when this step cannot list it."""
    if not listable(root):
        notes.append(f"{redact(root)}: cannot be listed without Spark (only local, file:// and hdfs://)")
        return None
    try:
        return filesystem_for(root, settings.paths)
    except ConfigError as exc:
        notes.append(str(exc))
        return None


def _read_json(fs: FileSystem, path: str) -> dict[str, Any]:
    try:
        data = json.loads(fs.read_text(path))  # type: ignore[attr-defined]
    except Exception as exc:  # absent, half-written, unreadable: the month says what it can
        log.debug("cannot read %s: %s", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def month_statuses(settings: Settings, notes: list[str]) -> list[MonthStatus]:
    """Every month with scores or monitoring output, newest first."""
    paths = settings.paths
    months: dict[dt.date, MonthStatus] = {}

    def at(month: dt.date) -> MonthStatus:
        return months.setdefault(month, MonthStatus(fmt(month)))

    fs = _fs(paths.scores, settings, notes)
    if fs is not None:
        for month in month_dirs(fs, paths.scores, SCORE_MONTH):
            target = scores_dir(paths, month)
            names = {e.name for e in fs.list(target)}
            row = at(month)
            row.scores = "complete" if SUCCESS in names else "incomplete"
            if SCORE_SUMMARY in names:
                summary = _read_json(fs, f"{target}/{SCORE_SUMMARY}")
                row.rows = summary.get("rows")
                row.release = (
                    None if summary.get("release_version") is None else str(summary["release_version"])
                )
            if PUBLISHED in names:
                record = _read_json(fs, f"{target}/{PUBLISHED}")
                row.published_at = str(record.get("published_at") or "yes")
    fs = _fs(paths.monitoring, settings, notes)
    if fs is not None:
        for month in month_dirs(fs, paths.monitoring, MONITOR_MONTH):
            target = monitoring_dir(paths, month)
            names = {e.name for e in fs.list(target)}
            row = at(month)
            if SUCCESS not in names:
                row.monitor = "incomplete"
                continue
            summary = _read_json(fs, f"{target}/{MONITOR_SUMMARY}")
            row.monitor = str(summary.get("status") or "unknown")
            row.monitor_release = summary.get("release_version")
        for month, row in months.items():
            row.report = fs.status(report_file(paths, month)) is not None
    return [months[m] for m in sorted(months, reverse=True)]


def lock_roots(settings: Settings) -> list[str]:
    """Where leases live: beside the month partitions, the training sets (and the promotion lease), and
    inside each campaign's directories."""
    paths = settings.paths
    roots = [paths.scores, paths.monitoring, datasets_root(paths)]
    for root in (paths.campaigns, paths.contacts):
        roots.append(root)
        fs = _fs(root, settings, [])
        for entry in fs.list(root) if fs is not None else []:
            if entry.is_dir and entry.name.startswith(f"{CAMPAIGN}="):
                inner = f"{root.rstrip('/')}/{entry.name}"
                roots += [inner, f"{inner}/evaluation"]
    return roots


def held_locks(settings: Settings, notes: list[str]) -> list[Lock]:
    """Every lease file under the output roots, with its owner and whether that owner is alive."""
    locks = []
    for root in lock_roots(settings):
        fs = _fs(root, settings, [])
        if not isinstance(fs, LeaseStore):
            continue
        for entry in fs.list(root):
            if entry.is_dir or not entry.name.startswith("_lock-") or "-dead-" in entry.name:
                continue
            path = f"{root.rstrip('/')}/{entry.name}"
            try:
                owner = fs.lock_owner(path)
            except Exception as exc:  # unreadable: said, the rest still shown
                notes.append(f"lock {path}: cannot read its owner ({exc})")
                continue
            if owner:
                alive = not LeaseStore._dead(owner, LOCK_STALE_SECONDS)
                locks.append(Lock(path, alive, LeaseStore.describe_owner(owner)))
    return locks


def input_months(settings: Settings, notes: list[str]) -> dict[str, list[dt.date]]:
    out: dict[str, list[dt.date]] = {}
    for table in INPUT_TABLES:
        root = getattr(settings.paths, table)
        fs = _fs(root, settings, notes)
        if fs is not None:
            try:
                out[table] = sorted(month_dirs(fs, root, REPORT_MONTH))
            except Exception as exc:  # a NameNode down: said, the rest still shown
                notes.append(f"{table}: cannot list {redact(root)}: {type(exc).__name__}: {exc}")
    return out


# ------------------------------------------------------------------ registry
def _sqlite_file(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI (None for other stores)."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def read_releases(settings: Settings) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The newest MAX_RELEASES versions of the registered model (version, aliases, created, promotion
    tags, run) and its aliases. Raises Unreachable when the store cannot be reached."""
    cfg = settings.mlflow
    db = _sqlite_file(cfg.registry_uri or cfg.tracking_uri)
    if db is not None and not db.exists():  # reading must not create an empty store
        return [], {}
    from spark_app import tracking  # MLflow's import takes seconds: only when there is a store to read

    with tracking.reaching(cfg, "the MLflow registry"):
        from mlflow.exceptions import MlflowException

        client = tracking.client(cfg)
        try:
            registered = client.get_registered_model(cfg.model_name)
        except MlflowException as exc:
            if tracking.is_not_found(exc):
                return [], {}
            raise
        aliases = {a: int(v) for a, v in (getattr(registered, "aliases", {}) or {}).items()}
        versions = client.search_model_versions(f"name='{cfg.model_name}'")
    by_version: dict[int, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(version, []).append(alias)
    releases = []
    for mv in sorted(versions, key=lambda v: int(v.version), reverse=True)[:MAX_RELEASES]:
        tags = mv.tags or {}
        created = dt.datetime.fromtimestamp(int(mv.creation_timestamp) / 1000, dt.timezone.utc)
        releases.append({
            "version": int(mv.version),
            "aliases": sorted(by_version.get(int(mv.version), [])),
            "created": created.isoformat(timespec="seconds"),
            "dataset_id": tags.get("dataset_id"),
            "sealed": bool(tags.get("sha256")),
            "run_id": mv.run_id,
            "promotion": {k: tags[f"promotion.{k}"] for k in PROMOTION_TAGS if f"promotion.{k}" in tags},
        })  # fmt: skip
    return releases, aliases


# ------------------------------------------------------------------ the whole picture
def collect_status(settings: Settings) -> Status:
    """Releases, months, locks and inputs, each part said even when another cannot be read."""
    from spark_app.errors import Unreachable

    started = time.perf_counter()
    cfg = settings.mlflow
    status = Status(cfg.model_name, redact(cfg.registry_uri or cfg.tracking_uri))
    try:
        status.releases, status.aliases = read_releases(settings)
    except Unreachable as exc:
        status.registry_error = str(exc)
    status.months = month_statuses(settings, status.notes)
    status.locks = held_locks(settings, status.notes)
    present = input_months(settings, status.notes)
    status.inputs = {table: month_ranges(months) for table, months in present.items()}
    scored = [m for m in status.months if m.scores == "complete"]
    if scored:
        status.next_month = fmt(add_months(dt.date.fromisoformat(scored[0].month + "-01"), 1))
    elif present.get("features"):
        status.next_month = fmt(present["features"][-1])  # nothing scored yet: the newest input month
    if status.next_month is not None:
        month = dt.date.fromisoformat(status.next_month + "-01")
        try:
            status.next_inputs = input_problems(settings, month)
        except ConfigError as exc:
            status.next_inputs = [str(exc)]
    status.seconds = time.perf_counter() - started
    return status


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()  # noqa: E731
    return [line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def render(status: Status) -> str:
    """The status as text for people: four short sections, aligned columns."""
    out = [f"releases of {status.model_name!r} ({status.registry})"]
    if status.registry_error:
        out.append(f"  UNREACHABLE: {status.registry_error}")
    elif not status.releases:
        out.append("  none registered yet (cltv train)")
    else:
        rows = []
        for r in status.releases:
            promo = r["promotion"]
            gate = promo.get("decision", "not judged")
            if promo.get("overridden") == "true":
                gate += " (gate overridden)"
            reason = promo.get("reason", "")
            rows.append([
                f"v{r['version']}", ", ".join(r["aliases"]) or "-", r["created"][:16].replace("T", " "),
                gate, (reason[:90] + "…") if len(reason) > 90 else reason,
            ])  # fmt: skip
        out += ["  " + s for s in _table(["version", "aliases", "registered", "gate", "reason"], rows)]
    out += ["", "months (newest first)"]
    if status.months:
        rows = [
            [m.month, m.state, m.scores, f"{m.rows:,}" if m.rows is not None else "-",
             f"v{m.release}" if m.release else "-", m.monitor, "yes" if m.report else "-",
             (m.published_at or "-")[:16].replace("T", " ")]
            for m in status.months
        ]  # fmt: skip
        headers = ["month", "state", "scores", "rows", "release", "monitor", "report", "published"]
        out += ["  " + s for s in _table(headers, rows)]
    else:
        out.append("  nothing scored or monitored yet")
    out += ["", "locks"]
    if status.locks:
        for lock in status.locks:
            state = "HELD" if lock.held else "stale (its owner is gone; the next run takes it over)"
            out.append(f"  {lock.path}: {state} — {lock.owner}")
    else:
        out.append("  none held")
    out += ["", "inputs"]
    for table, ranges in status.inputs.items():
        out.append(f"  {table:<9} {ranges}")
    if status.next_month is None:
        out.append("  next month: unknown (no scores and no input months)")
    elif not status.next_inputs:
        out.append(f"  next month {status.next_month}: inputs complete (features, facts)")
    else:
        out.append(f"  next month {status.next_month}: not ready")
        out += [f"    {p}" for p in status.next_inputs]
    if status.notes:
        out += ["", "notes", *(f"  {n}" for n in status.notes)]
    return "\n".join(out) + "\n"
