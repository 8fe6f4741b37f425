"""Faults and bad input, tried before a user does (docs/failure_modes.md): two runs of one month, a kill
inside the swap, schema drift inside one month, corrupt and stray files, an MLflow outage, leaked
credentials, config gaps, bad numbers, a forged webhook body. Real Spark, real files, a real MLflow server.

Every bad input must exit 2 with one message naming what is wrong, and leave the previous good output of
the month byte-identical; an outage or a busy month exits 75 (retryable).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import ALL_MODELS, make_settings
from faults_env import MONTH, M, fingerprint, first_file, rewrite_month, score
from mlflow_server import mlflow_server
from releases import register_release

from cltv_argo.local import run_local
from spark_app.cli import main
from spark_app.errors import EXIT_UNREACHABLE, EXIT_USER_ERROR
from spark_app.layout import scores_dir
from spark_app.scoring import score_month
from spark_app.storage import Storage

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SECRET = "s3cr3t-pw"


# ------------------------------------------------------------------ 1-5: one writer per month
RACER = """
import sys
from spark_app.cli import main
sys.exit(main(["score", "--conf", sys.argv[1], "--month", sys.argv[2], "--release", "challenger"]))
"""


def test_01_a_second_run_of_the_same_month_is_refused_while_the_first_writes_it(
    env, month_dir, tmp_path, capfd
):
    """Run A (one Spark core, 1-row Arrow batches: slow) holds the month; B fails fast with 75 and touches
    nothing of A's; A then swaps in every row."""
    _settings, _, conf, _ = env
    slow = json.loads(conf.read_text())
    slow["spark"]["master"] = "local[1]"
    slow["scoring"]["arrow_batch_rows"] = 1
    slow_conf = tmp_path / "slow.yaml"
    slow_conf.write_text(json.dumps(slow))
    expected = pd.read_parquet(month_dir)
    a = subprocess.Popen([sys.executable, "-c", RACER, str(slow_conf), M], cwd=tmp_path)
    lock = month_dir.parent / f"_lock-{month_dir.name}"
    deadline = time.monotonic() + 120
    while not any(p.name.startswith("_staging-") for p in month_dir.parent.iterdir()):
        assert a.poll() is None and time.monotonic() < deadline, "run A never started writing"
        time.sleep(0.2)
    assert lock.exists()
    staging = [p for p in month_dir.parent.iterdir() if p.name.startswith("_staging-")]
    assert score(conf) == EXIT_UNREACHABLE
    assert "is being written by another run" in capfd.readouterr().err
    assert all(p.exists() for p in staging)  # B left A's staging alone
    assert a.wait(timeout=600) == 0
    got = pd.read_parquet(month_dir)
    assert len(got) == len(expected)
    assert not lock.exists()


def test_02_a_month_has_one_spelling_at_the_command_line(env, capsys):
    _, _, conf, _ = env
    for spelling in ("2025-04-01", " 2025-04", "２０２５-０４", "2025-4"):
        with pytest.raises(SystemExit) as exit_:
            score(conf, month=spelling)
        assert exit_.value.code == EXIT_USER_ERROR
    assert "expected YYYY-MM" in capsys.readouterr().err


def test_03_the_lock_of_a_killed_run_is_taken_over(env, month_dir):
    """A run killed with SIGKILL leaves its lock and staging; the next run (same host, dead pid) takes
    the month over at once, recovers and scores."""
    _settings, _, conf, _ = env
    before = pd.read_parquet(month_dir).sort_values("subscriber_id", ignore_index=True)
    lock = month_dir.parent / f"_lock-{month_dir.name}"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    lock.write_text(
        json.dumps({"token": "deadbeef0000", "host": os.uname().nodename, "pid": int(dead.stdout)})
    )
    (month_dir.parent / f"_staging-{month_dir.name}-deadbeef0000").mkdir()
    assert score(conf) == 0
    pd.testing.assert_frame_equal(
        pd.read_parquet(month_dir).sort_values("subscriber_id", ignore_index=True), before
    )
    assert [p.name for p in month_dir.parent.iterdir() if p.name.startswith("_")] == []


