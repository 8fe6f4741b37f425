"""`cltv wait-for-inputs`: the first step of the monthly DAG, light enough to run without a JVM.

A month's inputs are ready when both tables (features, facts) hold a complete `report_month=YYYY-MM-01`
partition. Complete means (see docs/cluster.md, "When is a partition complete"):

* the partition directory has its own `_SUCCESS` marker (a writer that lands one partition at a time), or
* the partition directory exists and holds at least one data file, the table root has `_SUCCESS`, no
  write is in progress under the root (`_temporary/`), and the root marker is not older than the
  partition directory — Spark writes `_SUCCESS` only at the table root, after its job commit, so a
  root marker left by an earlier write does not vouch for a partition that appeared after it.

hdfs:// paths are checked over WebHDFS (the `hdfs` package: InsecureClient, or KerberosClient when
`paths.kerberos` is true), anything else on the local filesystem. The same small filesystem layer lets
`cltv publish` write its marker without Spark.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from spark_app.config import ConfigError, PathsConfig, Settings
from spark_app.errors import InputsNotReady
from spark_app.layout import SUCCESS, input_partition
from spark_app.months import fmt

log = logging.getLogger(__name__)

IN_PROGRESS = ("_temporary",)
INPUT_TABLES = ("features", "facts")


@dataclass(frozen=True)
class Entry:
    """What the readiness check needs to know about a path: kind and modification time."""

    name: str
    is_dir: bool
    mtime_ms: int


class FileSystem(Protocol):
    def status(self, path: str) -> Entry | None: ...

    def list(self, path: str) -> list[Entry]: ...

    def write_text(self, path: str, text: str) -> None: ...


class LocalFileSystem:
    """Plain paths and file:// URIs."""

    @staticmethod
    def _local(path: str) -> Path:
        return Path(urlparse(path).path) if path.startswith("file:") else Path(path)

    def status(self, path: str) -> Entry | None:
        p = self._local(path)
        try:
            st = p.stat()
        except FileNotFoundError:
            return None
        return Entry(p.name, p.is_dir(), int(st.st_mtime * 1000))

    def list(self, path: str) -> list[Entry]:
        p = self._local(path)
        if not p.is_dir():
            return []
        return sorted(
            (Entry(c.name, c.is_dir(), int(c.stat().st_mtime * 1000)) for c in p.iterdir()),
            key=lambda e: e.name,
        )

    def write_text(self, path: str, text: str) -> None:
        p = self._local(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
        tmp.write_text(text)
        tmp.replace(p)


class WebHdfsFileSystem:
    """hdfs:// URIs through the NameNode's WebHDFS REST API (GETFILESTATUS, LISTSTATUS, CREATE)."""

    def __init__(self, client):
        self._client = client

    @staticmethod
    def hdfs_path(uri: str) -> str:
        """hdfs://nameservice/dwh/x and hdfs:///dwh/x → /dwh/x (the client talks to one NameNode URL)."""
        return urlparse(uri).path or "/"

    def status(self, path: str) -> Entry | None:
        st = self._client.status(self.hdfs_path(path), strict=False)
        if st is None:
            return None
        name = self.hdfs_path(path).rstrip("/").rsplit("/", 1)[-1]
        return Entry(name, st["type"] == "DIRECTORY", int(st["modificationTime"]))

    def list(self, path: str) -> list[Entry]:
        st = self.status(path)
        if st is None or not st.is_dir:
            return []
        return sorted(
            (
                Entry(name, s["type"] == "DIRECTORY", int(s["modificationTime"]))
                for name, s in self._client.list(self.hdfs_path(path), status=True)
            ),
            key=lambda e: e.name,
        )

    def write_text(self, path: str, text: str) -> None:
        self._client.write(self.hdfs_path(path), data=text.encode("utf-8"), overwrite=True)


def webhdfs_client(paths: PathsConfig):
    """An `hdfs` client for `paths.webhdfs_url`: Kerberos (SPNEGO, ticket cache) or simple auth."""
    if not paths.webhdfs_url:
        raise ConfigError(
            "paths.webhdfs_url is not set, but an input is on hdfs:// — set it to the NameNode's WebHDFS "
            "address (e.g. http://namenode:9870; several HA NameNodes separated by ';')"
        )
    if paths.kerberos:
        try:
            from hdfs.ext.kerberos import KerberosClient
        except ImportError as exc:
            raise ConfigError(
                f"paths.kerberos is true but Kerberos support is not installed ({exc}): "
                "pip install 'hdfs[kerberos]'"
            ) from None
        return KerberosClient(paths.webhdfs_url, timeout=30)
    from hdfs import InsecureClient

    return InsecureClient(paths.webhdfs_url, user=paths.webhdfs_user, timeout=30)


def filesystem_for(path: str, paths: PathsConfig) -> FileSystem:
    """The filesystem serving `path`: WebHDFS for hdfs://, local for plain paths and file://."""
    scheme = urlparse(path).scheme
    if scheme == "hdfs":
        return WebHdfsFileSystem(webhdfs_client(paths))
    if scheme in ("", "file") or len(scheme) == 1:  # one letter: a Windows drive
        return LocalFileSystem()
    raise ConfigError(
        f"wait-for-inputs checks hdfs:// and local paths only, not {scheme}:// ({path}); "
        "skip the step or use the Spark-based `cltv validate-inputs`"
    )


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
