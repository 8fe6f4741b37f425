"""SparkSession factory: embedded local[*] by default, any master from config or spark-submit."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator

from pyspark.sql import SparkSession

from spark_app.config import SparkConfig

log = logging.getLogger(__name__)

# Sane defaults for the embedded session on a small machine; config `spark.conf` overrides any of them.
EMBEDDED_DEFAULTS: dict[str, str] = {
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.execution.arrow.pyspark.fallback.enabled": "false",
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.sources.partitionOverwriteMode": "dynamic",
    "spark.sql.parquet.compression.codec": "snappy",
    "spark.sql.adaptive.enabled": "true",
    "spark.ui.showConsoleProgress": "false",
    "spark.python.worker.reuse": "true",
    "spark.driver.extraJavaOptions": "-Dlog4j2.level=WARN",
}


def launched_by_spark_submit() -> bool:
    """spark-submit sets the master itself; then config must not override it."""
    return "SPARK_SUBMIT_OPTS" in os.environ or os.environ.get("SPARK_ENV_LOADED") == "1"


def get_spark(cfg: SparkConfig, *, ui: bool = False) -> SparkSession:
    """Return the process's SparkSession, creating it from config if needed."""
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    builder = SparkSession.builder.appName(cfg.app_name)
    if cfg.master and not launched_by_spark_submit():
        builder = builder.master(cfg.master)
        builder = builder.config("spark.driver.memory", cfg.driver_memory)
        if cfg.master.startswith("local"):
            # Python workers must be this interpreter (the virtualenv with the project), not PATH's python3.
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    settings = {
        **EMBEDDED_DEFAULTS,
        "spark.sql.shuffle.partitions": str(cfg.shuffle_partitions),
        "spark.ui.enabled": str(ui).lower(),
        **{k: str(v) for k, v in cfg.conf.items()},
    }
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    log.info("spark %s on %s, %s", spark.version, spark.sparkContext.master, spark.sparkContext.applicationId)
    return spark


@contextlib.contextmanager
def session_conf(spark: SparkSession, **settings: str | int) -> Iterator[None]:
    """Spark SQL settings for the duration of a job, restored afterwards: `**{"spark.sql.x": value}`."""
    previous = {key: spark.conf.get(key, None) for key in settings}
    for key, value in settings.items():
        spark.conf.set(key, str(value))
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)
