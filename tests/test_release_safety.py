"""What was reviewed is what runs — tried as an attacker and a careless operator would
(docs/failure_modes.md, cases 25–36): edited artifacts, unsealed releases, secrets in Spark conf, numeric
types that drift between files, hostile config, bad `--release` values, models that differ from the
config, an empty training set. Real Spark, real files, the release and scores the fault tests share.
Two promotions at once are tried against a real MLflow server in tests/test_registry.py.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from catboost import CatBoostRegressor
from faults_env import MONTH, M, fingerprint, first_file, score

from spark_app.cli import main
from spark_app.config import load_settings
from spark_app.contract import catalog_features_spec, read_months
from spark_app.errors import EXIT_USER_ERROR
from spark_app.months import add_months
from spark_app.registry import (
    DIGESTS_TAG,
    RELEASE_DIGEST_TAG,
    RUN_DIGESTS_TAG,
    RUN_RELEASE_DIGEST_TAG,
    load_release,
    sha256,
)
from spark_app.scoring import check_enabled_models
from spark_app.tracking import client as mlflow_client

pytestmark = pytest.mark.slow

SECRET = "s3cr3t-Key-42"


def bundle_file(work: Path, name: str) -> Path:
    """A file of the shared release's bundle, where the artifact store keeps it."""
    (found,) = [p for p in (work / "mlartifacts").rglob(name) if p.parent.name == "bundle"]
    return found


def run_file(work: Path, relative: str) -> Path:
    (found,) = [p for p in (work / "mlartifacts").rglob(Path(relative).name) if str(p).endswith(relative)]
    return found


@contextlib.contextmanager
def replaced(path: Path, data: bytes) -> Iterator[None]:
    """`path` holds `data` for the block, its own bytes again afterwards."""
    original = path.read_bytes()
    path.write_bytes(data)
    try:
        yield
    finally:
        path.write_bytes(original)


def scaled_model(path: Path, factor: float) -> bytes:
    """The .cbm with its predictions scaled: still a valid model file, a different model."""
    model = CatBoostRegressor()
    model.load_model(str(path))
    scale, bias = model.get_scale_and_bias()
    model.set_scale_and_bias(scale * factor, bias)
    out = path.with_name("scaled.tmp")
    model.save_model(str(out))
    try:
        return out.read_bytes()
    finally:
        out.unlink()


