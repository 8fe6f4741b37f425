"""`cltv demo`: the whole pipeline, embedded, on a synthetic panel — what the README's first command runs.

generate → build-dataset → train → promote → score (the last few months, with detail) → monitor → report.
Each stage is the same library call its CLI subcommand makes; the demo only chooses months and paths.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from spark_app.config import (
    BASE_FILES,
    Settings,
    Traversable,
    base_layers,
    default_conf_file,
    load_settings,
    packaged_conf,
    read_config_file,
)
from spark_app.dataset import build_dataset
from spark_app.generate import PanelSpec, generate_panel
from spark_app.layout import workdir_layers
from spark_app.monitoring import monitor_month
from spark_app.months import add_months, fmt, months_between, parse_month
from spark_app.progress import StageTimer
from spark_app.registry import promote
from spark_app.report import build_report
from spark_app.scoring import score_month
from spark_app.session import get_spark
from spark_app.training import train_release

log = logging.getLogger(__name__)

DEMO_START = parse_month("2023-01")


@dataclass(frozen=True)
class DemoPlan:
    """Which months each stage uses, derived from the panel's length and the horizons."""

    panel_start: dt.date
    panel_months: int
    target_end: dt.date
    score_months: list[dt.date] = field(default_factory=list)

    @classmethod
    def for_panel(cls, start: dt.date, months: int, settings: Settings) -> DemoPlan:
        earliest_end = add_months(start, settings.dataset.max_horizon + settings.dataset.target_months - 1)
        last = add_months(start, months - 1)
        if earliest_end > last:
            need = settings.dataset.max_horizon + settings.dataset.target_months
            raise ValueError(
                f"demo: --months must be at least {need} for horizons up to {settings.dataset.max_horizon}"
            )
        n_scores = min(4, months_between(earliest_end, last) + 1)
        scores = [add_months(last, -k) for k in reversed(range(n_scores))]
        return cls(start, months, earliest_end, scores)


def write_demo_conf(workdir: Path, conf: Path | None, env_file: Traversable | None = None) -> Path:
    """Copy the base layers beside a demo environment file (`conf`, else `env_file`, else the embedded
    local.yaml) whose paths all point into `workdir`."""
    conf_dir = workdir / "conf"
    conf_dir.mkdir(parents=True, exist_ok=True)
    for layer in base_layers(conf):
        (conf_dir / layer.name).write_text(layer.read_text())
    source = conf if conf is not None else env_file or default_conf_file()
    env = read_config_file(source) if source.name not in BASE_FILES else {}
    root = workdir.resolve()
    layers = workdir_layers(root, root / "panel")
    env["paths"] = layers["paths"]
    env.setdefault("mlflow", {}).update(layers["mlflow"])
    demo_conf = conf_dir / "demo.yaml"
    demo_conf.write_text(
        "# Written by `cltv demo`: every path inside the demo's work dir.\n" + yaml.safe_dump(env)
    )
    return demo_conf


def profile_conf(profile: str) -> Traversable:
    """The packaged environment file of a profile: conf/local.yaml, or conf/examples/<profile>.yaml."""
    if profile == "convergent":
        return default_conf_file()
    return packaged_conf().joinpath("examples", f"{profile}.yaml")


def run_demo(
    *, subscribers: int, months: int, workdir: Path | None, conf: Path | None, profile: str = "convergent"
) -> dict[str, object]:
    started = time.perf_counter()
    workdir = workdir or Path("work/demo" if profile == "convergent" else f"work/demo-{profile}")
    demo_conf = write_demo_conf(workdir, conf, env_file=None if conf else profile_conf(profile))
    settings = load_settings(demo_conf)
    plan = DemoPlan.for_panel(DEMO_START, months, settings)
    spark = get_spark(settings.spark)
    timer = StageTimer()
    log.info(
        "demo: %d subscribers x %d months in %s; training window ends %s; scoring %s",
        subscribers,
        months,
        workdir,
        fmt(plan.target_end),
        ", ".join(fmt(m) for m in plan.score_months),
    )
    with timer.stage("generate"):
        spec = PanelSpec(subscribers, months, DEMO_START, profile=profile)
        generate_panel(spark, str(workdir.resolve() / "panel"), spec)
    with timer.stage("build-dataset"):
        dataset = build_dataset(spark, settings, target_end=plan.target_end)
    with timer.stage("train"):
        release = train_release(spark, settings, dataset_id=dataset.dataset_id)
    with timer.stage("promote"):
        decision = promote(settings, version=None, auto=True)
    scores = []
    for month in plan.score_months:
        with timer.stage(f"score {fmt(month)}"):
            scores.append(score_month(spark, settings, month=month, release="champion", detail=True))
    last = plan.score_months[-1]
    with timer.stage("monitor"):
        monitor = monitor_month(spark, settings, month=last)
    with timer.stage("report"):
        report = build_report(spark, settings, month=last)
    summary = {
        "workdir": str(workdir),
        "dataset": dataset.dataset_id,
        "release": release,
        "promoted": decision.promoted,
        "scores": scores,
        "monitor_failed": monitor.failed,
        "report": report,
        "seconds": round(time.perf_counter() - started, 1),
    }
    log.info("demo finished in %.0fs: %s", summary["seconds"], timer.summary())
    log.info(
        "  dataset %s, release %s, champion promoted: %s", dataset.dataset_id, release, decision.promoted
    )
    verdict = (
        f"FAILED thresholds ({len(monitor.failures)})"
        if monitor.failed
        else f"warn ({len(monitor.warnings)} warnings)"
        if monitor.warnings
        else "ok"
    )
    log.info("  monitor %s for %s; report: %s", verdict, fmt(last), report)
    log.info(
        "  rerun any stage with --conf %s, e.g. cltv score --conf %s --month %s",
        demo_conf,
        demo_conf,
        fmt(last),
    )
    return summary
