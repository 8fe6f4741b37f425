"""`cltv wait-for-inputs`: the first step of the monthly DAG, light enough to run without a JVM.

A month's inputs are ready when both tables (features, facts) hold a complete `report_month=YYYY-MM-01`
partition. Complete means (see docs/cluster.md, "When is a partition complete"):

* the partition directory has its own `_SUCCESS` marker (a writer that lands one partition at a time), or
* the partition directory exists and holds at least one data file, the table root has `_SUCCESS`, no
  write is in progress under the root (`_temporary/`), and the root marker is not older than the
  partition directory — Spark writes `_SUCCESS` only at the table root, after its job commit, so a
  root marker left by an earlier write does not vouch for a partition that appeared after it.

hdfs:// paths are checked over WebHDFS, anything else on the local filesystem (spark_app.files).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from urllib.parse import urlparse

from spark_app.config import ConfigError, Settings
from spark_app.contract import InputContractError
from spark_app.errors import InputsNotReady
from spark_app.files import FileSystem, filesystem_for
from spark_app.layout import REPORT_MONTH, SUCCESS, input_partition
from spark_app.months import add_months, fmt

log = logging.getLogger(__name__)

IN_PROGRESS = ("_temporary",)
INPUT_TABLES = ("features", "facts")


def partition_problem(fs: FileSystem, table: str, table_root: str, month: dt.date) -> str | None:
    """None when the table's partition for `month` is complete, else what is missing, naming the path."""
    part = input_partition(table_root, month)
    part_status = fs.status(part)
    if part_status is None or not part_status.is_dir:
        return f"{table}: partition {part} does not exist"
    entries = fs.list(part)
    if any(e.name == SUCCESS and not e.is_dir for e in entries):
        return None
    if not any(not e.is_dir and not e.name.startswith(("_", ".")) for e in entries):
        return f"{table}: partition {part} holds no data files yet"
    root_entries = {e.name: e for e in fs.list(table_root)}
    writing = [name for name in IN_PROGRESS if name in root_entries]
    if writing:
        return f"{table}: a write is in progress under {table_root} ({writing[0]}/ exists)"
    marker = root_entries.get(SUCCESS)
    if marker is None:
        return f"{table}: no {SUCCESS} in {part} nor at the table root {table_root}"
    if marker.mtime_ms < part_status.mtime_ms:
        return (
            f"{table}: {table_root}/{SUCCESS} is older than {part} "
            "(left by an earlier write; waiting for the writer's marker)"
        )
    return None


def input_problems(settings: Settings, month: dt.date) -> list[str]:
    """Every reason the month's inputs are not ready yet (empty when both partitions are complete)."""
    problems = []
    for table in INPUT_TABLES:
        root = getattr(settings.paths, table)
        fs = filesystem_for(root, settings.paths)
        try:
            problem = partition_problem(fs, table, root, month)
        except ConfigError:
            raise
        except Exception as exc:  # NameNode down, HTTP error, permission: not ready yet, say why
            problem = f"{table}: cannot check {root}: {type(exc).__name__}: {exc}"
        if problem:
            problems.append(problem)
    return problems


def wait_for_inputs(settings: Settings, month: dt.date, timeout: float, poll: float) -> None:
    """Return once both input partitions of `month` are complete; raise InputsNotReady after `timeout` s."""
    deadline = time.monotonic() + max(timeout, 0.0)
    last: list[str] = []
    while True:
        problems = input_problems(settings, month)
        if not problems:
            log.info("inputs for %s are complete (features, facts)", fmt(month))
            return
        if problems != last:
            log.info("inputs for %s not ready: %s", fmt(month), "; ".join(problems))
            last = problems
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise InputsNotReady(
                f"inputs for {fmt(month)} not ready after {timeout:g} s:\n  " + "\n  ".join(problems)
            )
        time.sleep(min(max(poll, 0.01), remaining))


# ------------------------------------------------------------------ which months exist, without a JVM
def month_dirs(fs: FileSystem, root: str, column: str) -> dict[dt.date, str]:
    """`column=YYYY-MM-01` directories directly under `root`, by month (other names ignored)."""
    pattern = re.compile(rf"{re.escape(column)}=([0-9]{{4}})-([0-9]{{2}})(?:-01)?")  # as contract.month_dirs
    found: dict[dt.date, str] = {}
    for entry in fs.list(root):
        m = pattern.fullmatch(entry.name)
        if entry.is_dir and m and 1 <= int(m.group(2)) <= 12:
            found[dt.date(int(m.group(1)), int(m.group(2)), 1)] = entry.name
    return found


def month_ranges(months: list[dt.date] | set[dt.date]) -> str:
    """[2022-01, 2022-02, 2022-03, 2022-05] → '2022-01..2022-03, 2022-05' (runs of consecutive months)."""
    ordered = sorted(set(months))
    if not ordered:
        return "none"
    runs: list[tuple[dt.date, dt.date]] = []
    for m in ordered:
        if runs and add_months(runs[-1][1], 1) == m:
            runs[-1] = (runs[-1][0], m)
        else:
            runs.append((m, m))
    return ", ".join(fmt(a) if a == b else f"{fmt(a)}..{fmt(b)}" for a, b in runs)


def listable(root: str) -> bool:
    """Whether the steps without a JVM can list `root` (local paths, file://, hdfs://)."""
    scheme = urlparse(root).scheme
    return scheme in ("", "file", "hdfs") or len(scheme) == 1


def require_months(settings: Settings, needs: dict[str, list[dt.date]], context: str) -> None:
    """Before a Spark session starts: raise the input contract's error (exit 2, `<table>: months missing
    [...]`, with the months there are) when a needed month's partition directory is absent from an input
    table. Cheap — one listing per table — so a month that has not arrived fails in a second or two
    instead of after Spark and MLflow start; a table that cannot be listed here (s3a://, hdfs:// without
    `paths.webhdfs_url`) is left to the job's own check."""
    problems = []
    for table, months in needs.items():
        root = getattr(settings.paths, table)
        if not months or not listable(root) or (root.startswith("hdfs:") and not settings.paths.webhdfs_url):
            continue
        try:
            present = set(month_dirs(filesystem_for(root, settings.paths), root, REPORT_MONTH))
        except Exception as exc:  # a NameNode down, a permission: not this check's to judge
            log.debug("cannot list %s before the job (%s); the job checks it", root, exc)
            continue
        missing = [m for m in months if m not in present]
        if missing:
            problems.append(
                f"{table}: months missing [{month_ranges(missing)}] under {root} "
                f"(present: {month_ranges(present)})"
            )
    if problems:
        raise InputContractError(f"input contract violated ({context}):\n  " + "\n  ".join(problems))