# ------------------------------------------------------------------ 25-28: release integrity
def test_25_an_edited_model_file_is_refused_naming_it_and_the_scores_stay(env, month_dir, capsys):
    _settings, _, conf, work = env
    before = fingerprint(month_dir)
    cbm = bundle_file(work, "sm_mobile.cbm")
    with replaced(cbm, scaled_model(cbm, 1.35)):
        assert score(conf) == EXIT_USER_ERROR
        assert main(["release", "verify", "--conf", str(conf), "--release", "challenger"]) == EXIT_USER_ERROR
        assert main(["promote", "--conf", str(conf), "--version", "1"]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "sm_mobile.cbm: SHA-256" in err and "was registered" in err and "Traceback" not in err
    assert fingerprint(month_dir) == before
    assert main(["release", "verify", "--conf", str(conf), "--release", "challenger"]) == 0


def test_26_an_edited_release_json_is_refused(env, month_dir, capsys):
    _settings, _, conf, work = env
    before = fingerprint(month_dir)
    manifest = bundle_file(work, "release.json")
    data = json.loads(manifest.read_text())
    data["models"]["sac"]["value"]["sign"] = 1.0  # SAC as income: CLTV +8 %, every gate would pass
    with replaced(manifest, json.dumps(data, indent=2, sort_keys=True).encode()):
        assert score(conf) == EXIT_USER_ERROR
    assert "release.json: SHA-256" in capsys.readouterr().err
    assert fingerprint(month_dir) == before


def test_27_edited_evaluation_data_stops_the_promotion(env, capsys):
    settings, _, conf, work = env
    oot = run_file(work, "evaluation/oot.parquet")
    frame = pd.read_parquet(oot)
    frame["sm_mobile_fact"] = frame["sm_mobile_fact"] * 1.3  # actuals that flatter a biased model
    tampered = oot.with_name("tampered.tmp")
    frame.to_parquet(tampered, index=False)
    with replaced(oot, tampered.read_bytes()):
        assert main(["promote", "--conf", str(conf), "--version", "1"]) == EXIT_USER_ERROR
    tampered.unlink()
    assert "evaluation/oot.parquet: SHA-256" in capsys.readouterr().err
    client = mlflow_client(settings.mlflow)
    assert not client.get_registered_model(settings.mlflow.model_name).aliases.get("champion")


def test_28_an_unsealed_release_is_refused_until_sealed(env, month_dir, capsys):
    settings, _, conf, work = env
    client = mlflow_client(settings.mlflow)
    name = settings.mlflow.model_name
    mv = client.get_model_version(name, "1")
    recorded = {k: mv.tags[k] for k in (DIGESTS_TAG, RELEASE_DIGEST_TAG)}
    for key in recorded:  # what a release registered before digests existed looks like
        client.delete_model_version_tag(name, "1", key)
    for key in (RUN_DIGESTS_TAG, RUN_RELEASE_DIGEST_TAG):
        client.delete_tag(mv.run_id, key)
    before = fingerprint(month_dir)
    assert score(conf) == EXIT_USER_ERROR
    assert "`cltv release seal --version 1`" in capsys.readouterr().err
    assert fingerprint(month_dir) == before
    # a sealed release whose files then change is not sealed again
    assert main(["release", "seal", "--conf", str(conf), "--version", "1"]) == 0
    tags = client.get_model_version(name, "1").tags
    assert {k: tags[k] for k in recorded} == recorded and tags["sealed_by"]
    cbm = bundle_file(work, "paid.cbm")
    with replaced(cbm, cbm.read_bytes()[:-8] + b"\0" * 8):
        assert main(["release", "seal", "--conf", str(conf), "--version", "1"]) == EXIT_USER_ERROR
    assert "paid.cbm: SHA-256" in capsys.readouterr().err
    assert load_release(settings, "1").digest == recorded[RELEASE_DIGEST_TAG]


def test_score_rows_and_the_summary_carry_the_verified_digest(env, month_dir):
    settings, _, _, _ = env
    digest = load_release(settings, "challenger").digest
    scores = pd.read_parquet(month_dir, columns=["release_version", "release_digest"])
    assert (scores["release_digest"] == digest).all() and len(digest) == 64
    run = mlflow_client(settings.mlflow).search_runs(
        [mlflow_client(settings.mlflow).get_experiment_by_name(settings.mlflow.experiment).experiment_id],
        "tags.`cltv.job` = 'score'",
    )[0]
    assert run.data.params["release_digest"] == digest


# ------------------------------------------------------------------ 29: secrets in spark.conf
def test_29_secrets_in_spark_conf_are_masked_everywhere_a_user_looks(env, monkeypatch, capfd):
    _settings, _, conf, _ = env
    monkeypatch.setenv(
        "CLTV_SPARK__CONF",
        f"{{spark.hadoop.fs.s3a.secret.key: {SECRET}, spark.ssl.keyPassword: {SECRET}x, "
        "spark.hadoop.fs.s3a.endpoint: http://minio:9000}",
    )
    assert main(["config", "show", "--conf", str(conf)]) == 0
    out = capfd.readouterr().out
    assert SECRET not in out and "spark.hadoop.fs.s3a.secret.key: '***'" in out
    assert "spark.hadoop.fs.s3a.endpoint: http://minio:9000" in out and "tenure_column: tenure_months" in out
    settings = load_settings(conf)
    assert settings.spark.conf["spark.hadoop.fs.s3a.secret.key"] == SECRET  # what Spark gets at runtime
    logging.getLogger("spark_app.test").warning("a library logs the conf: %s", settings.spark.conf)
    assert SECRET not in capfd.readouterr().err


# ------------------------------------------------------------------ 30: numeric types that drift
def rewrite_one_file(month_path: Path, column: str, arrow_type: pa.DataType) -> Path:
    """One of the month's files rewritten by 'another ETL tool': `column` with another physical type."""
    path = first_file(month_path)
    table = pq.read_table(path)
    index = table.schema.get_field_index(column)
    table = table.set_column(index, column, table.column(column).cast(arrow_type, safe=False))
    path.unlink()
    crc = path.with_name(f".{path.name}.crc")
    if crc.exists():
        crc.unlink()
    pq.write_table(table, path)
    return path


def test_30_integer_widths_that_differ_between_files_are_read_as_one_type(env, month_dir, panel_copy, spark):
    settings, _, _, _ = env
    copy, damaged = panel_copy
    features = copy / "features"
    before = pd.read_parquet(month_dir).drop(columns=["release_digest"]).sort_values("subscriber_id")
    rewrite_one_file(features / f"report_month={MONTH:%Y-%m-%d}", "tenure_months", pa.int64())
    assert main(["validate-inputs", "--conf", str(damaged), "--month", M]) == 0
    assert score(damaged) == 0
    after = pd.read_parquet(month_dir).drop(columns=["release_digest"]).sort_values("subscriber_id")
    pd.testing.assert_frame_equal(after.reset_index(drop=True), before.reset_index(drop=True))
    # a month of a training window in another width: read as one column with every row
    earlier = add_months(MONTH, -1)
    rewrite_one_file(features / f"report_month={earlier:%Y-%m-%d}", "price", pa.float32())
    spec = catalog_features_spec(settings.models.catalog())
    (frame,) = read_months(spark, [(str(features), spec, [earlier, MONTH])])
    assert frame.schema["tenure_months"].dataType.simpleString() == "bigint"
    assert frame.schema["price"].dataType.simpleString() == "double"
    assert frame.count() == spark.read.parquet(str(features)).where(f"report_month >= '{earlier}'").count()


def test_30b_int64_beside_double_is_one_clear_error_naming_both(env, month_dir, panel_copy, capsys):
    copy, damaged = panel_copy
    before = fingerprint(month_dir)
    odd = rewrite_one_file(copy / "features" / f"report_month={MONTH:%Y-%m-%d}", "price", pa.int64())
    assert main(["validate-inputs", "--conf", str(damaged), "--month", M]) == EXIT_USER_ERROR
    assert score(damaged) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "column 'price' is double in" in err
    assert f"int64 in 1 file (e.g. month {M}: file {odd.name})" in err
    assert "Traceback" not in err and fingerprint(month_dir) == before


# ------------------------------------------------------------------ 32, 36: hostile or mistyped config
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8)
)


