"""Grafana's figures: jobs push to a real Pushgateway, a real Prometheus scrapes it (loopback, free ports,
temporary data), and every query of dashboards/cltv-monthly.json answers; a Pushgateway that cannot be
reached is a warning, never a failed job."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from faults_env import MONTH, M, score
from prometheus_client import generate_latest

from spark_app.backtest import BACKTEST_COLUMNS, VALUE_CUM, coverage_checks, survival_checks
from spark_app.cli import main
from spark_app.config import MonitoringConfig
from spark_app.layout import scores_dir
from spark_app.metrics import (
    Figure,
    build_registry,
    monitor_figures,
    push_job_metrics,
    release_figures,
    score_figures,
    split_figures,
)

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "dashboards" / "cltv-monthly.json"
BINARIES = ("prometheus-pushgateway", "prometheus")


@dataclass(frozen=True)
class Servers:
    gateway: str
    prometheus: str


def binaries() -> dict[str, str]:
    """The two Debian binaries; absent: a skip on a workstation, a failure under CI (.ci/run has them)."""
    found = {name: shutil.which(name) for name in BINARIES}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        reason = f"{', '.join(missing)} not installed (apt-get install prometheus-pushgateway prometheus)"
        if os.environ.get("CI"):
            pytest.fail(f"under CI: {reason}; .ci/run installs them")
        pytest.skip(reason)
    return {name: str(path) for name, path in found.items()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def eventually(probe: Callable[[], Any], timeout: float = 20.0) -> Any:
    """`probe()` once it is truthy (Prometheus scrapes every second), else its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.3)


