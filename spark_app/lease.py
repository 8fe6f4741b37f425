"""One writer per target, on any file system that can create a file atomically.

A run that writes a target (a month's partition, a training set) or changes the registry (promotion) holds
a lease: a lock file beside the target created atomically (O_EXCL on the local file system, `create`
without overwrite on HDFS) and kept fresh by a heartbeat. A second run fails fast with `Busy` (exit 75,
retried later) or waits for it (`wait`); a lock whose owner is gone (its process is dead, or its heartbeat
stopped `stale_after` seconds ago) is taken over. Only the lease holder cleans up leftovers, which
therefore belong to dead runs, and a run swaps its staging in only while it still holds the lease and the
staging is whole.

`LeaseStore` holds the algorithm over a few primitives; `storage.Storage` implements them with Hadoop's
FileSystem (in a Spark job), `files` without a JVM (local paths, WebHDFS) for the steps that run none.
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

from spark_app.errors import Busy

log = logging.getLogger(__name__)

SUCCESS = "_SUCCESS"
LOCK_HEARTBEAT_SECONDS = 20.0
LOCK_STALE_SECONDS = 300.0  # a heartbeat older than this means the owner is gone
LOCK_POLL_SECONDS = 2.0  # how often a waiting run looks at the lock again


class LeaseLost(Busy):
    """This run no longer owns the target (another run took its lock over, or its staging vanished)."""


def _split(target: str) -> tuple[str, str]:
    return tuple(target.rsplit("/", 1)) if "/" in target else (".", target)  # type: ignore[return-value]


@dataclass
class Lease:
    """This run's ownership of `target`: the lock file holds `token`; a thread refreshes its time."""

    storage: LeaseStore
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


class LeaseStore:
    """The lease and the staged swap over file primitives a subclass provides."""

    # ------------------------------------------------------------------ primitives
    def exists(self, path: str) -> bool:
        raise NotImplementedError

    def list_dir(self, path: str) -> list[str]:
        raise NotImplementedError

    def delete(self, path: str) -> None:
        raise NotImplementedError

    def mkdirs(self, path: str) -> None:
        raise NotImplementedError

    def rename(self, src: str, dst: str) -> None:
        raise NotImplementedError

    def modified(self, path: str) -> float:
        raise NotImplementedError

    def touch(self, path: str) -> None:
        raise NotImplementedError

    def read_text(self, path: str) -> str:
        raise NotImplementedError

    def write_text(self, path: str, text: str) -> None:
        raise NotImplementedError

    def create_exclusive(self, path: str, text: str) -> bool:
        """Create `path` holding `text` unless it exists, atomically; False when it existed."""
        raise NotImplementedError

    def has_success_marker(self, path: str) -> bool:
        return self.exists(f"{path.rstrip('/')}/{SUCCESS}")

    # ------------------------------------------------------------------ one writer per target
    def lock_owner(self, lock: str) -> dict[str, Any]:
        """The lock file's owner record, with `age` = seconds since its last heartbeat ({} if no lock)."""
        try:
            text = self.read_text(lock)
            age = time.time() - self.modified(lock)
        except Exception:
            if not self.exists(lock):  # removed meanwhile
                return {}
            raise
        try:
            owner = json.loads(text or "{}")
        except ValueError:  # half-written by a run killed while creating it
            return {"token": None, "age": age}
        owner["age"] = age
        return owner

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
        wait: float = 0.0,
    ) -> Iterator[Lease]:
        """Own `target` for the block: create its lock, or take over a dead owner's; raise Busy if a live
        run owns it (after waiting up to `wait` seconds for it to finish). Leftovers of dead runs are
        recovered first (`recover`)."""
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
        deadline = time.monotonic() + max(wait, 0.0)
        waited = False
        for _ in range(3):
            if self.create_exclusive(lock, json.dumps(owner)):
                break
            current = self.lock_owner(lock)
            while current and not self._dead(current, stale_after) and time.monotonic() < deadline:
                if not waited:
                    log.info("%s is held by another run (%s); waiting up to %.0fs", target,
                             self.describe_owner(current), wait)  # fmt: skip
                    waited = True
                time.sleep(min(LOCK_POLL_SECONDS, max(deadline - time.monotonic(), 0.0)))
                if self.create_exclusive(lock, json.dumps(owner)):
                    current = None
                    break
                current = self.lock_owner(lock)
            if current is None:
                break
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