@pytest.mark.parametrize(
    ("case", "text", "message"),
    [
        ("alias bomb", BOMB, "alias bomb"),
        ("self-reference", "paths: &p\n  features: *p\n", "refers to itself"),
        ("duplicate key", "mlflow:\n  experiment: a\nspark:\n  app_name: x\nmlflow:\n  experiment: b\n",
         "key 'mlflow' appears twice in one mapping (lines 1 and 5)"),
        ("python tag", "paths: !!python/object/apply:os.system ['echo pwned']\n", "not valid YAML"),
        ("huge target window", "dataset:\n  target_months: 1.0e+24\n", "dataset.target_months"),
        ("huge horizon", "dataset:\n  horizons: [1, 100000000]\n", "dataset.horizons.1"),
    ],
)  # fmt: skip
def test_32_hostile_config_exits_2_at_once_naming_file_and_key(tmp_path, capsys, case, text, message):
    conf = tmp_path / "hostile.yaml"
    conf.write_text(text)
    started = time.monotonic()
    assert main(["config", "show", "--conf", str(conf)]) == EXIT_USER_ERROR, case
    assert time.monotonic() - started < 10
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err[-1500:]
    assert "hostile.yaml" in err


def test_32b_a_pipe_or_a_device_as_conf_is_refused_without_blocking(tmp_path, capsys):
    fifo = tmp_path / "conf.yaml"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero")):
        started = time.monotonic()
        assert main(["config", "show", "--conf", str(path)]) == EXIT_USER_ERROR
        assert time.monotonic() - started < 10
    assert capsys.readouterr().err.count("is not a regular file") == 2