def test_04_a_run_that_lost_its_lease_swaps_nothing_in(spark, env, month_dir):
    _settings, _, _, _ = env
    before = fingerprint(month_dir)
    storage = Storage(spark)
    target = str(month_dir)
    with (
        pytest.raises(Exception, match="lost its lock"),
        storage.lock(target) as lease,
        storage.staged(target, lease) as staging,
    ):
        spark.range(3).write.parquet(staging)
        Path(lease.lock).write_text(json.dumps({"token": "someone-else", "host": "x", "pid": 1}))
    assert fingerprint(month_dir) == before
    Path(month_dir.parent / f"_lock-{month_dir.name}").unlink()


def test_05_a_kill_inside_the_swap_is_undone_when_the_next_run_of_the_month_starts(env, month_dir, capfd):
    _settings, _, conf, _ = env
    before = fingerprint(month_dir)
    retired = month_dir.parent / f"_retired-{month_dir.name}-cafe0000cafe"
    month_dir.rename(retired)  # what a SIGKILL between the two renames of the swap leaves
    assert not month_dir.exists()
    assert main(["validate-inputs", "--conf", str(conf), "--month", M]) == 0  # readers do not write
    assert score(conf, "--release", "nosuch") == EXIT_USER_ERROR  # fails after taking the lock…
    assert fingerprint(month_dir) == before  # …which first put the month back


# ------------------------------------------------------------------ 6-7, 10-13: input files
@pytest.mark.parametrize(
    ("case", "damage", "message"),
    [
        ("06", lambda d: rewrite_month(d, pd.read_parquet(d).drop(columns=["price"])),
         r"features: month 2025-04: file part-00000-rewritten\.parquet: column 'price' is missing"),
        ("07", lambda d: rewrite_month(d, pd.read_parquet(d).astype({"tenure_months": str})),
         r"features: month 2025-04: file part-00000-rewritten\.parquet: column 'tenure_months' is string, "
         r"expected numeric"),
        ("10", lambda d: first_file(d).write_bytes(first_file(d).read_bytes()[:200]),
         r"features: month 2025-04: file part-\S+: not a readable Parquet file"),
        ("11", lambda d: (d / "part-99999-notes.parquet").write_text("these are notes, not a table"),
         r"file part-99999-notes\.parquet: not a readable Parquet file"),
        ("13", lambda d: first_file(d).write_bytes(first_file(d).read_bytes()[:-16] + b"x" * 16),
         r"file part-\S+: not a readable Parquet file: .*Checksum.*stale \.crc"),
    ],
)  # fmt: skip
def test_bad_files_of_one_month_are_one_clear_error_and_the_good_scores_stay(
    env, month_dir, panel_copy, case, damage, message, capsys
):
    copy, damaged = panel_copy
    before = fingerprint(month_dir)
    damage(copy / "features" / f"report_month={MONTH:%Y-%m-%d}")
    assert score(damaged) == EXIT_USER_ERROR, case
    err = capsys.readouterr().err
    assert "Traceback" not in err
    import re

    assert re.search(message, err), err[-2000:]
    assert fingerprint(month_dir) == before


def test_12_a_stray_partition_directory_is_ignored_not_fatal(env, month_dir, panel_copy, capsys):
    copy, damaged = panel_copy
    stray = copy / "features" / "report_month=2025-13-01"
    stray.mkdir()
    (stray / "part-0.parquet").write_text("junk")
    assert main(["validate-inputs", "--conf", str(damaged), "--month", M]) == 0
    assert "ignoring directories that are not report_month=YYYY-MM-01: ['report_month=2025-13-01']" in (
        capsys.readouterr().err
    )


