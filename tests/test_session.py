from spark_app.session import EMBEDDED_DEFAULTS


def test_embedded_session_has_the_project_settings(spark):
    conf = spark.sparkContext.getConf()
    assert spark.conf.get("spark.sql.shuffle.partitions") == "4"
    assert spark.conf.get("spark.sql.execution.arrow.pyspark.enabled") == "true"
    assert conf.get("spark.ui.enabled") == "false"
    assert spark.sparkContext.master == "local[2]"
    for key in ("spark.sql.session.timeZone", "spark.sql.sources.partitionOverwriteMode"):
        assert spark.conf.get(key) == EMBEDDED_DEFAULTS[key]


def test_python_workers_run_this_interpreter(spark):
    import sys

    worker_python = spark.sparkContext.parallelize([0], 1).map(lambda _: __import__("sys").executable).first()
    assert worker_python == sys.executable
