"""The input contract: the features and facts tables, and one validator that reports every problem at once."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from spark_app.catalog import ModelCatalog
from spark_app.months import describe_months

ID = "subscriber_id"
MONTH = "report_month"

NUMERIC = "numeric"
STRING = "string"
DATE = "date"
_KIND_OF_TYPE = {
    T.StringType: STRING,
    T.DateType: DATE,
    **dict.fromkeys(
        (T.ByteType, T.ShortType, T.IntegerType, T.LongType, T.FloatType, T.DoubleType, T.DecimalType),
        NUMERIC,
    ),
}


class InputContractError(ValueError):
    """An input table breaks the contract; the message lists every problem found, by table and column."""


@dataclass(frozen=True)
class TableSpec:
    """What a table must hold: column name → kind (numeric / string / date), and which setting needs it."""

    name: str
    columns: dict[str, str]
    flags: tuple[str, ...] = field(default_factory=tuple)
    readers: dict[str, str] = field(default_factory=dict)  # column → config key that names it

    def why(self, column: str) -> str:
        reader = self.readers.get(column)
        return f" (read by {reader})" if reader else ""


def features_spec(
    numeric: Iterable[str], categorical: Iterable[str], readers: dict[str, str] | None = None
) -> TableSpec:
    cols = {ID: STRING, MONTH: DATE}
    cols.update(dict.fromkeys(numeric, NUMERIC))
    cols.update(dict.fromkeys(categorical, STRING))
    return TableSpec("features", cols, readers=dict(readers or {}))


def catalog_features_spec(catalog: ModelCatalog) -> TableSpec:
    """The features contract as the catalog reads it: inputs, naive-baseline sources, tenure."""
    categorical = catalog.input_categorical()
    numeric = [c for c in catalog.input_columns() if c not in categorical]
    return features_spec(numeric, categorical, catalog.column_users())


def facts_spec(catalog: ModelCatalog) -> TableSpec:
    """The facts contract: each model's fact column; the survival models' are 0/1 flags."""
    columns = {ID: STRING, MONTH: DATE, **dict.fromkeys((e.fact for e in catalog), NUMERIC)}
    return TableSpec("facts", columns, catalog.flags(), catalog.fact_users())


def kind_of(data_type: T.DataType) -> str:
    for cls, kind in _KIND_OF_TYPE.items():
        if isinstance(data_type, cls):
            return kind
    return data_type.simpleString()


def read_table(spark: SparkSession, path: str, table: str) -> DataFrame:
    """Read a Hive-partitioned Parquet table; `report_month` comes back as DATE."""
    try:
        df = spark.read.option("basePath", path).parquet(path)
    except Exception as exc:  # AnalysisException: path missing or no Parquet under it
        raise InputContractError(f"{table}: cannot read {path}: {str(exc).splitlines()[0]}") from None
    if MONTH in df.columns and not isinstance(df.schema[MONTH].dataType, T.DateType):
        df = df.withColumn(MONTH, F.to_date(F.col(MONTH).cast("string")))
    return df


def schema_problems(df: DataFrame, spec: TableSpec) -> list[str]:
    problems = []
    present = {f.name: f.dataType for f in df.schema.fields}
    for col, kind in spec.columns.items():
        if col not in present:
            problems.append(f"{spec.name}: column {col!r} is missing{spec.why(col)}")
        elif kind_of(present[col]) != kind:
            problems.append(
                f"{spec.name}: column {col!r} has type {present[col].simpleString()}, expected {kind}"
                f"{spec.why(col)}"
            )
    return problems


def data_problems(df: DataFrame, spec: TableSpec, months: list[dt.date] | None) -> list[str]:
    """Null ids, duplicate keys, flags outside 0/1 and missing months, in two Spark jobs."""
    if months is not None:
        df = df.where(F.col(MONTH).isin(months))
    flag_checks = [
        F.sum((~F.col(flag).isin(0, 1) | F.col(flag).isNull()).cast("long")).alias(flag)
        for flag in spec.flags
    ]
    per_month = (
        df.groupBy(MONTH)
        .agg(
            F.count(F.lit(1)).alias("rows"),
            F.sum(F.col(ID).isNull().cast("long")).alias("null_ids"),
            *flag_checks,
        )
        .collect()
    )
    problems = []
    null_ids = sum(r["null_ids"] for r in per_month)
    if null_ids:
        problems.append(f"{spec.name}: column {ID!r} has {null_ids} null values")
    for flag in spec.flags:
        bad = sum(r[flag] for r in per_month)
        if bad:
            problems.append(f"{spec.name}: column {flag!r} has {bad} values other than 0/1")
    if months is not None:
        found = {r[MONTH] for r in per_month}
        missing = [m for m in months if m not in found]
        if missing:
            problems.append(f"{spec.name}: months missing {describe_months(missing)}")
    dupes = (
        df.where(F.col(ID).isNotNull())
        .groupBy(ID, MONTH)
        .count()
        .where("count > 1")
        .agg(F.count(F.lit(1)).alias("keys"), F.min(F.struct(MONTH, ID)).alias("example"))
        .collect()[0]
    )
    if dupes["keys"]:
        ex = dupes["example"]
        problems.append(
            f"{spec.name}: {dupes['keys']} duplicate ({ID}, {MONTH}) keys, e.g. ({ex[ID]}, {ex[MONTH]:%Y-%m})"
        )
    return problems


def validate(
    df: DataFrame, spec: TableSpec, months: list[dt.date] | None = None, *, context: str = ""
) -> None:
    """Raise one InputContractError listing every problem of `df` against `spec` over `months`."""
    problems = schema_problems(df, spec)
    typed = {f.name for f in df.schema.fields if kind_of(f.dataType) == spec.columns.get(f.name)}
    if {ID, MONTH} <= typed:
        checkable = TableSpec(spec.name, spec.columns, tuple(f for f in spec.flags if f in typed))
        problems += data_problems(df, checkable, months)
    if problems:
        suffix = f" ({context})" if context else ""
        raise InputContractError("input contract violated" + suffix + ":\n  " + "\n  ".join(problems))
