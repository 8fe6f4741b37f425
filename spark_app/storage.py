"""File operations through Hadoop's FileSystem API, so the same code runs on hdfs://, s3a:// and file://.

Outputs are written to a staging directory beside the target and swapped in, so a reader never sees a
half-written partition and a rerun replaces it whole; one run at a time writes a target, under a lease
(spark_app.lease, whose primitives this class implements with Hadoop).
"""

from __future__ import annotations

import json
import time

from py4j.protocol import Py4JJavaError
from pyspark.sql import DataFrame, SparkSession

from spark_app.files import LocalFileSystem
from spark_app.lease import SUCCESS as SUCCESS
from spark_app.lease import Lease as Lease
from spark_app.lease import LeaseLost as LeaseLost
from spark_app.lease import LeaseStore


class Storage(LeaseStore):
    """Thin wrapper over org.apache.hadoop.fs.FileSystem for one SparkSession (leases: spark_app.lease)."""

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

    def local_path(self, path: str) -> str | None:
        """The OS path of a file:// location, else None."""
        uri = self._fs(path).makeQualified(self._path(path)).toUri()
        return str(uri.getPath()) if str(uri.getScheme()) == "file" else None

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

    def modified(self, path: str) -> float:
        """Modification time in seconds since the epoch."""
        return int(self._fs(path).getFileStatus(self._path(path)).getModificationTime()) / 1000.0

    def touch(self, path: str) -> None:
        """Set the modification time of an existing file to now (a heartbeat)."""
        self._fs(path).setTimes(self._path(path), int(time.time() * 1000), -1)

    def write_text(self, path: str, text: str) -> None:
        stream = self._fs(path).create(self._path(path), True)
        try:
            stream.write(bytearray(text.encode("utf-8")))
        finally:
            stream.close()

    def create_exclusive(self, path: str, text: str) -> bool:
        """Create `path` with `text` unless it exists, atomically: O_EXCL on the local file system (Hadoop's
        local `create` checks, then opens), `create(overwrite=false)` elsewhere (atomic on HDFS)."""
        local = self.local_path(path)
        if local is not None:
            return LocalFileSystem().create_exclusive(local, text)
        try:
            stream = self._fs(path).create(self._path(path), False)
        except Py4JJavaError as exc:
            if "FileAlreadyExistsException" in str(exc.java_exception) or "AlreadyBeingCreated" in str(exc):
                return False
            raise
        try:
            stream.write(bytearray(text.encode("utf-8")))
        finally:
            stream.close()
        return True

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


def write_parquet_staged(
    storage: Storage, df: DataFrame, target: str, *, partition_by: list[str] | None = None
) -> None:
    """Write `df` as Parquet to `target` through a staging directory."""
    with storage.staged(target) as staging:
        writer = df.write.mode("overwrite")
        if partition_by:
            writer = writer.partitionBy(*partition_by)
        writer.parquet(staging)
