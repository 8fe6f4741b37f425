import datetime as dt

import pytest
from conftest import CATALOG
from pyspark.sql import types as T

from spark_app.contract import InputContractError, facts_spec, features_spec, read_table, validate

FACTS_SPEC = facts_spec(CATALOG)

JAN, FEB, MAR = dt.date(2024, 1, 1), dt.date(2024, 2, 1), dt.date(2024, 3, 1)

FEATURES_SCHEMA = T.StructType(
    [
        T.StructField("subscriber_id", T.StringType()),
        T.StructField("report_month", T.DateType()),
        T.StructField("tenure_months", T.IntegerType()),
        T.StructField("tariff", T.StringType()),
    ]
)
SPEC = features_spec(numeric=["tenure_months"], categorical=["tariff"])


def features(spark, rows, schema=FEATURES_SCHEMA):
    return spark.createDataFrame(rows, schema)


def facts(spark, rows):
    cols = "subscriber_id string, report_month date, in_paid_base int, in_active_base int, sm_mobile double, "
    cols += "sm_fmc double, sm_fttb double, data_gb double, voice_min double, sac double"
    return spark.createDataFrame(rows, cols)


def test_valid_table_passes(spark):
    df = features(spark, [("a", JAN, 1, "M_S"), ("a", FEB, 2, "M_S"), ("b", FEB, 5, "M_L")])
    validate(df, SPEC, [JAN, FEB])


def test_missing_months_are_named(spark):
    df = features(spark, [("a", JAN, 1, "M_S")])
    with pytest.raises(InputContractError, match=r"features: months missing \[2024-02, 2024-03\]"):
        validate(df, SPEC, [JAN, FEB, MAR], context="target window 2024-03")


def test_every_problem_is_reported_at_once(spark):
    schema = T.StructType([*FEATURES_SCHEMA.fields[:2], T.StructField("tenure_months", T.StringType())])
    df = features(spark, [("a", JAN, "1"), ("a", JAN, "2"), (None, JAN, "3")], schema)
    with pytest.raises(InputContractError) as err:
        validate(df, SPEC, [JAN, FEB])
    message = str(err.value)
    assert "column 'tenure_months' has type string, expected numeric" in message
    assert "column 'tariff' is missing" in message
    assert "column 'subscriber_id' has 1 null values" in message
    assert "1 duplicate (subscriber_id, report_month) keys, e.g. (a, 2024-01)" in message
    assert "months missing [2024-02]" in message


def test_facts_flags_must_be_zero_or_one(spark):
    df = facts(
        spark,
        [("a", JAN, 2, 1, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0), ("b", JAN, 1, None, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0)],
    )
    with pytest.raises(InputContractError) as err:
        validate(df, FACTS_SPEC, [JAN])
    assert "'in_paid_base' has 1 values other than 0/1" in str(err.value)
    assert "'in_active_base' has 1 values other than 0/1" in str(err.value)


def test_months_outside_the_window_are_not_checked(spark):
    df = features(spark, [("a", JAN, 1, "M_S"), ("a", JAN, 1, "M_S"), ("a", FEB, 2, "M_S")])
    validate(df, SPEC, [FEB])


def test_unreadable_table_is_a_contract_error(spark, tmp_path):
    with pytest.raises(InputContractError, match="features: cannot read"):
        read_table(spark, str(tmp_path / "nowhere"), "features")


def test_read_table_gives_report_month_as_date(spark, tmp_path):
    df = features(spark, [("a", JAN, 1, "M_S"), ("b", FEB, 2, "M_L")])
    df.write.partitionBy("report_month").parquet(str(tmp_path / "features"))
    back = read_table(spark, str(tmp_path / "features"), "features")
    assert isinstance(back.schema["report_month"].dataType, T.DateType)
    validate(back, SPEC, [JAN, FEB])
