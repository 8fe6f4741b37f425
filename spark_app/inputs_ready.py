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
import time

from spark_app.config import ConfigError, Settings
from spark_app.errors import InputsNotReady
from spark_app.files import FileSystem, filesystem_for
from spark_app.layout import SUCCESS, input_partition
from spark_app.months import fmt

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
