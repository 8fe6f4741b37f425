"""Shared fixtures: one local SparkSession for the whole run, and a small generated panel."""

from __future__ import annotations

import datetime as dt
import os
import sys
from pathlib import Path

import pytest

from spark_app.config import Settings, load_settings
from spark_app.generate import PanelSpec, generate_panel
from spark_app.layout import workdir_layers

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "docker"))  # docker/image_root.py

# The default catalog (conf/models.yaml), for tests that iterate over its models.
DEFAULTS = load_settings(None, environ={})
CATALOG = DEFAULTS.models.catalog()
ALL_MODELS = CATALOG.ids
AMOUNT_MODELS = tuple(e.model_id for e in CATALOG.amounts)
FACT_OF = {e.model_id: e.fact for e in CATALOG}
FACT_COLUMNS = tuple(e.fact for e in CATALOG)

PANEL_START = dt.date(2022, 1, 1)
PANEL_MONTHS = 40
PANEL_SUBSCRIBERS = 3000


@pytest.fixture(scope="session")
def spark():
    from spark_app.config import SparkConfig
    from spark_app.session import get_spark

    session = get_spark(SparkConfig(master="local[2]", driver_memory="4g", shuffle_partitions=4))
    yield session
    session.stop()


@pytest.fixture(scope="session")
def panel_spec() -> PanelSpec:
    return PanelSpec(subscribers=PANEL_SUBSCRIBERS, months=PANEL_MONTHS, start=PANEL_START, seed=11)


@pytest.fixture(scope="session")
def panel_dir(spark, panel_spec, tmp_path_factory) -> Path:
    """A small synthetic panel on disk (features/ and facts/), shared read-only by all tests."""
    out = tmp_path_factory.mktemp("panel")
    generate_panel(spark, str(out), panel_spec, partitions=3)
    return out


@pytest.fixture(scope="session")
def env(spark, panel_dir, tmp_path_factory):
    """For the fault tests: a copy of the panel we may damage, a registered release, the good scores of
    faults_env.MONTH, and a conf file — one of each for the whole run (tests restore what they damage)."""
    import json
    import shutil

    from faults_env import MONTH, M
    from releases import register_release

    from spark_app.cli import main

    work = tmp_path_factory.mktemp("faults")
    panel = work / "panel"
    shutil.copytree(panel_dir / "features", panel / "features")
    shutil.copytree(panel_dir / "facts", panel / "facts")
    small = {"profiles": {m: {"params": {"iterations": 10, "depth": 3}} for m in ALL_MODELS}}
    settings = make_settings(work, panel, models=small, scoring={"arrow_batch_rows": 2000})
    register_release(spark, settings, panel, MONTH, work)
    conf = work / "conf" / "faults.yaml"
    conf.parent.mkdir()
    conf.write_text(json.dumps(json.loads(json.dumps(settings.resolved()))))  # JSON is YAML
    assert main(["score", "--conf", str(conf), "--month", M, "--release", "challenger"]) == 0
    return settings, panel, conf, work


@pytest.fixture
def month_dir(env) -> Path:
    from faults_env import MONTH

    from spark_app.layout import scores_dir

    return Path(scores_dir(env[0].paths, MONTH))


@pytest.fixture
def panel_copy(env, tmp_path):
    """A fresh copy of the panel to damage, and a conf pointing at it (scores shared with `env`)."""
    import json
    import shutil

    _settings, panel, conf, _ = env
    copy = tmp_path / "panel"
    shutil.copytree(panel / "features", copy / "features")
    shutil.copytree(panel / "facts", copy / "facts")
    data = json.loads(conf.read_text())
    data["paths"]["features"] = str(copy / "features")
    data["paths"]["facts"] = str(copy / "facts")
    damaged = tmp_path / "damaged.yaml"
    damaged.write_text(json.dumps(data))
    return copy, damaged


def make_settings(workdir: Path, panel: Path | None = None, **sections) -> Settings:
    """Settings for a test: the project's conf/, with every path inside `workdir`."""
    panel = panel or workdir / "panel"
    overrides = {
        **workdir_layers(workdir, panel),
        "spark": {"master": "local[2]", "shuffle_partitions": 4},
    }
    for name, values in sections.items():
        overrides.setdefault(name, {}).update(values)
    root = Path(__file__).resolve().parent.parent
    return load_settings(root / "conf" / "local.yaml", overrides=overrides, environ={})


@pytest.fixture
def settings_factory(tmp_path):
    def factory(panel: Path | None = None, **sections) -> Settings:
        return make_settings(tmp_path, panel, **sections)

    return factory
