"""The input contract: the features and facts tables, and one validator that reports every problem at once."""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import DataFrame, Observation, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from spark_app.catalog import ID, ModelCatalog
from spark_app.errors import UserError
from spark_app.layout import REPORT_MONTH
from spark_app.months import describe_months
from spark_app.storage import Storage

log = logging.getLogger(__name__)

MONTH = REPORT_MONTH  # the month a row describes: the input tables' partition column

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


class InputContractError(UserError):
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


def read_table(
    spark: SparkSession,
    path: str,
    table: str,
    months: list[dt.date] | None = None,
    *,
    widen: dict[str, T.DataType] | None = None,
) -> DataFrame:
    """Read a Hive-partitioned Parquet table (only the `months` directories when given); `report_month`
    comes back as DATE. Columns whose numeric type differs between the files (an int32 month beside int64
    ones, a restated month from another tool) are read as the common wider type (`widen`, found from the
    files' footers when not given: `numeric_widening`); a mix Spark cannot read as one type is an
    InputContractError naming the files."""
    paths = [path] if months is None else [f"{path.rstrip('/')}/{MONTH}={m:%Y-%m-%d}" for m in months]
    if widen is None and months:
        storage = Storage(spark)
        dirs, _ = month_dirs(storage, path, table) if storage.exists(path) else ({}, [])
        scan = scan_files(spark, path, TableSpec(table, {}), {m: dirs[m] for m in months if m in dirs})
        widen, problems = numeric_widening(table, scan.types)
        raise_problems(scan.problems + problems)
    try:
        df = spark.read.option("basePath", path).parquet(*paths)
        if widen:
            schema = T.StructType(
                [T.StructField(f.name, widen.get(f.name, f.dataType), f.nullable) for f in df.schema.fields]
            )
            df = spark.read.schema(schema).option("basePath", path).parquet(*paths)
    except Exception as exc:  # AnalysisException: path missing or no Parquet under it
        raise InputContractError(f"{table}: cannot read {path}: {str(exc).splitlines()[0]}") from None
    if MONTH in df.columns and not isinstance(df.schema[MONTH].dataType, T.DateType):
        df = df.withColumn(MONTH, F.to_date(F.col(MONTH).cast("string")))
    return df


# ---------------------------------------------------------------- the files of the months read
_MONTH_DIR = re.compile(rf"{MONTH}=([0-9]{{4}})-([0-9]{{2}})(?:-([0-9]{{2}}))?")
_FIELD = re.compile(r"^\s*(required|optional|repeated)\s+(\w+)\s+(.+?)(?:\s+\(([^)]*)\))?(?:\s*=\s*\d+)?;$")
FOOTER_THREADS = 8  # footers are read over py4j, one small round trip each: a few in flight at once


def month_dirs(storage: Storage, path: str, table: str) -> tuple[dict[dt.date, str], list[str]]:
    """The table's `report_month=YYYY-MM-01` directories by month, and the names that are not one (a stray
    `report_month=2025-13-01`, a `tmp` folder): those are never read, only reported."""
    found: dict[dt.date, str] = {}
    strays: list[str] = []
    for name in storage.list_dir(path):
        if name.startswith(("_", ".")):
            continue
        m = _MONTH_DIR.fullmatch(name)
        if m is None or not 1 <= int(m.group(2)) <= 12 or m.group(3) not in (None, "01"):
            strays.append(name)
            continue
        month = dt.date(int(m.group(1)), int(m.group(2)), 1)
        if month in found:
            raise InputContractError(f"{table}: two directories for {month:%Y-%m}: {found[month]}, {name}")
        found[month] = name
    return found, strays


def parquet_kind(primitive: str, annotation: str | None) -> str:
    """The contract kind of a Parquet leaf column (STRING/DATE annotations, numeric primitives)."""
    note = (annotation or "").upper()
    if primitive == "binary" and note.startswith(("STRING", "UTF8", "ENUM")):
        return STRING
    if note.startswith("DATE"):
        return DATE
    if primitive in ("int32", "int64", "float", "double") or note.startswith("DECIMAL"):
        return NUMERIC
    return physical_name(primitive, annotation)


def physical_name(primitive: str, annotation: str | None) -> str:
    return f"{primitive} ({annotation})" if annotation else primitive


def footer_types(jvm: Any, conf: Any, status: Any) -> dict[str, tuple[str, str]]:
    """Column → (contract kind, physical type) from one Parquet file's footer (one round trip)."""
    reader = jvm.org.apache.parquet.hadoop.ParquetFileReader.open(
        jvm.org.apache.parquet.hadoop.util.HadoopInputFile.fromStatus(status, conf)
    )
    try:
        text = str(reader.getFooter().getFileMetaData().getSchema().toString())
    finally:
        reader.close()
    types = {}
    for line in text.splitlines()[1:]:
        m = _FIELD.match(line)
        if m:
            types[m.group(3)] = (parquet_kind(m.group(2), m.group(4)), physical_name(m.group(2), m.group(4)))
    return types


# where a physical type occurs: (month, file) of every file that has it
Where = list[tuple[dt.date, str]]