def test_24_validate_inputs_reports_both_tables_at_once(env, panel_copy, capsys):
    copy, damaged = panel_copy
    feat = copy / "features" / f"report_month={MONTH:%Y-%m-%d}"
    rewrite_month(feat, pd.read_parquet(feat).drop(columns=["price"]))
    facts = copy / "facts" / f"report_month={MONTH:%Y-%m-%d}"
    rewrite_month(facts, pd.read_parquet(facts).drop(columns=["sac"]))
    assert main(["validate-inputs", "--conf", str(damaged), "--month", M]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "column 'price' is missing" in err and "facts: month 2025-04" in err and "'sac' is missing" in err


# ------------------------------------------------------------------ 8-9: outage, credentials
def test_08_an_mlflow_outage_is_retryable_and_says_what_could_not_be_reached(env, tmp_path, capfd):
    _settings, panel, _, _work = env
    with mlflow_server(tmp_path / "server") as url:
        down = url.replace("127.0.0.1", f"cltv:{SECRET}@127.0.0.1")
        served = make_settings(tmp_path, panel, mlflow={"tracking_uri": down, "artifact_location": None})
    # the server is stopped now: score and promote must not blame the user
    conf = tmp_path / "down.yaml"
    data = served.resolved()
    data["mlflow"]["tracking_uri"] = down  # resolved() masks it; the job needs the real one
    data["mlflow"]["http_retries"] = 0
    conf.write_text(json.dumps(data))
    started = time.monotonic()
    assert score(conf) == EXIT_UNREACHABLE
    assert main(["promote", "--conf", str(conf)]) == EXIT_UNREACHABLE
    assert time.monotonic() - started < 60
    err = capfd.readouterr().err
    assert "cannot reach MLflow at http://cltv:***@127.0.0.1" in err
    assert "cltv train" not in err and SECRET not in err


def test_09_credentials_never_reach_logs_config_show_or_mlflow(spark, env, tmp_path, capfd):
    _settings, panel, conf, _ = env
    secret_url = f"https://etl:{SECRET}@namenode:9870/?token={SECRET}"
    data = json.loads(conf.read_text())
    data["paths"]["webhdfs_url"] = secret_url
    secret_conf = tmp_path / "secret.yaml"
    secret_conf.write_text(json.dumps(data))
    assert main(["config", "show", "--conf", str(secret_conf)]) == 0
    assert score(secret_conf) == 0
    captured = capfd.readouterr()
    assert SECRET not in captured.out + captured.err
    assert "https://etl:***@namenode:9870/?token=***" in captured.out
    # a release registered with the secret in its config: nothing MLflow keeps holds it
    work = tmp_path / "release"
    small = {"profiles": {m: {"params": {"iterations": 5, "depth": 2}} for m in ALL_MODELS}}
    secret_settings = make_settings(work, panel, models=small, paths={"webhdfs_url": secret_url})
    register_release(spark, secret_settings, panel, MONTH, work)
    kept = [p for p in (work / "mlartifacts").rglob("*") if p.is_file()] + [work / "mlflow.db"]
    assert len(kept) > 5 and not [p for p in kept if SECRET.encode() in p.read_bytes()]
    assert any(b"etl:***@namenode" in p.read_bytes() for p in kept)  # the config is there, masked


# ------------------------------------------------------------------ 14-19, 23: config gaps
@pytest.mark.parametrize(
    ("case", "argv", "env_vars", "message"),
    [
        ("14", ["config", "show"], {"CLTV_PATHS__SCORES": ""}, "paths.scores: String should have at least 1"),
        ("15", ["config", "show"], {"CLTV_PROMOTION__MAIN_METRIC": "{classification: auc, regression: wap}"},
         "unknown metric 'wap'"),
        ("16", ["config", "show"], {"CLTV_PROMOTION__TOLERANCE": "{paid: 0.01, sm_mobil: 0.02}"},
         "promotion.tolerance: unknown model ids ['sm_mobil']"),
        ("17", ["config", "show"], {"CLTV_MONITORING__PSI_FAIL": "0.05"}, "psi_fail (0.05) < psi_warn (0.1)"),
        ("18", ["config", "show"], {"CLTV_MODELS__PROFILES__SAC__PARAMS__ITERATIONS": "-5"},
         "iterations must be an integer >= 1"),
    ],
)  # fmt: skip
def test_config_gaps_fail_at_start_naming_the_key(env, monkeypatch, capsys, case, argv, env_vars, message):
    _, _, conf, _ = env
    for name, value in env_vars.items():
        monkeypatch.setenv(name, value)
    assert main([*argv, "--conf", str(conf)]) == EXIT_USER_ERROR, case
    assert message in capsys.readouterr().err


def test_19_a_directory_given_as_conf_is_refused(env, capsys):
    assert main(["config", "show", "--conf", str(env[2].parent)]) == EXIT_USER_ERROR
    assert "is a directory" in capsys.readouterr().err


def test_23_a_wait_that_could_never_end_is_refused(env):
    for bad in ("nan", "inf", "-1"):  # 0 is fine: check once
        with pytest.raises(SystemExit) as exit_:
            main(["wait-for-inputs", "--conf", str(env[2]), "--month", M, "--timeout", bad])
        assert exit_.value.code == EXIT_USER_ERROR


# ------------------------------------------------------------------ 20-21: bad numbers
def test_20_nan_and_infinite_numbers_are_scored_as_missing_and_counted(spark, env, panel_copy, tmp_path):
    settings, _, _, _ = env
    copy, _ = panel_copy
    month = copy / "features" / f"report_month={MONTH:%Y-%m-%d}"
    frame = pd.read_parquet(month)
    frame.loc[0, "price"] = np.nan
    frame.loc[1, "price"] = np.inf
    frame.loc[2, "data_gb_1m"] = -np.inf
    frame.loc[3, "data_gb_1m"] = 1e308
    frame.loc[4, "margin_1m"] = None  # a null: missing, not a bad number
    table = pa.Table.from_pandas(frame, preserve_index=False)
    nan_kept = pa.array(frame["price"].to_numpy(), from_pandas=False)  # a NaN stays a NaN, not a null
    table = table.set_column(table.schema.get_field_index("price"), "price", nan_kept)
    shutil.rmtree(month)
    month.mkdir()
    pq.write_table(table, month / "part-00000-nan.parquet")
    shared = {
        "tracking_uri": settings.mlflow.tracking_uri,
        "artifact_location": settings.mlflow.artifact_location,
    }
    local = make_settings(tmp_path, copy, mlflow=shared)
    summary = score_month(spark, local, MONTH, release="challenger")
    assert summary.non_finite_values == {"price": 2, "data_gb_1m": 2}
    assert summary.missing_values == {"margin_1m": 1}
    scores = pd.read_parquet(scores_dir(local.paths, MONTH))
    assert np.isfinite(scores["cltv"]).all() and len(scores) == len(frame)


def test_21_negative_volumes_warn_by_default_and_refuse_when_configured(env, panel_copy, monkeypatch, capsys):
    copy, damaged = panel_copy
    facts = copy / "facts" / f"report_month={MONTH:%Y-%m-%d}"
    frame = pd.read_parquet(facts)
    frame.loc[:4, "data_gb"] = -1.0
    rewrite_month(facts, frame)
    assert main(["validate-inputs", "--conf", str(damaged), "--month", M]) == 0
    assert "implausible values: data_gb: 5 rows below 0.0" in capsys.readouterr().err
    monkeypatch.setenv("CLTV_DATASET__IMPLAUSIBLE_FACTS", "error")
    assert main(["validate-inputs", "--conf", str(damaged), "--month", M]) == EXIT_USER_ERROR
    assert "implausible values: data_gb: 5 rows below 0.0" in capsys.readouterr().err


# ------------------------------------------------------------------ 22: the failure webhook
class Recorder(BaseHTTPRequestHandler):
    bodies: ClassVar[list[bytes]] = []

    def do_POST(self):
        Recorder.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_22_a_forged_month_cannot_forge_the_failure_webhooks_json(env, tmp_path):
    server = HTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    forged = '2025-04", "status": "Succeeded'
    try:
        code = run_local(
            ROOT / "argo" / "monthly-scoring.yaml",
            {"month": forged, "conf": str(env[2]), "webhook": f"http://127.0.0.1:{server.server_port}/hook"},
            local_defaults={},
            in_process=True,
        )
    finally:
        server.shutdown()
    assert code == EXIT_USER_ERROR  # wait-for-inputs refuses the month
    body = json.loads(Recorder.bodies[-1])
    assert body["status"] == "Failed" and body["month"] == forged