# ------------------------------------------------------------------ 33: --release
@pytest.mark.parametrize("ref", ["../../../etc/passwd", "99999999999999999999", "9", "v 1"])
def test_33_a_bad_release_reference_lists_what_there_is(env, month_dir, ref, capsys):
    _settings, _, conf, _ = env
    before = fingerprint(month_dir)
    assert main(["score", "--conf", str(conf), "--month", M, "--release", ref]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "versions: 1; aliases: challenger → v1" in err and "Traceback" not in err
    assert fingerprint(month_dir) == before


def test_33b_missing_or_unreadable_artifacts_are_named_before_any_task(env, month_dir, capsys, spark):
    settings, _, conf, work = env
    before = fingerprint(month_dir)
    bundle = bundle_file(work, "release.json").parent
    aside = bundle.with_name("bundle-moved")
    bundle.rename(aside)
    try:
        assert score(conf) == EXIT_USER_ERROR
    finally:
        aside.rename(bundle)
    assert "its bundle cannot be read from" in capsys.readouterr().err
    # a broken model file whose digest the registry records (registered broken): caught on the driver
    client = mlflow_client(settings.mlflow)
    name, mv = settings.mlflow.model_name, client.get_model_version(settings.mlflow.model_name, "1")
    recorded = mv.tags[DIGESTS_TAG]
    digests = json.loads(recorded)
    cbm = bundle_file(work, "sm_fmc.cbm")
    garbage = b"CBM1" + os.urandom(64)
    digests["sm_fmc.cbm"] = sha256(garbage)
    jobs_before = len(spark.sparkContext.statusTracker().getJobIdsForGroup())
    try:
        client.set_model_version_tag(name, "1", DIGESTS_TAG, json.dumps(digests, sort_keys=True))
        client.set_tag(mv.run_id, RUN_DIGESTS_TAG, json.dumps(digests, sort_keys=True))
        with replaced(cbm, garbage):
            assert score(conf) == EXIT_USER_ERROR
    finally:
        client.set_model_version_tag(name, "1", DIGESTS_TAG, recorded)
        client.set_tag(mv.run_id, RUN_DIGESTS_TAG, recorded)
    assert "model sm_fmc file sm_fmc.cbm is not a readable CatBoost model" in capsys.readouterr().err
    assert len(spark.sparkContext.statusTracker().getJobIdsForGroup()) == jobs_before  # no task ran
    assert fingerprint(month_dir) == before


# ------------------------------------------------------------------ 34: models.enabled vs the release
def test_34_a_release_whose_models_differ_from_the_config_is_said_or_refused(
    env, monkeypatch, caplog, capsys
):
    settings, _, conf, _ = env
    fewer = load_settings(conf, environ={"CLTV_MODELS__ENABLED": "[paid, active, sm_mobile]"})
    with caplog.at_level(logging.WARNING, logger="spark_app.scoring"):
        check_enabled_models(settings.models.catalog().ids, fewer)
    assert "in the release only: ['sm_fmc', 'sm_fttb', 'data_gb', 'voice_min', 'sac']" in caplog.text
    assert "models.enabled ['paid', 'active', 'sm_mobile']" in caplog.text
    monkeypatch.setenv("CLTV_MODELS__ENABLED", "[paid, active, sm_mobile]")
    monkeypatch.setenv("CLTV_SCORING__MODELS_MISMATCH", "error")
    assert score(conf) == EXIT_USER_ERROR
    assert "scoring.models_mismatch: error" in capsys.readouterr().err


# ------------------------------------------------------------------ 35: an empty training set
def test_35_an_empty_training_set_never_becomes_latest(env, monkeypatch, capsys):
    settings, _, conf, _ = env
    datasets = Path(settings.paths.datasets)
    datasets.mkdir(parents=True, exist_ok=True)
    latest = datasets / "latest"
    latest.write_text("ds-the-good-one\n")
    monkeypatch.setenv("CLTV_DATASET__SAMPLE_RATE", "0.0001")
    target_end = add_months(MONTH, -1).strftime("%Y-%m")
    assert main(["build-dataset", "--conf", str(conf), "--target-end", target_end]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "dataset.sample_rate=0.0001 keeps too few subscribers" in err and "latest" in err
    assert latest.read_text() == "ds-the-good-one\n"
    assert [p.name for p in datasets.iterdir()] == ["latest"]
    shutil.rmtree(datasets)

