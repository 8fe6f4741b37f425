"""Progress of long Spark actions in the log, and a per-stage timing summary."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from pyspark.sql import SparkSession

log = logging.getLogger(__name__)


@dataclass
class StageTimer:
    """Wall time per named stage of a job, for the job's closing summary."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def stage(self, name: str, spark: SparkSession | None = None, every: float = 15.0) -> Iterator[None]:
        log.info("%s ...", name)
        start = time.perf_counter()
        with progress(spark, name, every) if spark is not None else contextlib.nullcontext():
            yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
        log.info("%s done in %.1fs", name, self.seconds[name])

    def summary(self) -> str:
        total = sum(self.seconds.values())
        parts = ", ".join(f"{k} {v:.1f}s" for k, v in self.seconds.items())
        return f"{total:.1f}s total ({parts})"


@contextlib.contextmanager
def progress(spark: SparkSession, label: str, every: float = 15.0) -> Iterator[None]:
    """Log completed/total tasks of the running Spark stages every `every` seconds."""
    tracker = spark.sparkContext.statusTracker()
    done = threading.Event()

    def report() -> None:
        while not done.wait(every):
            stages = [tracker.getStageInfo(s) for s in tracker.getActiveStageIds()]
            stages = [s for s in stages if s is not None]
            if stages:
                tasks = ", ".join(
                    f"stage {s.stageId}: {s.numCompletedTasks}/{s.numTasks} tasks" for s in stages
                )
                log.info("%s: %s", label, tasks)

    thread = threading.Thread(target=report, name=f"progress-{label}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=1)
