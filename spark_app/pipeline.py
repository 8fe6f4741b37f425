"""`cltv demo`: the whole pipeline, embedded, on a synthetic panel — what the README's first command runs.

generate → build-dataset → train → promote → score (the last few months, with detail) → monitor → report.
Each stage is the same library call its CLI subcommand makes; the demo only chooses months and paths.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from spark_app.campaigns.design import DesignResult, design_campaign
from spark_app.campaigns.evaluate import evaluate_campaign
from spark_app.campaigns.publish import publish_campaign
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
from spark_app.errors import EXIT_VERDICT, CltvError
from spark_app.generate import EffectTruth, PanelSpec, generate_panel, replay_with_effect
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


class PromotionRefused(CltvError):
    """The demo's release failed the promotion gate: a verdict (exit 1), not a crash."""

    exit_code = EXIT_VERDICT


@dataclass(frozen=True)
class DemoPlan:
    """Which months each stage uses, derived from the panel's length and the horizons."""

    panel_start: dt.date
    panel_months: int
    target_end: dt.date
    score_months: list[dt.date] = field(default_factory=list)
    campaign: str | None = None  # the first configured campaign: designed at campaign_month, evaluated last
    campaign_month: dt.date | None = None

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
        campaign = next(iter(settings.campaigns), None)
        outcome = settings.campaigns[campaign].outcome_months if campaign else 0
        # a campaign needs its month M = last − N and its history month H = M − N scored (with detail)
        n_scores = min(max(n_scores, 2 * outcome + 1), months - 1)
        scores = [add_months(last, -k) for k in reversed(range(n_scores))]
        if campaign and 2 * outcome + 1 > n_scores:
            campaign = None
        month = add_months(last, -outcome) if campaign else None
        return cls(start, months, earliest_end, scores, campaign, month)


def write_demo_conf(
    workdir: Path, conf: Path | None, env_file: Traversable | None = None, parties: bool = True
) -> Path:
    """Copy the base layers beside a demo environment file (`conf`, else `env_file`, else the embedded
    local.yaml) whose paths all point into `workdir` (the panel's parties table too, unless `parties` is
    off)."""
    conf_dir = workdir / "conf"
    conf_dir.mkdir(parents=True, exist_ok=True)
    for layer in base_layers(conf):
        (conf_dir / layer.name).write_text(layer.read_text())
    source = conf if conf is not None else env_file or default_conf_file()
    env = read_config_file(source) if source.name not in BASE_FILES else {}
    root = workdir.resolve()
    layers = workdir_layers(root, root / "panel", parties=parties)
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
    *,
    subscribers: int,
    months: int,
    workdir: Path | None,
    conf: Path | None,
    profile: str = "convergent",
    parties: bool = True,
) -> dict[str, object]:
    """Every stage on a generated panel; with `parties` (the default) the panel has persons, households and
    number changes, and every stage uses them (paths.parties)."""
    started = time.perf_counter()
    workdir = workdir or Path("work/demo" if profile == "convergent" else f"work/demo-{profile}")
    env_file = None if conf else profile_conf(profile)
    demo_conf = write_demo_conf(workdir, conf, env_file=env_file, parties=parties)
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
        spec = PanelSpec(subscribers, months, DEMO_START, profile=profile, parties=parties)
        generate_panel(spark, str(workdir.resolve() / "panel"), spec)
    with timer.stage("build-dataset"):
        dataset = build_dataset(spark, settings, target_end=plan.target_end)
    with timer.stage("train"):
        release = train_release(spark, settings, dataset_id=dataset.dataset_id)
    with timer.stage("promote"):
        decision = promote(settings, version=None, auto=True)
    if not decision.promoted:
        raise PromotionRefused(
            f"demo stopped: the release did not pass the promotion gate, so there is no champion to score "
            f"with — {decision.reason}"
        )
    scores = []
    before = [m for m in plan.score_months if plan.campaign_month is None or m <= plan.campaign_month]
    for month in before:
        with timer.stage(f"score {fmt(month)}"):
            scores.append(score_month(spark, settings, month=month, release="champion", detail=True))
    effect = None
    if plan.campaign is not None and plan.campaign_month is not None:
        effect = run_campaign(spark, settings, plan, spec, workdir, timer)
    for month in plan.score_months[len(before) :]:
        with timer.stage(f"score {fmt(month)}"):
            scores.append(score_month(spark, settings, month=month, release="champion", detail=True))
    last = plan.score_months[-1]
    with timer.stage("monitor"):
        monitor = monitor_month(spark, settings, month=last)
    evaluation = None
    if effect is not None:
        with timer.stage("campaign evaluate"):
            evaluation = evaluate_campaign(spark, settings, plan.campaign, last)
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
    log.info("  dataset %s, release %s", dataset.dataset_id, release)
    log.info("  promotion: %s", decision.reason)
    verdict = (
        f"FAILED thresholds ({len(monitor.failures)})"
        if monitor.failed
        else f"warn ({len(monitor.warnings)} warnings)"
        if monitor.warnings
        else "ok"
    )
    log.info("  monitor %s for %s; report: %s", verdict, fmt(last), report)
    if evaluation is not None and effect is not None:
        retention = evaluation.results[
            (evaluation.results["metric"] == "retention") & (evaluation.results["estimator"] == "stratified")
        ]
        measured = ", ".join(
            f"{r.channel} {r.diff:+.1%} (95 % CI {r.ci_low:+.1%}..{r.ci_high:+.1%})"
            if np.isfinite(r.ci_low)
            else f"{r.channel} n/a (too few subscribers per stratum and group)"
            for r in retention.itertuples(index=False)
        )
        log.info(
            "  campaign %s of %s: planted effect on Retention_%d of the treated %+.1f points (churn hazard "
            "x %s); measured by channel: %s", plan.campaign, fmt(plan.campaign_month), len(effect.window),
            100 * effect.truth.retention_effect, effect.truth.churn_factor, measured,
        )  # fmt: skip
        summary["campaign"] = {"design": effect.design.path, "evaluation": evaluation.path}
    cltv = cltv_invocation()
    log.info(
        "  rerun any stage with --conf %s, e.g. %s score --conf %s --month %s",
        demo_conf, cltv, demo_conf, fmt(last),
    )  # fmt: skip
    log.info("  the state of it all: %s status --conf %s", cltv, demo_conf)
    return summary


