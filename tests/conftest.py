"""Shared fixtures: one local SparkSession for the whole run, and a small generated panel.

Hooks (no fixture changes): tests are marked `slow` automatically (they need Spark, a trained release or
a server, or live in a slow file), so `make test-fast` = `pytest -m "not slow"`; every test that takes
more than SLOW_TEST_SECONDS is reported as it finishes (progress in a long run); and the run fails if it
left new files in the repository root (mlruns/, catboost_info/, spark-warehouse/, …).
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
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
    # without persons and households: the shared panel stays the one every test was written on; the party
    # path has tests and panels of its own (test_party_*.py, the demo)
    return PanelSpec(
        subscribers=PANEL_SUBSCRIBERS, months=PANEL_MONTHS, start=PANEL_START, seed=11, parties=False
    )


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


# ------------------------------------------------------------------ hooks: markers, progress, leftovers
REPO_ROOT = Path(__file__).resolve().parent.parent
# A test needing one of these (directly or through another fixture) is slow: a JVM, a panel, a release.
SLOW_FIXTURES = frozenset({"spark", "panel_dir", "env", "month_dir", "panel_copy"})
# Files whose tests are slow without those fixtures: real servers, subprocess pipelines, pip installs.
SLOW_FILES = frozenset({"test_cluster.py", "test_docker.py", "test_faults.py", "test_registry.py"})
SLOW_TEST_SECONDS = 10.0
# What pytest itself leaves (gitignored caches); anything else new in the root is a test's leftover.
OWN_CACHES = frozenset({".pytest_cache", "__pycache__"})
_root_before = pytest.StashKey[set]()
_durations = pytest.StashKey[dict]()


_config_of_run: pytest.Config | None = None  # pytest_runtest_logreport is not given the config


def pytest_configure(config: pytest.Config) -> None:
    global _config_of_run
    _config_of_run = config


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark slow what needs Spark, a release or a server, so the fast loop is `-m "not slow"`."""
    for item in items:
        needs = SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        if needs or item.path.name in SLOW_FILES:
            item.add_marker(pytest.mark.slow)


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_root_before] = set(os.listdir(REPO_ROOT))
    session.config.stash[_durations] = {"started": time.monotonic(), "done": 0, "total": "?"}


def pytest_collection_finish(session: pytest.Session) -> None:
    session.config.stash[_durations]["total"] = len(session.items)  # after -m / -k deselection


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Report a test slower than SLOW_TEST_SECONDS when it finishes: setup + call + teardown, so a
    session fixture built for it (a panel, a release) is counted where it was built."""
    config = _config_of_run
    if config is None:
        return
    state = config.stash[_durations]
    phases = state.setdefault(report.nodeid, {})
    phases[report.when] = report.duration
    if report.when != "teardown":
        return
    state["done"] += 1
    del state[report.nodeid]
    total = sum(phases.values())
    if total <= SLOW_TEST_SECONDS:
        return
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    elapsed = time.monotonic() - state["started"]
    setup = f" (setup {phases['setup']:.1f} s)" if phases.get("setup", 0.0) > SLOW_TEST_SECONDS / 2 else ""
    if config.get_verbosity() <= 0:  # -q: the line of dots has no newline yet
        reporter.write("\n")
    reporter.write_line(
        f"  slow test {state['done']}/{state['total']} ({elapsed / 60:.1f} min into the run): "
        f"{total:.1f} s {report.nodeid}{setup}"
    )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run when it left new files or directories in the repository root."""
    before = session.config.stash.get(_root_before, None)
    if before is None:
        return
    left = sorted(set(os.listdir(REPO_ROOT)) - before - OWN_CACHES)
    if not left:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    message = (
        f"the test run left {', '.join(left)} in {REPO_ROOT}: a test writes into the working directory "
        "(give it tmp_path, CatBoost train_dir / allow_writing_files=False, an explicit MLflow tracking URI)"
    )
    if reporter is not None:
        reporter.write_line(message, red=True, bold=True)
    if session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
