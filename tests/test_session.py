from spark_app.session import EMBEDDED_DEFAULTS


def test_embedded_session_has_the_project_settings(spark):
    conf = spark.sparkContext.getConf()
    assert spark.conf.get("spark.sql.shuffle.partitions") == "4"
    assert spark.conf.get("spark.sql.execution.arrow.pyspark.enabled") == "true"
    assert conf.get("spark.ui.enabled") == "false"
    assert spark.sparkContext.master == "local[2]"
    for key in ("spark.sql.session.timeZone", "spark.sql.sources.partitionOverwriteMode"):
        assert spark.conf.get(key) == EMBEDDED_DEFAULTS[key]


def test_python_workers_run_this_environment(spark):
    """Workers must import this virtualenv's packages; python vs python3 of one venv are the same."""
    import sys

    worker_prefix = spark.sparkContext.parallelize([0], 1).map(lambda _: __import__("sys").prefix).first()
    assert worker_prefix == sys.prefix