def _shown(path: Path) -> str:
    """`path` relative to the working directory when it is inside it (`.venv/bin/cltv`), else absolute
    (symlinks kept: a venv's python is a link to the interpreter it was made from)."""
    absolute = Path(os.path.abspath(path))
    try:
        return str(absolute.relative_to(Path.cwd()))
    except ValueError:
        return str(absolute)


def cltv_invocation(argv0: str | None = None) -> str:
    """How to run `cltv` again from here, for the hints a command prints: the script this process was
    started as (`.venv/bin/cltv`), `cltv` when that is what the PATH finds, or `<python> -m spark_app`."""
    import shutil
    import sys

    argv0 = sys.argv[0] if argv0 is None else argv0
    started = Path(argv0)
    if started.name == "cltv" and started.exists():
        on_path = shutil.which("cltv")
        if on_path and Path(on_path).resolve() == started.resolve():
            return "cltv"
        return _shown(started)
    venv_python = Path(sys.prefix, "bin", "python")  # a venv's own name for its interpreter
    python = venv_python if sys.prefix != sys.base_prefix and venv_python.exists() else Path(sys.executable)
    return f"{_shown(python)} -m spark_app"


DEMO_CHURN_FACTOR = 0.5  # the demo's planted campaign effect: the treated churn half as often for N months


@dataclass(frozen=True)
class CampaignDemo:
    design: DesignResult
    truth: EffectTruth
    window: list[dt.date]


def run_campaign(
    spark: SparkSession, settings: Settings, plan: DemoPlan, spec: PanelSpec, workdir: Path, timer: StageTimer
) -> CampaignDemo | None:
    """Design and publish the campaign at month M, then replay the panel's months after M with a planted
    effect on the treated (spark_app.generate.replay_with_effect), so the evaluation has one to find."""
    name, month = plan.campaign, plan.campaign_month
    assert name is not None and month is not None
    with timer.stage("campaign design"):
        design = design_campaign(spark, settings, name, month)
    if design.refused:  # a verdict of the design's own checks: not published, nothing to evaluate
        log.warning(
            "campaign %s %s: the design was refused (%s); not published, not evaluated",
            name, fmt(month), "; ".join(design.reasons),
        )  # fmt: skip
        return None
    with timer.stage("campaign publish"):
        publish_campaign(spark, settings, name, month)
    outcome = settings.campaigns[name].outcome_months
    window = [add_months(month, k) for k in range(1, outcome + 1)]
    with timer.stage("replay with a planted effect"):
        listed = spark.read.parquet(design.path)
        treated = listed.where(F.col("group") == F.lit("treatment")).select("subscriber_id")
        ids = [r[0] for r in treated.collect()]
        truth = replay_with_effect(
            spark, str(workdir.resolve() / "panel"), spec, ids, window[0], outcome, DEMO_CHURN_FACTOR
        )
    return CampaignDemo(design, truth, window)
