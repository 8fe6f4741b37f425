"""A real Spark standalone cluster on loopback for tests: one master and N workers from pyspark's own jars.

Executors run in their own JVMs (one per worker) with their own Python workers, as on a real cluster. Every
process runs in its own process group and is stopped by its pid when the context ends, even on failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyspark
from mlflow_server import free_port

SPARK_HOME = Path(pyspark.__file__).resolve().parent


@dataclass(frozen=True)
class Cluster:
    master: str  # spark://127.0.0.1:PORT
    ui: str  # the master's web UI (its /json/ lists workers and applications)
    logs: Path
    pids: list[int]

    def state(self) -> dict:
        with urllib.request.urlopen(f"{self.ui}/json/", timeout=5) as resp:
            return json.loads(resp.read())


def cluster_env() -> dict[str, str]:
    return {**os.environ, "SPARK_HOME": str(SPARK_HOME), "SPARK_LOCAL_IP": "127.0.0.1"}


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in reversed(procs):
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in reversed(procs):
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@contextlib.contextmanager
def standalone_cluster(
    root: Path, *, workers: int = 2, cores: int = 1, memory: str = "2g", timeout: float = 90.0
) -> Iterator[Cluster]:
    """Start `spark-class ...Master` and `workers` × `...Worker` on free loopback ports; yield the cluster."""
    root.mkdir(parents=True, exist_ok=True)
    spark_class = str(SPARK_HOME / "bin" / "spark-class")
    port, ui_port = free_port(), free_port()
    env = cluster_env()
    procs: list[subprocess.Popen] = []
    cluster = Cluster(f"spark://127.0.0.1:{port}", f"http://127.0.0.1:{ui_port}", root, [])

    def start(name: str, args: list[str]) -> None:
        with open(root / f"{name}.log", "wb") as out:
            procs.append(
                subprocess.Popen(
                    [spark_class, *args],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            )
            cluster.pids.append(procs[-1].pid)

    try:
        start(
            "master",
            ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
             "--webui-port", str(ui_port)],
        )  # fmt: skip
        for i in range(workers):
            start(
                f"worker-{i}",
                ["org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--cores", str(cores),
                 "--memory", memory, "--webui-port", str(free_port()), "--work-dir", str(root / f"work-{i}"),
                 cluster.master],
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        alive = 0
        while time.monotonic() < deadline:
            dead = [p for p in procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"a cluster process exited with {dead[0].returncode}; logs in {root}")
            with contextlib.suppress(OSError, ValueError):
                alive = int(cluster.state().get("aliveworkers", 0))
                if alive >= workers:
                    break
            time.sleep(0.5)
        else:
            raise TimeoutError(f"{alive} of {workers} workers registered after {timeout}s; logs in {root}")
        yield cluster
    finally:
        _stop(procs)
