"""Progress of long Spark actions in the log, and a per-stage timing summary."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
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


class StepClock:
    """Laps of a batch's steps into `seconds` (a perf_counter call per step; nothing without `seconds`):
    the scoring workers' time by step, which the job logs."""

    def __init__(self, seconds: Counter | None) -> None:
        self.seconds = seconds
        self.last = time.perf_counter()

    def lap(self, step: str) -> None:
        """The time since the last lap (or skip) is `step`'s."""
        if self.seconds is not None:
            now = time.perf_counter()
            self.seconds[step] += now - self.last
            self.last = now

    def skip(self) -> None:
        """The time since the last lap is counted elsewhere (a callee's own clock, the consumer)."""
        self.last = time.perf_counter()


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
