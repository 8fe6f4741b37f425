"""wait-for-inputs without a JVM: local paths, and hdfs:// over a loopback WebHDFS server on a temp dir."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from spark_app.config import ConfigError, PathsConfig, Settings, load_settings
from spark_app.files import WebHdfsFileSystem, filesystem_for, webhdfs_client
from spark_app.inputs_ready import InputsNotReady, input_problems, wait_for_inputs

CONF = Path(__file__).resolve().parent.parent / "conf"
MONTH = dt.date(2026, 4, 1)
PART = "report_month=2026-04-01"


class WebHdfsStub(BaseHTTPRequestHandler):
    """The WebHDFS calls the project makes (GETFILESTATUS, LISTSTATUS, CREATE), served from `root`."""

    root: Path
    requests: list[tuple[str, str, dict[str, list[str]]]]

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def _reply(self, code: int, body: dict | None = None, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _target(self) -> tuple[Path, str, dict[str, list[str]]]:
        url = urlparse(self.path)
        assert url.path.startswith("/webhdfs/v1/")
        hdfs_path = url.path[len("/webhdfs/v1") :]
        query = parse_qs(url.query)
        self.requests.append((self.command, hdfs_path, query))
        return self.root / hdfs_path.lstrip("/"), hdfs_path, query

    @staticmethod
    def _status(p: Path, suffix: str) -> dict:
        st = p.stat()
        return {
            "pathSuffix": suffix,
            "type": "DIRECTORY" if p.is_dir() else "FILE",
            "length": 0 if p.is_dir() else st.st_size,
            "modificationTime": int(st.st_mtime * 1000),
            "accessTime": 0,
            "blockSize": 134217728,
            "owner": "hdfs",
            "group": "hadoop",
            "permission": "755",
            "replication": 3,
        }

    def _not_found(self, hdfs_path: str) -> None:
        self._reply(
            404,
            {
                "RemoteException": {
                    "exception": "FileNotFoundException",
                    "javaClassName": "java.io.FileNotFoundException",
                    "message": f"File does not exist: {hdfs_path}",
                }
            },
        )

    def do_GET(self) -> None:
        local, hdfs_path, query = self._target()
        op = query["op"][0]
        if not local.exists():
            return self._not_found(hdfs_path)
        if op == "OPEN":  # (a NameNode redirects to a DataNode; the bytes come back the same)
            data = local.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return None
        if op == "GETFILESTATUS":
            return self._reply(200, {"FileStatus": self._status(local, "")})
        if op == "LISTSTATUS":
            children = sorted(local.iterdir()) if local.is_dir() else [local]
            statuses = [self._status(c, c.name if local.is_dir() else "") for c in children]
            return self._reply(200, {"FileStatuses": {"FileStatus": statuses}})
        self._reply(400, {"RemoteException": {"exception": "IllegalArgumentException", "message": op}})

    def do_DELETE(self) -> None:
        local, _, _ = self._target()
        if local.is_dir():
            shutil.rmtree(local)
        elif local.exists():
            local.unlink()
        self._reply(200, {"boolean": True})

    def do_PUT(self) -> None:
        local, hdfs_path, query = self._target()
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length) if length else b""
        op = query["op"][0]
        if op == "MKDIRS":
            local.mkdir(parents=True, exist_ok=True)
            return self._reply(200, {"boolean": True})
        if op == "RENAME":
            destination = self.root / query["destination"][0].lstrip("/")
            if destination.exists() or not local.exists():
                return self._reply(200, {"boolean": False})
            local.rename(destination)
            return self._reply(200, {"boolean": True})
        if op == "SETTIMES":
            if not local.exists():
                return self._not_found(hdfs_path)
            ms = int(query["modificationtime"][0])
            os.utime(local, (ms / 1000, ms / 1000))
            return self._reply(200)
        if op == "CREATE" and query.get("overwrite", ["false"])[0].lower() == "false" and local.exists():
            exists = {"exception": "FileAlreadyExistsException", "message": f"{hdfs_path} already exists"}
            return self._reply(403, {"RemoteException": {**exists, "javaClassName": "x"}})
        if query["op"][0] == "CREATE" and "datanode" not in query:  # NameNode step: redirect to a DataNode
            host, port = self.server.server_address[:2]
            location = (
                f"http://{host}:{port}{urlparse(self.path).path}?{urlparse(self.path).query}&datanode=1"
            )
            return self._reply(307, None, {"Location": location})
        if query["op"][0] == "CREATE":
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(data)
            return self._reply(201)
        self._reply(400, {"RemoteException": {"exception": "IllegalArgumentException", "message": "op"}})


@pytest.fixture
def webhdfs(tmp_path):
    """A loopback WebHDFS server on a free port, serving tmp_path/hdfs as the HDFS namespace."""
    root = tmp_path / "hdfs"
    root.mkdir()
    handler = type("Handler", (WebHdfsStub,), {"root": root, "requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root, handler.requests
    finally:
        server.shutdown()
        server.server_close()


def make_table(root: Path, *, part_success: bool = False, root_success: bool = False, data: bool = True):
    part = root / PART
    part.mkdir(parents=True, exist_ok=True)
    if data:
        (part / "part-00000.snappy.parquet").write_bytes(b"PAR1")
    if part_success:
        (part / "_SUCCESS").write_text("")
    if root_success:
        marker = root / "_SUCCESS"
        marker.write_text("")
        later = time.time() + 5
        os.utime(marker, (later, later))


def settings_for(features: str, facts: str, **paths) -> Settings:
    overrides = {"paths": {"features": features, "facts": facts, **paths}}
    return load_settings(CONF / "local.yaml", overrides=overrides, environ={})


# ------------------------------------------------------------------ local filesystem
def test_local_inputs_ready_with_root_success_marker(tmp_path):
    """The generator's layout: _SUCCESS only at the table root."""
    make_table(tmp_path / "features", root_success=True)
    make_table(tmp_path / "facts", root_success=True)
    settings = settings_for(str(tmp_path / "features"), f"file://{tmp_path / 'facts'}")
    assert input_problems(settings, MONTH) == []
    wait_for_inputs(settings, MONTH, timeout=0, poll=0.01)