@dataclass
class FileScan:
    """What the footers of a table's files say: problems against the spec, and each column's physical
    types with the files they occur in (for `numeric_widening`)."""

    problems: list[str]
    types: dict[str, dict[str, Where]]


def scan_files(spark: SparkSession, path: str, spec: TableSpec, dirs: dict[dt.date, str]) -> FileScan:
    """Every data file of the months read against the contract: readable as Parquet, every column the
    contract needs present with its kind. Spark reads one file's schema and would score a column missing
    from one month's files as nulls, or crash on a type that differs; this names the month and the file."""
    from concurrent.futures import ThreadPoolExecutor

    jvm = spark.sparkContext._jvm
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    root = jvm.org.apache.hadoop.fs.Path(path)
    fs = root.getFileSystem(conf)
    wanted = {c: k for c, k in spec.columns.items() if c != MONTH}  # the month is the directory's name
    jobs = []
    for month, name in sorted(dirs.items()):
        for status in fs.listStatus(jvm.org.apache.hadoop.fs.Path(root, name)):
            file = str(status.getPath().getName())
            if status.isFile() and not file.startswith(("_", ".")):
                jobs.append((month, file, status))

    def check(job: tuple[dt.date, str, Any]) -> tuple[list[tuple[str, dt.date, str]], dict[str, str]]:
        """(problem, month, file) for one file, and its columns' physical types."""
        month, file, status = job
        try:
            types = footer_types(jvm, conf, status)
        except Exception as exc:
            reason = str(getattr(exc, "java_exception", exc)).splitlines()[0][:200]
            hint = " (a stale .crc beside it? remove it, or rewrite the file)" if "Checksum" in reason else ""
            return [(f"not a readable Parquet file: {reason}{hint}", month, file)], {}
        problems = []
        for column, kind in wanted.items():
            if column not in types:
                problems.append((f"column {column!r} is missing{spec.why(column)}", month, file))
            elif types[column][0] != kind:
                found = types[column][0]
                problems.append(
                    (f"column {column!r} is {found}, expected {kind}{spec.why(column)}", month, file)
                )
        return problems, {c: physical for c, (kind, physical) in types.items() if kind == NUMERIC}

    with ThreadPoolExecutor(FOOTER_THREADS) as pool:
        results = list(pool.map(check, jobs))
    by_problem: dict[str, Where] = {}
    types: dict[str, dict[str, Where]] = {}
    for (problems, physical), (month, file, _) in zip(results, jobs, strict=True):
        for problem, m, f in problems:
            by_problem.setdefault(problem, []).append((m, f))
        for column, name in physical.items():
            types.setdefault(column, {}).setdefault(name, []).append((month, file))
    out = []
    for problem, where in by_problem.items():
        month, file = where[0]
        if len(where) == 1:
            out.append(f"{spec.name}: month {month:%Y-%m}: file {file}: {problem}")
        else:
            months = sorted({m for m, _ in where})
            out.append(
                f"{spec.name}: {problem}, in {len(where)} files of months {describe_months(months)} "
                f"(e.g. {month:%Y-%m}/{file})"
            )
    return FileScan(out, types)


_INTEGERS = re.compile(r"int(32|64)( \(INTEGER\((8|16|32|64),true\)\))?")
_SMALL_INTEGERS = re.compile(r"int32( \(INTEGER\((8|16|32),true\)\))?")


def numeric_widening(
    table: str, types: dict[str, dict[str, Where]]
) -> tuple[dict[str, T.DataType], list[str]]:
    """Numeric columns whose physical type differs between files, and how to read them as one.

    Spark's Parquet reader widens what loses nothing — signed integers of any width to bigint; float,
    double and integers of up to 32 bits to double — so those are read as that type (`read_table`).
    What it cannot read as one type (int64 beside float/double: a double cannot hold every int64, and
    Spark refuses; decimals beside anything else; unsigned int64) is a problem naming the table, a file
    of each type, the column and both types: rewrite one side."""
    widen: dict[str, T.DataType] = {}
    problems: list[str] = []
    for column, found in sorted(types.items()):
        if len(found) < 2:
            continue
        names = sorted(found)
        if all(_INTEGERS.fullmatch(n) for n in names):
            widen[column] = T.LongType()
        elif all(n in ("float", "double") or _SMALL_INTEGERS.fullmatch(n) for n in names):
            widen[column] = T.DoubleType()
        else:
            examples = [
                f"{n} in {len(found[n])} file{'s' if len(found[n]) > 1 else ''} "
                f"(e.g. month {found[n][0][0]:%Y-%m}: file {found[n][0][1]})"
                for n in sorted(names, key=lambda n: -len(found[n]))
            ]
            problems.append(
                f"{table}: column {column!r} is " + " but ".join(examples) + ": Spark cannot read these "
                "types as one column; rewrite the odd files with the type of the others"
            )
    if widen:
        log.info(
            "%s: numeric types differ between files; reading %s", table,
            ", ".join(f"{c} as {t.simpleString()} ({', '.join(sorted(types[c]))})" for c, t in widen.items()),
        )  # fmt: skip
    return widen, problems


