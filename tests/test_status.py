"""`cltv status`, the early failure of a month without inputs, and the job summaries people and
benchmarks read — on the shared `env` release and its scored month (faults_env.MONTH), nothing trained."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from faults_env import MONTH, M

from spark_app.cli import main
from spark_app.errors import EXIT_UNREACHABLE, EXIT_USER_ERROR
from spark_app.files import LocalFileSystem
from spark_app.layout import SUCCESS, monitoring_dir, scores_dir
from spark_app.months import add_months, fmt
from spark_app.progress import StageTimer
from spark_app.scoring import SUMMARY_TOTAL, ScoreSummary, summary_line

ROOT = Path(__file__).resolve().parent.parent
NEXT = add_months(MONTH, 1)


def conf_with(env_conf: Path, tmp_path: Path, **paths: str) -> tuple[Path, dict]:
    data = json.loads(env_conf.read_text())
    data["paths"].update(paths)
    conf = tmp_path / "status.yaml"
    conf.write_text(json.dumps(data))
    return conf, data


@pytest.fixture
def outputs(env, tmp_path):
    """The env's scored month in a scores root of this test's own, published for real (`cltv publish`),
    with the monitoring output `cltv monitor` leaves (summary.json + _SUCCESS)."""
    settings, _panel, env_conf, _ = env
    scores = tmp_path / "scores"
    shutil.copytree(scores_dir(settings.paths, MONTH), scores / Path(scores_dir(settings.paths, MONTH)).name)
    conf, data = conf_with(env_conf, tmp_path, scores=str(scores), monitoring=str(tmp_path / "monitoring"))
    assert main(["publish", "--conf", str(conf), "--month", M]) == 0
    monitored = Path(monitoring_dir(json_paths(data), MONTH))
    monitored.mkdir(parents=True)
    record = {"month": M, "status": "warn", "release_version": "1"}
    (monitored / "summary.json").write_text(json.dumps(record))
    (monitored / SUCCESS).write_text("")
    return conf, data


def json_paths(data: dict):
    from spark_app.config import PathsConfig

    return PathsConfig(**data["paths"])


def test_status_shows_releases_months_locks_and_next_inputs(outputs, capsys):
    conf, data = outputs
    paths = json_paths(data)
    summary = json.loads((Path(scores_dir(paths, MONTH)) / "_summary.json").read_text())
    with LocalFileSystem().lock(scores_dir(paths, NEXT)):  # a run writing next month, right now
        started = time.perf_counter()
        assert main(["status", "--conf", str(conf), "--json"]) == 0
        seconds = time.perf_counter() - started
        got = json.loads(capsys.readouterr().out)
        assert main(["status", "--conf", str(conf)]) == 0
        table = capsys.readouterr().out
    assert seconds < 10
    (release,) = [r for r in got["releases"] if "challenger" in r["aliases"]]
    assert got["aliases"]["challenger"] == release["version"] == summary["release_version"]
    (month,) = got["months"]
    assert month["month"] == M and month["state"] == "published" and month["scores"] == "complete"
    assert month["rows"] == summary["rows"] and month["release"] == str(summary["release_version"])
    assert month["monitor"] == "warn" and month["published_at"]
    (lock,) = got["locks"]
    assert lock["held"] and f"pid {os.getpid()}" in lock["owner"] and lock["path"].endswith(fmt(NEXT) + "-01")
    assert got["inputs"] == {"features": "2022-01..2025-04", "facts": "2022-01..2025-04"}
    assert got["next_month"] == fmt(NEXT) and not got["next_inputs_ready"]
    assert any("does not exist" in p for p in got["next_inputs"])
    # the same for people: one line per month and release, aligned under their headings
    assert [f"v{release['version']}", "challenger"] in [line.split()[:2] for line in table.splitlines()]
    assert any(line.split()[:2] == [M, "published"] for line in table.splitlines())
    assert "HELD" in table and f"next month {fmt(NEXT)}: not ready" in table


def test_status_says_the_registry_is_unreachable_and_exits_75(env, tmp_path, capsys):
    _settings, _panel, env_conf, _ = env
    conf, data = conf_with(env_conf, tmp_path)
    data["mlflow"].update(tracking_uri="http://user:s3cr3tpw@127.0.0.1:9", registry_uri=None, http_retries=0,
                          http_timeout=5)  # fmt: skip
    conf.write_text(json.dumps(data))
    assert main(["status", "--conf", str(conf)]) == EXIT_UNREACHABLE
    captured = capsys.readouterr()
    assert "UNREACHABLE" in captured.out and "months (newest first)" in captured.out  # the rest is shown
    assert "s3cr3tpw" not in captured.out + captured.err and "user:***@127.0.0.1:9" in captured.err


def test_a_month_without_inputs_fails_before_spark_starts_and_lists_the_months_there_are(env, capsys):
    _settings, _panel, conf, _ = env
    started = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-m", "spark_app", "score", "--conf", str(conf), "--month", "2031-01"],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    assert run.returncode == EXIT_USER_ERROR, run.stderr[-2000:]
    assert seconds < 10, f"took {seconds:.1f} s"
    assert "features: months missing [2031-01]" in run.stderr and "(present: 2022-01..2025-04)" in run.stderr
    assert "spark_app.session" not in run.stderr and "spark " not in run.stderr  # no session was started
    # build-dataset names the whole window it lacks, compactly; monitor the month
    assert main(["build-dataset", "--conf", str(conf), "--target-end", "2031-01"]) == EXIT_USER_ERROR
    assert main(["monitor", "--conf", str(conf), "--month", "2031-01"]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "features: months missing [2028-01..2030-12]" in err  # T1 - 24 .. T2 - 1
    assert "facts: months missing [2030-01..2031-01]" in err  # the 13 target months
    assert "input contract violated (monitor 2031-01)" in err


def test_the_score_summary_is_in_words_and_keeps_the_total_benchmarks_parse():
    timer = StageTimer({"load release": 1.25, "check inputs": 0.5, "score and write": 10.0})
    summary = ScoreSummary(
        month=MONTH, release_version=3, path="/x", rows=1_234_567, holdout_rows=61_728, cltv_mean=231.94,
        cltv_quantiles={"p01": -40.0, "p05": -12.3, "p25": 80.0, "p50": 190.5, "p75": 320.0, "p95": 700.0,
                        "p99": 1_500.0},
        missing_values={"price": 12, "tenure_months": 1_500}, release_digest="ab" * 32,
        models=("paid", "active"),
    )  # fmt: skip
    line = summary_line(summary, timer.summary())
    assert line.startswith("scored 2025-04: 1,234,567 subscribers (61,728 holdout) with release v3")
    assert "CLTV mean 231.9, quantiles p05 -12.3 · p25 80.0 · p50 190.5 · p75 320.0 · p95 700.0" in line
    assert "missing tenure_months 1,500, price 12; non-finite none; unseen categories none" in line
    assert "{" not in line and "'" not in line  # no Python dict or repr
    assert float(SUMMARY_TOTAL.search(line)["seconds"]) == 11.8
    assert line.endswith("; 11.8s total (load release 1.2s, check inputs 0.5s, score and write 10.0s)")


def test_the_demo_hint_names_the_cltv_that_works(tmp_path, monkeypatch):
    from spark_app.pipeline import cltv_invocation

    script = tmp_path / ".venv" / "bin" / "cltv"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", "/nonexistent")
    assert cltv_invocation(str(script)) == ".venv/bin/cltv"
    assert cltv_invocation(str(ROOT / "spark_app" / "__main__.py")).endswith("python -m spark_app")