def test_partition_success_marker_is_enough(tmp_path):
    make_table(tmp_path / "features", part_success=True)
    make_table(tmp_path / "facts", part_success=True)
    assert input_problems(settings_for(str(tmp_path / "features"), str(tmp_path / "facts")), MONTH) == []


def test_timeout_names_the_missing_partition_and_table(tmp_path):
    make_table(tmp_path / "features", root_success=True)
    settings = settings_for(str(tmp_path / "features"), str(tmp_path / "facts"))
    started = time.monotonic()
    with pytest.raises(InputsNotReady) as err:
        wait_for_inputs(settings, MONTH, timeout=0.3, poll=0.05)
    assert time.monotonic() - started < 3
    message = str(err.value)
    assert "2026-04" in message and "facts" in message and PART in message
    assert "features" not in message.split("\n", 1)[1]


@pytest.mark.parametrize(
    "layout, expected",
    [
        ({"root_success": False}, "no _SUCCESS"),
        ({"root_success": True, "data": False}, "no data files"),
    ],
)
def test_incomplete_partitions_are_not_ready(tmp_path, layout, expected):
    for table in ("features", "facts"):
        make_table(tmp_path / table, **layout)
    problems = input_problems(settings_for(str(tmp_path / "features"), str(tmp_path / "facts")), MONTH)
    assert len(problems) == 2 and all(expected in p for p in problems)


def test_write_in_progress_and_stale_root_marker_are_not_ready(tmp_path):
    make_table(tmp_path / "features", root_success=True)
    (tmp_path / "features" / "_temporary").mkdir()
    make_table(tmp_path / "facts")
    stale = tmp_path / "facts" / "_SUCCESS"
    stale.write_text("")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))  # from last month's write
    problems = input_problems(settings_for(str(tmp_path / "features"), str(tmp_path / "facts")), MONTH)
    assert any("features" in p and "in progress" in p for p in problems)
    assert any("facts" in p and "older than" in p for p in problems)


def test_waits_until_the_writer_finishes(tmp_path):
    make_table(tmp_path / "features", part_success=True)
    settings = settings_for(str(tmp_path / "features"), str(tmp_path / "facts"))
    writer = threading.Timer(0.4, make_table, args=(tmp_path / "facts",), kwargs={"part_success": True})
    writer.start()
    started = time.monotonic()
    wait_for_inputs(settings, MONTH, timeout=10, poll=0.05)
    assert 0.3 < time.monotonic() - started < 5


