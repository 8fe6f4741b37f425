"""The distributed path, as shipped: a Spark standalone master + 2 workers on loopback (executors in their
own JVMs), the package zipped the way docker/Dockerfile zips it, and both Argo DAGs run through their
manifests' own spark-submit commands (`run_local(..., image_root=...)`). The driver and the executors run
an interpreter that can import spark_app only from the zip. The scores must equal local mode's. (The
training set is built by Spark SQL alone, no Python on the executors: that a rebuild on other partitions
gives the same rows is tests/test_dataset.py's.)
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml
from image_root import build_image_root
from spark_cluster import standalone_cluster

from cltv_argo.local import run_local
from spark_app.config import load_settings
from spark_app.generate import PanelSpec, generate_panel
from spark_app.layout import workdir_layers
from spark_app.registry import CHAMPION, load_release
from spark_app.scoring import score_month
from spark_app.tracking import client as mlflow_client

ROOT = Path(__file__).resolve().parent.parent

TARGET_END = "2025-01"
MONTH = "2025-02"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def isolated_python(root: Path) -> str:
    """A virtualenv that sees the project's dependencies but not the project: spark_app comes from the zip.

    A .pth line adding a directory to sys.path does not run that directory's .pth files, so the editable
    install's import hook stays out.
    """
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(root)], check=True)
    site = next(root.glob("lib/python3*/site-packages"))
    deps = next(p for p in map(Path, sys.path) if p.name == "site-packages" and (p / "pyspark").is_dir())
    (site / "project-deps.pth").write_text(f"{deps}\n")
    python = str(root / "bin" / "python")
    probe = subprocess.run([python, "-c", "import spark_app"], cwd=root, capture_output=True, check=False)
    assert probe.returncode != 0, "the isolated interpreter must not import spark_app from the source tree"
    return python


def cluster_conf(tmp_path: Path, panel: Path) -> Path:
    """An environment file alone in its directory: base.yaml and models.yaml come from the package (zip)."""
    conf = {
        **workdir_layers(tmp_path, panel, parties=True),  # persons and households, number changes
        "dataset": {"horizons": list(range(1, 7)), "target_months": 3},
        "spark": {"shuffle_partitions": 4},
        "monitoring": {"psi_fail": 50.0, "psi_warn": 40.0, "prediction_psi_fail": 50.0,
                       "prediction_psi_warn": 40.0, "unseen_fail": 1.0, "unseen_warn": 1.0,
                       "survival_warn": {1: 0.5}, "survival_fail": {1: 0.9}},
        "promotion": {"max_abs_bias": 10.0},  # 2,000 subscribers: the gate would judge noise
        "models": {"profiles": {m: {"params": {"iterations": 30}} for m in
                                ("paid", "active", "sm_mobile", "sm_fmc", "sm_fttb", "data_gb", "voice_min",
                                 "sac")}},
    }  # fmt: skip
    path = tmp_path / "conf-alone" / "cluster-test.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(conf))
    return path


def test_both_dags_run_on_a_standalone_cluster_from_the_zip_and_match_local_mode(spark, tmp_path, capfd):
    panel = tmp_path / "panel"
    generate_panel(spark, str(panel), PanelSpec(2000, 14, dt.date(2024, 1, 1), seed=5), partitions=2)
    conf = cluster_conf(tmp_path, panel)
    image = build_image_root(tmp_path / "image")
    python = isolated_python(tmp_path / "py")
    env = {
        **os.environ,
        "PYSPARK_PYTHON": python,
        "PYSPARK_DRIVER_PYTHON": python,
        "SPARK_LOCAL_IP": "127.0.0.1",
    }
    with standalone_cluster(tmp_path / "cluster", workers=2, cores=1) as cluster:
        params = {"conf": str(conf), "master": cluster.master}
        argo = ROOT / "argo"
        release = run_local(argo / "release.yaml", {**params, "target_end": TARGET_END}, environ=env,
                            image_root=image)  # fmt: skip
        monthly = run_local(argo / "monthly-scoring.yaml", {**params, "month": MONTH, "wait_timeout": "30"},
                            environ=env, image_root=image)  # fmt: skip
        apps = cluster.state()["completedapps"]
    assert not [pid for pid in cluster.pids if alive(pid)], "the cluster's JVMs are stopped by pid"
    captured = capfd.readouterr()
    logged = captured.out + captured.err  # spark-submit pipes its Python driver's stderr to its stdout
    (tmp_path / "dags.log").write_text(logged)
    assert (release, monthly) == (0, 0), logged[-5000:]
    # every Spark step ran on the cluster (an application with executors), importing spark_app from the zip
    spark_steps = (
        "build-dataset",
        "train",
        "validate-inputs",
        "score",
        "validate-output",
        "monitor",
        "report",
    )
    assert len(apps) == len(spark_steps)
    assert all(a["cores"] >= 2 for a in apps), [(a["name"], a["cores"]) for a in apps]
    for step in spark_steps:
        assert re.search(rf"cltv \S+ {step} \(spark_app from {re.escape(str(image))}/spark_app\.zip", logged)

    settings = load_settings(conf, environ={})
    assert (tmp_path / "scores" / f"score_month={MONTH}-01" / "_PUBLISHED").is_file()
    assert list((tmp_path / "monitoring").rglob("cltv-report-*.html"))
    client = mlflow_client(settings.mlflow)
    champion = client.get_model_version_by_alias(settings.mlflow.model_name, CHAMPION)

    # the same release and month in local mode give the same rows
    local = load_settings(
        conf,
        environ={},
        overrides={
            "paths": {
                "scores": str(tmp_path / "local-scores"),
                "party_scores": str(tmp_path / "local-party_scores"),
            }
        },
    )
    score_month(spark, local, month=dt.date(2025, 2, 1), release=champion.version, detail=True)
    on_cluster = spark.read.parquet(str(tmp_path / "scores" / f"score_month={MONTH}-01"))
    in_local = spark.read.parquet(str(tmp_path / "local-scores" / f"score_month={MONTH}-01"))
    assert on_cluster.count() == in_local.count() > 1000
    assert on_cluster.exceptAll(in_local).count() == 0 and in_local.exceptAll(on_cluster).count() == 0
    # and so are the person and household scores, with the party intervals of the release's party model
    for level in ("person", "household"):
        part = f"level={level}/score_month={MONTH}-01"
        cluster_parties = spark.read.parquet(str(tmp_path / "party_scores" / part))
        local_parties = spark.read.parquet(str(tmp_path / "local-party_scores" / part))
        assert cluster_parties.count() == local_parties.count() > 500
        assert cluster_parties.exceptAll(local_parties).count() == 0
        assert {"cltv_lower", "cltv_upper", "interval_level"} <= set(cluster_parties.columns)
    assert load_release(settings, CHAMPION).manifest["parties"]["rho"]  # fitted on the cluster