@dataclass
class MonthsRead:
    """What the files alone tell about a table's months: problems, and the numeric columns to widen."""

    problems: list[str]
    widen: dict[str, T.DataType] = field(default_factory=dict)


def month_problems(spark: SparkSession, path: str, spec: TableSpec, months: list[dt.date]) -> MonthsRead:
    """What the files alone tell about the table's `months`, before any job: every month's directory
    present, every data file readable with the contract's columns and kinds, numeric types that differ
    between files readable as one."""
    storage = Storage(spark)
    if not storage.exists(path):
        return MonthsRead([f"{spec.name}: cannot read {path}: no such directory"])
    dirs, strays = month_dirs(storage, path, spec.name)
    if strays:
        log.warning("%s: ignoring directories that are not %s=YYYY-MM-01: %s", spec.name, MONTH, strays[:10])
    missing = [m for m in months if m not in dirs]
    problems = [f"{spec.name}: months missing {describe_months(missing)}"] if missing else []
    scan = scan_files(spark, path, spec, {m: dirs[m] for m in months if m in dirs})
    widen, type_problems = numeric_widening(spec.name, scan.types)
    return MonthsRead(problems + scan.problems + type_problems, widen)


def raise_problems(problems: list[str], context: str = "") -> None:
    """One InputContractError listing every problem, or nothing."""
    if problems:
        suffix = f" ({context})" if context else ""
        raise InputContractError("input contract violated" + suffix + ":\n  " + "\n  ".join(problems))


def read_months(
    spark: SparkSession, tables: list[tuple[str, TableSpec, list[dt.date]]], *, context: str = ""
) -> list[DataFrame]:
    """Each (path, spec, months) table read for just those months, once `month_problems` found nothing in
    any of them (one error lists every problem of every table); other months' directories, stray ones
    included, are never read."""
    found = [month_problems(spark, path, spec, months) for path, spec, months in tables]
    raise_problems([p for f in found for p in f.problems], context)
    return [
        read_table(spark, path, spec.name, months, widen=f.widen)
        for (path, spec, months), f in zip(tables, found, strict=True)
    ]


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
    raise_problems(problems, context)


def rows_read_problems(
    df: DataFrame, spec: TableSpec, months: list[dt.date], rows_read: Callable[[DataFrame], DataFrame]
) -> list[str]:
    """The contract checks that matter to this build, in one narrow scan of the table.

    Schema on the whole table; months present and null ids over every row of the months read
    (observed while scanning id + month); duplicate keys and 0/1 flags on the rows the build actually
    reads (`rows_read`: one per sampled subscriber and month), because only those can reach the
    training set. A full duplicate check shuffles every key of the window and costs more than the
    build itself; `dataset.validate_all_rows` turns it on.
    """
    problems = schema_problems(df, spec)
    typed = {f.name for f in df.schema.fields if kind_of(f.dataType) == spec.columns.get(f.name)}
    if not {ID, MONTH} <= typed:
        return problems
    flags = tuple(f for f in spec.flags if f in typed)
    seen = Observation(f"{spec.name}-months")
    window = (
        df.where(F.col(MONTH).isin(months))
        .select(ID, MONTH, *flags)
        .observe(
            seen,
            F.collect_set(MONTH).alias("months"),
            F.coalesce(F.sum(F.col(ID).isNull().cast("long")), F.lit(0)).alias("null_ids"),
        )
    )
    keys = rows_read(window).where(F.col(ID).isNotNull()).cache()
    try:
        keys.count()  # one scan: materializes the rows read and fills the observation
        metrics = seen.get
        if metrics["null_ids"]:
            problems.append(f"{spec.name}: column {ID!r} has {metrics['null_ids']} null values")
        missing = [m for m in months if m not in set(metrics["months"])]
        if missing:
            problems.append(f"{spec.name}: months missing {describe_months(missing)}")
        return problems + data_problems(keys, TableSpec(spec.name, {ID: STRING, MONTH: DATE}, flags), None)
    finally:
        keys.unpersist()


def key_problem_counts(df: DataFrame, flags: list[str]) -> dict[str, int]:
    """Repeated and null ids, and 0/1 flags below 0 (a flag breaks 0/1 only by a negative sentinel once
    cast), in a frame with one row per id expected; {} when there are none (one aggregation)."""
    per_id = df.groupBy(ID).agg(
        F.count(F.lit(1)).alias("n"), *[F.sum((F.col(c) < 0).cast("long")).alias(c) for c in flags]
    )
    found = per_id.agg(
        F.coalesce(F.sum((F.col("n") > 1).cast("long")), F.lit(0)).alias("repeated ids"),
        F.coalesce(F.sum(F.when(F.col(ID).isNull(), F.col("n"))), F.lit(0)).alias("null ids"),
        *[F.coalesce(F.sum(c), F.lit(0)).alias(f"{c} outside 0/1") for c in flags],
    ).first()
    return {k: int(v) for k, v in found.asDict().items() if v}