# ------------------------------------------------------------------ WebHDFS
def test_hdfs_inputs_checked_over_webhdfs(webhdfs):
    url, root, requests = webhdfs
    make_table(root / "dwh/cltv/features", root_success=True)
    make_table(root / "dwh/cltv/facts", part_success=True)
    settings = settings_for(
        "hdfs://nameservice1/dwh/cltv/features",
        "hdfs:///dwh/cltv/facts",
        webhdfs_url=url,
        webhdfs_user="cltv",
    )
    wait_for_inputs(settings, MONTH, timeout=0, poll=0.01)
    ops = {(q["op"][0], path) for _, path, q in requests}
    assert ("GETFILESTATUS", f"/dwh/cltv/features/{PART}") in ops
    assert ("LISTSTATUS", "/dwh/cltv/features") in ops  # root marker checked
    assert ("LISTSTATUS", f"/dwh/cltv/facts/{PART}") in ops
    assert all(q.get("user.name") == ["cltv"] for _, _, q in requests)


def test_hdfs_missing_partition_times_out_with_its_uri(webhdfs):
    url, root, _ = webhdfs
    make_table(root / "dwh/cltv/features", root_success=True)
    settings = settings_for("hdfs:///dwh/cltv/features", "hdfs:///dwh/cltv/facts", webhdfs_url=url)
    missing = f"facts: partition hdfs:///dwh/cltv/facts/{PART} does not exist"
    with pytest.raises(InputsNotReady, match=re.escape(missing)):
        wait_for_inputs(settings, MONTH, timeout=0.2, poll=0.05)


def test_unreachable_namenode_is_reported_not_crashed():
    settings = settings_for("hdfs:///a/features", "hdfs:///a/facts", webhdfs_url="http://127.0.0.1:9")
    problems = input_problems(settings, MONTH)
    assert len(problems) == 2 and all("cannot check hdfs:///a/" in p for p in problems)


def test_webhdfs_write_goes_through_the_datanode_redirect(webhdfs):
    url, root, requests = webhdfs
    fs = WebHdfsFileSystem(webhdfs_client(PathsConfig(webhdfs_url=url, webhdfs_user="cltv")))
    fs.write_text("hdfs:///dwh/cltv/scores/score_month=2026-04-01/_PUBLISHED", '{"ok": true}')
    marker = root / "dwh/cltv/scores/score_month=2026-04-01/_PUBLISHED"
    assert json.loads(marker.read_text()) == {"ok": True}
    assert [m for m, _, _ in requests] == ["PUT", "PUT"]


def test_hdfs_without_webhdfs_url_is_a_config_error():
    with pytest.raises(ConfigError, match=r"paths\.webhdfs_url"):
        filesystem_for("hdfs:///dwh/cltv/features", PathsConfig())
    with pytest.raises(ConfigError, match="s3a://"):
        filesystem_for("s3a://bucket/features", PathsConfig())


def test_cli_wait_for_inputs_exit_codes(tmp_path):
    """Through the wired CLI: 0 when ready; 3 (inputs not ready, worth retrying later) when not."""
    from spark_app.cli import main

    conf = tmp_path / "env.yaml"
    conf.write_text(f"paths:\n  features: {tmp_path / 'features'}\n  facts: {tmp_path / 'facts'}\n")
    for name in ("base.yaml", "models.yaml"):
        (tmp_path / name).write_text((CONF / name).read_text())
    make_table(tmp_path / "features", root_success=True)
    args = ["wait-for-inputs", "--conf", str(conf), "--month", "2026-04", "--timeout", "0"]
    assert main([*args, "--poll", "0"]) == 3
    make_table(tmp_path / "facts", root_success=True)
    assert main(["wait-for-inputs", "--conf", str(conf), "--month", "2026-04", "--timeout", "0"]) == 0


def test_the_lease_over_webhdfs_lets_one_run_in_and_cleans_up(webhdfs):
    """`cltv promote` holds its lease without a JVM: on hdfs:// through WebHDFS (CREATE without
    overwrite is the atomic step); a second run is Busy; the lock is gone afterwards."""
    from spark_app.errors import Busy

    url, root, _ = webhdfs
    fs = WebHdfsFileSystem(webhdfs_client(PathsConfig(webhdfs_url=url, webhdfs_user="cltv")))
    target = "hdfs:///dwh/cltv/datasets/promotion-cltv"
    with fs.lock(target) as lease:
        lock = root / "dwh/cltv/datasets/_lock-promotion-cltv"
        assert json.loads(lock.read_text())["token"] == lease.token
        with pytest.raises(Busy, match="being written by another run"), fs.lock(target):
            pass
        lease.check()
    assert not lock.exists()
    # a lock left by a run whose heartbeat stopped long ago is taken over
    lock.write_text(json.dumps({"token": "gone", "host": "elsewhere", "pid": 1}))
    os.utime(lock, (time.time() - 3600, time.time() - 3600))
    with fs.lock(target) as lease:
        assert json.loads(lock.read_text())["token"] == lease.token
    assert not lock.exists()
