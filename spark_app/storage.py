"""File operations through Hadoop's FileSystem API, so the same code runs on hdfs://, s3a:// and file://.

Outputs are written to a staging directory beside the target and swapped in, so a reader never sees a
half-written partition and a rerun replaces it whole.
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from collections.abc import Iterator

from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

SUCCESS = "_SUCCESS"


class Storage:
    """Thin wrapper over org.apache.hadoop.fs.FileSystem for one SparkSession."""

    def __init__(self, spark: SparkSession):
        self._jvm = spark.sparkContext._jvm
        self._conf = spark.sparkContext._jsc.hadoopConfiguration()

    def _path(self, path: str):
        return self._jvm.org.apache.hadoop.fs.Path(path)

    def _fs(self, path: str):
        return self._path(path).getFileSystem(self._conf)

    def qualify(self, path: str) -> str:
        """Absolute URI of `path` (relative local paths resolve against the working directory)."""
        p = self._path(path)
        return str(self._fs(path).makeQualified(p).toString())

    def exists(self, path: str) -> bool:
        return bool(self._fs(path).exists(self._path(path)))

    def list_dir(self, path: str) -> list[str]:
        """Names of the entries directly under `path` (empty when it does not exist)."""
        if not self.exists(path):
            return []
        return sorted(str(s.getPath().getName()) for s in self._fs(path).listStatus(self._path(path)))

    def delete(self, path: str) -> None:
        if self.exists(path):
            self._fs(path).delete(self._path(path), True)

    def mkdirs(self, path: str) -> None:
        self._fs(path).mkdirs(self._path(path))

    def rename(self, src: str, dst: str) -> None:
        if not self._fs(src).rename(self._path(src), self._path(dst)):
            raise OSError(f"rename failed: {src} -> {dst}")

    def write_text(self, path: str, text: str) -> None:
        stream = self._fs(path).create(self._path(path), True)
        try:
            stream.write(bytearray(text.encode("utf-8")))
        finally:
            stream.close()

    def read_text(self, path: str) -> str:
        fs = self._fs(path)
        p = self._path(path)
        length = int(fs.getFileStatus(p).getLen())
        stream = fs.open(p)
        try:
            buf = self._jvm.java.io.ByteArrayOutputStream()
            self._jvm.org.apache.hadoop.io.IOUtils.copyBytes(stream, buf, max(length, 1), False)
            return bytes(buf.toByteArray()).decode("utf-8")
        finally:
            stream.close()

    def write_json(self, path: str, obj: object) -> None:
        self.write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str))

    def read_json(self, path: str) -> object:
        return json.loads(self.read_text(path))

    def has_success_marker(self, path: str) -> bool:
        return self.exists(f"{path.rstrip('/')}/{SUCCESS}")

    def recover(self, target: str) -> None:
        """Undo a run killed inside `staged`: put back a retired target, drop stale staging directories.

        Readers skip `_`-prefixed directories, so leftovers never show as data; a killed run between the
        two renames of the swap leaves only `_retired-…`, which becomes the target again here. Two live
        runs of one target are not supported (the monthly DAG holds a mutex per month).
        """
        parent, name = target.rsplit("/", 1) if "/" in target else (".", target)
        leftovers = [
            n for n in self.list_dir(parent) if n.startswith((f"_staging-{name}-", f"_retired-{name}-"))
        ]
        retired = sorted(n for n in leftovers if n.startswith("_retired-"))
        if retired and not self.exists(target):
            self.rename(f"{parent}/{retired[-1]}", target)
            log.warning("restored %s from %s, left by a run killed during its swap", target, retired[-1])
            leftovers.remove(retired[-1])
        for leftover in leftovers:
            self.delete(f"{parent}/{leftover}")
            log.warning("removed %s/%s, left by a killed run", parent, leftover)

    @contextlib.contextmanager
    def staged(self, target: str) -> Iterator[str]:
        """Yield a staging path beside `target`; on success swap it in, on failure drop it.

        The previous `target` is renamed aside first and deleted only after the new one is in place,
        so a crash at any point leaves either the old or the new directory complete; what a killed run
        left behind is cleaned up by the next run of the same target (`recover`).
        """
        target = target.rstrip("/")
        token = uuid.uuid4().hex[:8]
        parent, name = target.rsplit("/", 1) if "/" in target else (".", target)
        staging = f"{parent}/_staging-{name}-{token}"
        retired = f"{parent}/_retired-{name}-{token}"
        self.mkdirs(parent)
        self.recover(target)
        try:
            yield staging
        except BaseException:
            self.delete(staging)
            raise
        if not self.has_success_marker(staging):
            self.write_text(f"{staging}/{SUCCESS}", "")
        had_previous = self.exists(target)
        if had_previous:
            self.rename(target, retired)
        self.rename(staging, target)
        if had_previous:
            self.delete(retired)
        log.info("swapped in %s", target)


def write_parquet_staged(
    storage: Storage, df: DataFrame, target: str, *, partition_by: list[str] | None = None
) -> None:
    """Write `df` as Parquet to `target` through a staging directory."""
    with storage.staged(target) as staging:
        writer = df.write.mode("overwrite")
        if partition_by:
            writer = writer.partitionBy(*partition_by)
        writer.parquet(staging)