@contextlib.contextmanager
def running(command: list[str], ready: str, log_file: Path) -> Iterator[None]:
    """Start `command`, wait for `ready` to answer 200, stop it by its PID whatever happens."""
    with log_file.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"{command[0]} exited with {proc.returncode}: {log_file.read_text()[-2000:]}")
            with contextlib.suppress(OSError), urllib.request.urlopen(ready, timeout=1) as response:
                if response.status == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"{command[0]} not ready after 30 s: {log_file.read_text()[-2000:]}")
            time.sleep(0.2)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def servers(tmp_path_factory) -> Iterator[Servers]:
    """A Pushgateway and a Prometheus scraping it every second with honor_labels (job and instance are the
    groups'), as a deployment would configure the scrape."""
    found = binaries()
    work = tmp_path_factory.mktemp("prometheus")
    gateway, prometheus = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    config = work / "prometheus.yml"
    config.write_text(
        json.dumps(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [
                    {
                        "job_name": "pushgateway",
                        "honor_labels": True,
                        "static_configs": [{"targets": [gateway]}],
                    }
                ],
            }
        )
    )
    gateway_cmd = [found["prometheus-pushgateway"], f"--web.listen-address={gateway}"]
    prometheus_cmd = [
        found["prometheus"],
        f"--config.file={config}",
        f"--storage.tsdb.path={work / 'data'}",
        f"--web.listen-address={prometheus}",
    ]
    try:
        with (
            running(gateway_cmd, f"http://{gateway}/-/ready", work / "pushgateway.log"),
            running(prometheus_cmd, f"http://{prometheus}/-/ready", work / "prometheus.log"),
        ):
            yield Servers(f"http://{gateway}", f"http://{prometheus}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def query(servers: Servers, expr: str) -> list[dict[str, Any]]:
    answer = get_json(f"{servers.prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def groups(servers: Servers, instance: str) -> dict[str, dict[str, Any]]:
    """The Pushgateway's groups of deployment `instance`, by job."""
    data = get_json(f"{servers.gateway}/api/v1/metrics")["data"]
    return {g["labels"]["job"]: g for g in data if g["labels"].get("instance") == instance}


def series(group: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return group.get(name, {}).get("metrics", [])


def dashboard_queries(instance: str) -> list[tuple[str, str]]:
    """(panel title, expr) of every target, with the dashboard's variables as Grafana would fill them."""
    dashboard = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"].replace("$instance", instance).replace("$__range", "1h")
            assert "$" not in expr, f"{panel['title']}: unresolved variable in {expr}"
            out.append((panel["title"], expr))
    return out


def fresh_instance() -> str:
    return "t" + uuid.uuid4().hex[:10]  # a deployment of its own per test: no group another test pushed


@pytest.fixture
def pushing(env, servers, tmp_path, monkeypatch) -> tuple[MonitoringConfig, Path]:
    """The env's conf with the Pushgateway set through CLTV_* variables, scores written under tmp_path."""
    instance = fresh_instance()
    monkeypatch.setenv("CLTV_MONITORING__PUSHGATEWAY_URL", servers.gateway)
    monkeypatch.setenv("CLTV_MONITORING__PUSHGATEWAY_INSTANCE", instance)
    monkeypatch.setenv("CLTV_PATHS__SCORES", str(tmp_path / "scores"))
    return MonitoringConfig(pushgateway_url=servers.gateway, pushgateway_instance=instance), env[2]


def monitor_tables() -> dict[str, pd.DataFrame]:
    """A monitored month's tables: a backtest (one overall row per model at horizon 1) through the real
    coverage and survival checks, and drift tables as monitoring writes them."""
    base = {"score_month": dt.date(2025, 3, 1), "release_version": "1", "horizon": 1, "population": "all",
            "dimension": "all", "value": "all", "n": 2000, "rmse": 1.0}  # fmt: skip
    rows = [
        {**base, "model_id": "paid", "forecast_mean": 0.91, "actual_mean": 0.9, "bias": 0.01, "wape": 0.1},
        {**base, "model_id": "sm_fmc", "forecast_mean": 10.2, "actual_mean": 10.0, "bias": 0.02, "wape": 0.3},
        {**base, "model_id": VALUE_CUM, "forecast_mean": 30, "actual_mean": 31, "bias": -0.03, "wape": 0.4,
         "bounded": 2000, "covered": 1580, "coverage": 0.79, "interval_level": 0.8},
    ]  # fmt: skip
    backtest = pd.DataFrame(rows).reindex(columns=BACKTEST_COLUMNS)
    backtest["bounded"] = backtest["bounded"].fillna(0).astype("int64")
    cfg = MonitoringConfig()
    return {
        "drift": pd.DataFrame(
            {
                "feature": ["tenure_months", "segment"],
                "kind": ["numeric", "categorical"],
                "psi": [0.04, 0.12],
                "unseen_share": [0.0, 0.002],
                "status": ["ok", "warn"],
            }
        ),
        "prediction_drift": pd.DataFrame({"column": ["cltv"], "psi": [0.03], "status": ["ok"]}),
        "backtest": backtest,
        "coverage": coverage_checks(backtest, cfg),
        "survival": survival_checks(backtest, ["paid", "active"], cfg),
        # with paths.parties: the value backtest and the interval coverage per household
        "party_backtest": pd.DataFrame(
            [{"level": "household", "horizon": 1, "size": "all", "model_id": VALUE_CUM, "bias": -0.02}]
        ),
        "party_coverage": pd.DataFrame([{"level": "household", "horizon": 1, "coverage": 0.78}]),
    }


def test_the_dashboard_reads_its_prometheus_from_a_variable():
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    for panel in dashboard["panels"]:
        uids = {panel["datasource"]["uid"], *(t["datasource"]["uid"] for t in panel["targets"])}
        assert uids == {"${datasource}"}, panel["title"]


def test_a_figure_without_a_value_is_no_series_and_a_wrong_label_set_fails_nothing(caplog):
    registry = build_registry("score", MONTH, 3, {"score and write": 1.5}, {"mean": float("nan")}, "ok")
    text = generate_latest(registry).decode()
    assert 'cltv_stage_duration_seconds{month="2025-04",release="3",stage="score and write"} 1.5' in text
    assert "cltv_last_success_timestamp_seconds{" in text and "cltv_mean{" not in text
    cfg = MonitoringConfig(pushgateway_url=f"http://127.0.0.1:{free_port()}")
    assert not push_job_metrics(cfg, "monitor", MONTH, None, {}, [Figure("feature_psi", 0.1)], "ok")
    assert "labels [], expected ['feature']" in caplog.text  # a warning, not an exception in the job


def test_every_dashboard_query_answers_from_a_real_prometheus(pushing, servers):
    cfg, conf = pushing
    # real jobs through the CLI: score (rows, CLTV, stages) and publish; the CLI adds exit code and wall time
    assert score(conf) == 0
    assert main(["publish", "--conf", str(conf), "--month", M]) == 0
    # the other jobs' figures, from the tables and records those jobs hand to push_job_metrics
    tables = monitor_tables()
    assert push_job_metrics(cfg, "monitor", M, "1", {"feature drift": 3.0, "backtest": 5.0},
                            monitor_figures(tables, 0, 1, [1, 3]), "warn")  # fmt: skip
    quality = [{"model_id": "paid", "metric": "roc_auc", "value": 0.8, "naive": 0.7, "beats_naive": True,
                "agg_bias": 0.01}]  # fmt: skip
    assert push_job_metrics(cfg, "train", None, "1", {"fit models": 20.0}, release_figures(quality), "ok")
    splits = {"train_surv": {"rows": 700}, "train_reg": {"rows": 700}, "oot": {"rows": 300}}
    assert push_job_metrics(cfg, "build-dataset", "2025-03", None, {"check inputs": 1.0},
                            split_figures(splits), "ok")  # fmt: skip
    assert push_job_metrics(cfg, "promote", None, "1", {}, {"promoted": 1, "champion_version": 1}, "ok")

    pushed = groups(servers, cfg.pushgateway_instance)
    assert {"cltv_score", "cltv_publish", "cltv_monitor", "cltv_train", "cltv_build_dataset"} <= set(pushed)
    scored = pushed["cltv_score"]
    assert [m["labels"]["month"] for m in series(scored, "cltv_rows")] == [M]
    assert float(series(scored, "cltv_rows")[0]["value"]) > 0
    assert float(series(scored, "cltv_job_exit_code")[0]["value"]) == 0
    assert series(scored, "cltv_job_duration_seconds") and series(
        scored, "cltv_last_success_timestamp_seconds"
    )
    stages = {m["labels"]["stage"] for m in series(scored, "cltv_stage_duration_seconds")}
    assert {"load release", "score and write"} <= stages

    empty = [
        f"{title}: {expr}"
        for title, expr in dashboard_queries(cfg.pushgateway_instance)
        if not eventually(lambda expr=expr: query(servers, expr))
    ]
    assert empty == []


def test_a_job_keeps_one_group_month_after_month_and_a_failure_keeps_its_last_success(pushing, servers):
    cfg, conf = pushing
    for month in (dt.date(2025, 3, 1), dt.date(2025, 4, 1)):
        figures = score_figures(1000, 50, 12.5, {"p50": 10.0})
        assert push_job_metrics(cfg, "score", month, "2", {"score and write": 2.0}, figures, "ok")
    pushed = groups(servers, cfg.pushgateway_instance)
    assert list(pushed) == ["cltv_score"]  # one group per job, never one per month
    assert {m["labels"]["month"] for m in series(pushed["cltv_score"], "cltv_total")} == {"2025-04"}
    total = f'cltv_total{{instance="{cfg.pushgateway_instance}"}}'
    assert eventually(lambda: [r["metric"]["month"] for r in query(servers, total)] == ["2025-04"])

    assert push_job_metrics(cfg, "publish", dt.date(2025, 4, 1), None, {}, {}, "ok")
    success = series(
        groups(servers, cfg.pushgateway_instance)["cltv_publish"], "cltv_last_success_timestamp_seconds"
    )
    assert main(["publish", "--conf", str(conf), "--month", "1999-01"]) == 2  # not scored: a user error
    failed = groups(servers, cfg.pushgateway_instance)["cltv_publish"]
    assert [m["labels"]["status"] for m in series(failed, "cltv_job_status")] == ["failed"]
    assert [float(m["value"]) for m in series(failed, "cltv_job_exit_code")] == [2.0]
    assert series(failed, "cltv_last_success_timestamp_seconds") == success  # still the last success's


def test_an_unreachable_pushgateway_is_one_warning_and_the_job_succeeds(env, tmp_path, monkeypatch, capsys):
    settings, _panel, conf, _work = env
    url = f"http://cltv:s3cret-pw@127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("CLTV_MONITORING__PUSHGATEWAY_URL", url)
    monkeypatch.setenv("CLTV_MONITORING__PUSHGATEWAY_TIMEOUT_SECONDS", "2")
    monkeypatch.setenv("CLTV_PATHS__SCORES", str(tmp_path / "scores"))
    paths = settings.paths.model_copy(update={"scores": str(tmp_path / "scores")})
    month = Path(scores_dir(paths, MONTH))  # a scored month for publish: its _SUCCESS marker
    month.mkdir(parents=True)
    (month / "_SUCCESS").write_text("")
    # publish pushes itself, wait-for-inputs through the CLI's closing push: one warning each, exit 0
    for argv in (["publish", "--month", M], ["wait-for-inputs", "--month", M, "--timeout", "0"]):
        capsys.readouterr()
        assert main([argv[0], "--conf", str(conf), *argv[1:]]) == 0
        err = capsys.readouterr().err
        warnings = [line for line in err.splitlines() if "WARNING" in line and "Pushgateway" in line]
        assert len(warnings) == 1, err
        assert "cltv:***@127.0.0.1" in warnings[0] and "s3cret-pw" not in err
