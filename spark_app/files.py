"""File operations without a JVM: local paths and file:// URIs, hdfs:// through WebHDFS.

For the steps that run no Spark — `cltv wait-for-inputs` (is a month's partition complete?), `cltv
publish` (the `_PUBLISHED` marker) and `cltv promote` (the promotion lease) — on the same paths the Spark
jobs use. hdfs:// goes through the NameNode's WebHDFS REST API (the `hdfs` package: InsecureClient, or
KerberosClient when `paths.kerberos` is true). Both file systems implement the lease primitives of
spark_app.lease; create-if-absent is atomic on both (O_EXCL; WebHDFS CREATE without overwrite).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from spark_app.config import ConfigError, PathsConfig
from spark_app.lease import LeaseStore


@dataclass(frozen=True)
class Entry:
    """What the readiness check needs to know about a path: kind and modification time."""

    name: str
    is_dir: bool
    mtime_ms: int


class FileSystem(Protocol):
    """What wait-for-inputs and publish need; both implementations are also LeaseStores."""

    def status(self, path: str) -> Entry | None: ...

    def list(self, path: str) -> list[Entry]: ...

    def write_text(self, path: str, text: str) -> None: ...


class LocalFileSystem(LeaseStore):
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

    # lease primitives
    def exists(self, path: str) -> bool:
        return self._local(path).exists()

    def list_dir(self, path: str) -> list[str]:
        p = self._local(path)
        return sorted(c.name for c in p.iterdir()) if p.is_dir() else []

    def delete(self, path: str) -> None:
        p = self._local(path)
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()

    def mkdirs(self, path: str) -> None:
        self._local(path).mkdir(parents=True, exist_ok=True)

    def rename(self, src: str, dst: str) -> None:
        target = self._local(dst)
        if target.exists():
            raise OSError(f"rename failed: {dst} exists")
        os.rename(self._local(src), target)

    def modified(self, path: str) -> float:
        return self._local(path).stat().st_mtime

    def touch(self, path: str) -> None:
        os.utime(self._local(path))

    def read_text(self, path: str) -> str:
        return self._local(path).read_text(encoding="utf-8")

    def create_exclusive(self, path: str, text: str) -> bool:
        p = self._local(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        return True


class WebHdfsFileSystem(LeaseStore):
    """hdfs:// URIs through the NameNode's WebHDFS REST API (GETFILESTATUS, LISTSTATUS, CREATE, ...)."""

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

    # lease primitives
    def exists(self, path: str) -> bool:
        return self.status(path) is not None

    def list_dir(self, path: str) -> list[str]:
        return [e.name for e in self.list(path)]

    def delete(self, path: str) -> None:
        self._client.delete(self.hdfs_path(path), recursive=True)

    def mkdirs(self, path: str) -> None:
        self._client.makedirs(self.hdfs_path(path))

    def rename(self, src: str, dst: str) -> None:
        if self.exists(dst):
            raise OSError(f"rename failed: {dst} exists")
        self._client.rename(self.hdfs_path(src), self.hdfs_path(dst))

    def modified(self, path: str) -> float:
        st = self.status(path)
        if st is None:
            raise FileNotFoundError(path)
        return st.mtime_ms / 1000.0

    def touch(self, path: str) -> None:
        self._client.set_times(self.hdfs_path(path), modification_time=int(time.time() * 1000))

    def read_text(self, path: str) -> str:
        with self._client.read(self.hdfs_path(path)) as reader:
            return reader.read().decode("utf-8")

    def create_exclusive(self, path: str, text: str) -> bool:
        from hdfs.util import HdfsError

        try:
            self._client.write(self.hdfs_path(path), data=text.encode("utf-8"), overwrite=False)
        except HdfsError as exc:
            if "AlreadyExists" in str(exc) or "already exists" in str(exc):
                return False
            raise
        return True


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
        f"the steps without Spark (wait-for-inputs, publish, promote) reach hdfs:// and local paths only, "
        f"not {scheme}:// ({path}); skip wait-for-inputs or use the Spark-based `cltv validate-inputs`"
    )
