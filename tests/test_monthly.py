"""Steps around scoring in the monthly DAG: validate-inputs, validate-output, publish (real Spark)."""

from __future__ import annotations

import datetime as dt
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.error import HTTPError

import pytest
from pyspark.sql import functions as F

from spark_app.contract import ID, MONTH, InputContractError, read_table
from spark_app.generate import PanelSpec, generate_panel
from spark_app.layout import PUBLISHED, scores_dir
from spark_app.monthly import OutputContractError, publish, validate_inputs, validate_output
from spark_app.storage import Storage, write_parquet_staged

START = dt.date(2025, 2, 1)
MONTH_ = dt.date(2025, 4, 1)


@pytest.fixture(scope="module")
def small_panel(spark, tmp_path_factory):
    """300 subscribers x 3 months: enough for the checks, seconds to write."""
    out = tmp_path_factory.mktemp("monthly-panel")
    generate_panel(spark, str(out), PanelSpec(subscribers=300, months=3, start=START, seed=5), partitions=1)
    return out


def write_scores(spark, settings, month, transform=lambda df: df):
    """Scores as `cltv score` lays them out, fabricated from the month's features (no model needed)."""
    features = read_table(spark, settings.paths.features, "features").where(F.col(MONTH) == F.lit(month))
    scores = features.select(ID, F.lit(month).alias("score_month"), (F.rand(3) * 1000).alias("cltv"))
    write_parquet_staged(Storage(spark), transform(scores), scores_dir(settings.paths, month))


def test_validate_inputs_passes_for_a_month_of_the_panel(spark, small_panel, settings_factory):
    validate_inputs(spark, settings_factory(panel=small_panel), MONTH_)


def test_validate_inputs_names_a_missing_month(spark, small_panel, settings_factory):
    with pytest.raises(InputContractError, match=r"months missing \[2025-05\]"):
        validate_inputs(spark, settings_factory(panel=small_panel), dt.date(2025, 5, 1))


def test_validate_inputs_names_a_missing_column(spark, small_panel, settings_factory, tmp_path):
    broken = tmp_path / "broken"
    features = read_table(spark, str(small_panel / "features"), "features").drop("price")
    features.write.partitionBy(MONTH).parquet(str(broken / "features"))
    settings = settings_factory(panel=small_panel, paths={"features": str(broken / "features")})
    with pytest.raises(
        InputContractError, match=r"features: month 2025-04: file part-\S+: column 'price' is missing"
    ):
        validate_inputs(spark, settings, MONTH_)


def test_validate_output_accepts_complete_scores(spark, small_panel, settings_factory):
    settings = settings_factory(panel=small_panel)
    write_scores(spark, settings, MONTH_)
    check = validate_output(spark, settings, MONTH_)
    assert check.rows == check.expected_subscribers > 0 and check.null_cltv == 0


@pytest.mark.parametrize(
    "transform, expected",
    [
        (lambda df: df.where(F.col(ID) != df.first()[ID]), "subscribers scored, features of 2025-04 have"),
        (lambda df: df.unionByName(df.limit(1)), "1 duplicate subscriber_id rows"),
        (
            lambda df: df.withColumn(
                "cltv", F.when(F.col(ID) == df.first()[ID], None).otherwise(F.col("cltv"))
            ),
            "1 rows with null cltv",
        ),
    ],
    ids=["missing-subscriber", "duplicate", "null-cltv"],
)
def test_validate_output_rejects_incomplete_scores(spark, small_panel, settings_factory, transform, expected):
    settings = settings_factory(panel=small_panel)
    write_scores(spark, settings, MONTH_, transform)
    with pytest.raises(OutputContractError, match=expected):
        validate_output(spark, settings, MONTH_)


def test_validate_output_without_scores_or_marker(spark, small_panel, settings_factory):
    settings = settings_factory(panel=small_panel)
    with pytest.raises(OutputContractError, match="does not exist"):
        validate_output(spark, settings, MONTH_)
    write_scores(spark, settings, MONTH_)
    Storage(spark).delete(f"{scores_dir(settings.paths, MONTH_)}/_SUCCESS")
    with pytest.raises(OutputContractError, match="has no _SUCCESS marker"):
        validate_output(spark, settings, MONTH_)


class Hook(BaseHTTPRequestHandler):
    calls: list[dict]
    status: int = 200

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.calls.append({"path": self.path, "body": json.loads(body)})
        self.send_response(self.status)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def hook():
    def start(status: int = 200):
        handler = type("Handler", (Hook,), {"calls": [], "status": status})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/cltv", handler.calls

    servers: list[ThreadingHTTPServer] = []
    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_publish_writes_the_marker_and_notifies(spark, small_panel, settings_factory, hook):
    settings = settings_factory(panel=small_panel)
    write_scores(spark, settings, MONTH_)
    url, calls = hook()
    record = publish(settings, MONTH_, url)
    marker = json.loads((settings_path(settings) / PUBLISHED).read_text())
    assert marker == record and marker["month"] == "2025-04"
    assert calls == [{"path": "/cltv", "body": record}]


def test_publish_refuses_without_scores_and_fails_on_webhook_error(
    spark, small_panel, settings_factory, hook
):
    settings = settings_factory(panel=small_panel)
    with pytest.raises(OutputContractError, match="_SUCCESS not found"):
        publish(settings, MONTH_, None)
    write_scores(spark, settings, MONTH_)
    url, _ = hook(status=500)
    with pytest.raises(HTTPError):
        publish(settings, MONTH_, url)


def settings_path(settings) -> Path:
    return Path(scores_dir(settings.paths, MONTH_))
