"""File operations through Hadoop's FileSystem API, so the same code runs on hdfs://, s3a:// and file://.

Outputs are written to a staging directory beside the target and swapped in, so a reader never sees a
half-written partition and a rerun replaces it whole. One run at a time writes a target: it holds a
lease, a lock file beside the target created atomically (O_EXCL on the local file system, `create` without
overwrite on HDFS) and kept fresh by a heartbeat. A second run fails fast with `Busy` (exit 75, retried
later); a lock whose owner is gone (its process is dead, or its heartbeat stopped `stale_after` seconds
ago) is taken over. Only the lease holder cleans up leftovers, which therefore belong to dead runs, and a
run swaps its staging in only while it still holds the lease and the staging is whole.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from py4j.protocol import Py4JJavaError
from pyspark.sql import DataFrame, SparkSession

from spark_app.errors import Busy

log = logging.getLogger(__name__)

SUCCESS = "_SUCCESS"
LOCK_HEARTBEAT_SECONDS = 20.0
LOCK_STALE_SECONDS = 300.0  # a heartbeat older than this means the owner is gone


class LeaseLost(Busy):
    """This run no longer owns the target (another run took its lock over, or its staging vanished)."""


def _split(target: str) -> tuple[str, str]:
    return tuple(target.rsplit("/", 1)) if "/" in target else (".", target)  # type: ignore[return-value]


@dataclass
class Lease:
    """This run's ownership of `target`: the lock file holds `token`; a thread refreshes its time."""

    storage: Storage
    target: str
    lock: str
    token: str
    owner: dict[str, Any]
    lost: bool = False
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def _beat(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                if self.storage.lock_owner(self.lock).get("token") != self.token:
                    self.lost = True
                    log.error("lost the lock of %s to another run", self.target)
                    return
                self.storage.touch(self.lock)
            except Exception as exc:  # a missed beat is retried; a stale lock is only declared after minutes
                log.warning("heartbeat of %s failed: %s", self.lock, exc)

    def check(self) -> None:
        """Raise LeaseLost unless this run still owns the target."""
        owner = self.storage.lock_owner(self.lock) if not self.lost else {}
        if self.lost or owner.get("token") != self.token:
            self.lost = True
            raise LeaseLost(
                f"{self.target}: this run lost its lock to another run "
                f"({self.storage.describe_owner(owner)}); nothing was swapped in"
            )


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
            os.makedirs(os.path.dirname(local), exist_ok=True)
            try:
                fd = os.open(local, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(text)
            return True
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

    def has_success_marker(self, path: str) -> bool:
        return self.exists(f"{path.rstrip('/')}/{SUCCESS}")

    # ------------------------------------------------------------------ one writer per target
    def lock_owner(self, lock: str) -> dict[str, Any]:
        """The lock file's owner record, with `age` = seconds since its last heartbeat ({} if no lock)."""
        try:
            owner = json.loads(self.read_text(lock) or "{}")
            owner["age"] = time.time() - self.modified(lock)
            return owner
        except Py4JJavaError:  # removed meanwhile
            return {}
        except ValueError:  # half-written by a run killed while creating it
            return {"token": None, "age": time.time() - self.modified(lock)}

    @staticmethod
    def describe_owner(owner: dict[str, Any]) -> str:
        if not owner:
            return "no owner"
        age = owner.get("age")
        beat = f", last heartbeat {age:.0f}s ago" if age is not None else ""
        return f"host {owner.get('host')}, pid {owner.get('pid')}, since {owner.get('started')}{beat}"

    @staticmethod
    def _dead(owner: dict[str, Any], stale_after: float) -> bool:
        if owner.get("age", 0.0) > stale_after or owner.get("token") is None:
            return True
        if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int):
            try:
                os.kill(owner["pid"], 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
        return False

    @contextlib.contextmanager
    def lock(
        self,
        target: str,
        *,
        stale_after: float = LOCK_STALE_SECONDS,
        heartbeat: float = LOCK_HEARTBEAT_SECONDS,
    ) -> Iterator[Lease]:
        """Own `target` for the block: create its lock, or take over a dead owner's; raise Busy if a live
        run owns it. Leftovers of dead runs are recovered first (`recover`)."""
        target = target.rstrip("/")
        parent, name = _split(target)
        lock = f"{parent}/_lock-{name}"
        token = uuid.uuid4().hex[:12]
        owner = {
            "token": token,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        self.mkdirs(parent)
        for _ in range(3):
            if self.create_exclusive(lock, json.dumps(owner)):
                break
            current = self.lock_owner(lock)
            if current and not self._dead(current, stale_after):
                raise Busy(
                    f"{target} is being written by another run ({self.describe_owner(current)}); retry "
                    f"when it has finished, or delete {lock} if that run is gone"
                )
            with contextlib.suppress(Exception):  # one contender's rename wins; the others retry
                aside = f"{parent}/_lock-{name}-dead-{token}"
                self.rename(lock, aside)
                self.delete(aside)
                log.warning(
                    "took over the lock of %s from a dead run (%s)", target, self.describe_owner(current)
                )
        else:
            raise Busy(f"{target}: could not take its lock {lock}; retry")
        lease = Lease(self, target, lock, token, owner)
        lease._thread = threading.Thread(
            target=lease._beat, args=(heartbeat,), name=f"lease-{name}", daemon=True
        )
        lease._thread.start()
        try:
            self.recover(target, keep=token)
            yield lease
        finally:
            lease._stop.set()
            lease._thread.join(timeout=5)
            if not lease.lost and self.lock_owner(lock).get("token") == token:
                self.delete(lock)

    def recover(self, target: str, keep: str | None = None) -> None:
        """Undo what dead runs left: put back a retired target, drop their staging directories.

        Called by the lease holder, so every `_staging-`/`_retired-` directory of the target but this
        run's (`keep`) belongs to a run that is gone. Readers skip `_`-prefixed names, so leftovers never
        show as data; a run killed between the two renames of the swap leaves only `_retired-…`, which
        becomes the target again here.
        """
        parent, name = _split(target.rstrip("/"))
        leftovers = [
            n
            for n in self.list_dir(parent)
            if n.startswith((f"_staging-{name}-", f"_retired-{name}-")) and not (keep and n.endswith(keep))
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
    def staged(self, target: str, lease: Lease | None = None) -> Iterator[str]:
        """Yield a staging path beside `target`; on success swap it in, on failure drop it.

        Without a `lease`, the target's lock is held for the block. The previous `target` is renamed aside
        first and deleted only after the new one is in place, so a crash at any point leaves either the
        old or the new directory complete; what a killed run left behind is cleaned up by the next owner.
        """
        if lease is None:
            with self.lock(target) as own, self.staged(target, own) as staging:
                yield staging
            return
        target = target.rstrip("/")
        parent, name = _split(target)
        staging = f"{parent}/_staging-{name}-{lease.token}"
        retired = f"{parent}/_retired-{name}-{lease.token}"
        try:
            yield staging
            lease.check()
        except BaseException:
            self.delete(staging)
            raise
        if not self.exists(staging):
            raise LeaseLost(f"{target}: staging {staging} vanished before the swap; nothing was swapped in")
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
