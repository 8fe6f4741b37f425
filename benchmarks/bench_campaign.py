"""Campaign design and evaluation at scale, each in a fresh process as a user runs it.

    .venv/bin/python benchmarks/bench_campaign.py --work work/bench/campaign --sizes 415000,1660000

Setup (cached under --work): a release trained on a 20k × 40 panel (the defaults), then for every size a
generated panel of that many subscribers × 12 months (2025-01..2025-12; 60 % of them are in the base of
the scored month: 1.66M gives a month of 1M), its months H = 2025-08 and M = 2025-10 scored with --detail
by that release. Then, per size, two fresh processes:

  design    `design_campaign` of the default `retention` campaign (three channels, 1,000 A/A splits) at M:
            the design without the A/A (select + balance + write) and the A/A step's own time, against a
            baseline in the same process: a scan of the month's scores (the columns the design reads)
            (every column) plus a write of as many rows in a target list's shape;
  evaluate  `evaluate_campaign` at E = 2025-12 against the same baseline;

each with the peak RSS of its Python driver (what collects to the driver) and of its JVM.
Goals: design without the A/A ≤ 2× and evaluate ≤ 2× the baseline; driver RSS within 10 % from the
smallest to the largest size.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench_score import MemorySampler
from pyspark.sql import functions as F

from spark_app.cli import setup_logging
from spark_app.config import load_settings
from spark_app.layout import read_scores, workdir_layers
from spark_app.months import parse_month

log = logging.getLogger("bench_campaign")
ROOT = Path(__file__).resolve().parent.parent
START, H, M, E = (parse_month(m) for m in ("2025-01", "2025-08", "2025-10", "2025-12"))
CAMPAIGN = "retention"


def settings_for(work: Path, panel: Path, release: Path, parties: bool = False):
    """The embedded default in `work`, reading `panel` (its parties too with `parties`), with the release
    store of `release` (benchmarks/bench_party_rollup.py shares these two helpers)."""
    layers = workdir_layers(work, panel, parties=parties)
    layers["mlflow"] = workdir_layers(release, release / "panel")["mlflow"]
    return load_settings(
        ROOT / "conf" / "local.yaml", overrides={**layers, "spark": {"master": "local[2]"}}, environ={}
    )


def ensure_release(spark, release: Path, parties: bool = False) -> None:
    """A champion trained on a 20k × 40 panel (once); with `parties` trained with them (the party model)
    and made champion whatever the gate says (a cost benchmark does not depend on it)."""
    from spark_app.dataset import build_dataset
    from spark_app.generate import PanelSpec, generate_panel
    from spark_app.months import add_months
    from spark_app.registry import promote
    from spark_app.training import train_release

    if (release / "done").exists():
        return
    settings = settings_for(release, release / "panel", release, parties)
    spec = PanelSpec(20_000, 40, parse_month("2022-01"), seed=3)
    generate_panel(spark, str(release / "panel"), spec)
    end = add_months(spec.start, settings.dataset.max_horizon + settings.dataset.target_months - 1)
    dataset = build_dataset(spark, settings, end)
    version = train_release(spark, settings, dataset.dataset_id).version
    if parties:
        promote(settings, version=version, override=True)
    else:
        promote(settings, auto=True)
    (release / "done").write_text("ok")


def ensure_size(spark, work: Path, release: Path, size: int) -> None:
    """A panel of `size` subscribers × 12 months, H and M scored with detail (once)."""
    from spark_app.generate import PanelSpec, generate_panel
    from spark_app.scoring import score_month

    root = work / f"n{size}"
    if (root / "done").exists():
        return
    generate_panel(spark, str(root / "panel"), PanelSpec(size, 12, START, seed=5))
    settings = settings_for(root, root / "panel", release)
    for month in (H, M):
        score_month(spark, settings, month, release="champion", detail=True)
    (root / "done").write_text("ok")


def baseline(spark, settings, out: Path) -> float:
    """A full scan of the month's scores (every column, as the monthly run writes them with --detail) plus
    a write of as many rows in the shape of a target list (7 columns)."""
    scores = read_scores(spark, settings.paths, M)
    started = time.perf_counter()
    scores.write.format("noop").mode("overwrite").save()
    shaped = scores.select(
        "subscriber_id",
        F.lit("channel").alias("channel"),
        F.lit("treatment").alias("group"),
        F.lit("01|mobile").alias("stratum"),
        F.col("cltv").alias("value_at_risk"),
        F.lit(1).alias("rank"),
        F.lit(1).alias("batch"),
    )
    shaped.write.mode("overwrite").parquet(str(out))
    return time.perf_counter() - started


def child(args: argparse.Namespace) -> None:
    """One fresh process: the job, then the baseline, with peak memory."""
    from spark_app.session import get_spark

    root = Path(args.work) / f"n{args.size}"
    settings = settings_for(root, root / "panel", Path(args.work) / "release")
    spark = get_spark(settings.spark)
    with MemorySampler() as memory:
        started = time.perf_counter()
        if args.child == "design":
            from spark_app.campaigns.design import design_campaign

            result = design_campaign(spark, settings, CAMPAIGN, M)
            seconds = result.record["seconds"]
            rows = sum(c["treated"] + c["control"] for c in result.record["channels"].values())
            figures = {
                "job": time.perf_counter() - started,
                "without_aa": seconds["select"] + seconds["balance"] + seconds["write"],
                "aa": seconds["history and A/A"],
                "list_rows": rows,
                "aa_sample": result.record["aa"].get("sample_rows"),
            }
        else:
            from spark_app.campaigns.evaluate import evaluate_campaign

            evaluate_campaign(spark, settings, CAMPAIGN, E)
            figures = {"job": time.perf_counter() - started}
    figures["baseline"] = baseline(spark, settings, root / f"baseline-{args.child}")
    figures.update(memory.peak)
    figures["subscribers"] = read_scores(spark, settings.paths, M).count()
    print("RESULT " + json.dumps(figures), flush=True)


def run_child(work: str, kind: str, size: int) -> dict:
    cmd = [sys.executable, __file__, "--work", work, "--child", kind, "--size", str(size)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ})
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"{kind} {size} failed ({out.returncode}):\n{out.stderr[-4000:]}")
    return json.loads(line[len("RESULT ") :])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", default="work/bench/campaign")
    parser.add_argument("--sizes", default="415000,1660000")
    parser.add_argument("--child", choices=("design", "evaluate"), default=None)
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--fresh", action="store_true", help="drop the cached panels, scores and release")
    args = parser.parse_args()
    setup_logging()
    if args.child:
        child(args)
        return
    from spark_app.session import get_spark

    work = (ROOT / args.work).resolve()
    if args.fresh and work.exists():
        shutil.rmtree(work)
    sizes = [int(s) for s in args.sizes.split(",")]
    release = work / "release"
    spark = get_spark(settings_for(release, release / "panel", release).spark)
    ensure_release(spark, release)
    for size in sizes:
        ensure_size(spark, work, release, size)
    spark.stop()
    results = {}
    for size in sizes:
        for kind in ("design", "evaluate"):
            log.info("timing %s at %s subscribers in a fresh process", kind, f"{size:,}")
            results[(kind, size)] = run_child(str(work), kind, size)
    print(
        f"\n{'':10} {'subscribers':>12} {'job s':>8} {'w/o A/A s':>10} {'A/A s':>7} {'baseline s':>11} "
        f"{'ratio':>6} {'driver MB':>10} {'JVM MB':>8}"
    )
    for (kind, _size), r in results.items():
        timed = r.get("without_aa", r["job"])
        print(
            f"{kind:10} {r['subscribers']:>12,} {r['job']:>8.1f} {timed:>10.1f} {r.get('aa', 0):>7.1f} "
            f"{r['baseline']:>11.1f} {timed / r['baseline']:>6.2f} {r['driver_python_mb']:>10.0f} "
            f"{r['driver_jvm_mb']:>8.0f}"
        )
    for kind in ("design", "evaluate"):
        small, large = results[(kind, sizes[0])], results[(kind, sizes[-1])]
        growth = large["driver_python_mb"] / small["driver_python_mb"] - 1
        print(
            f"{kind}: driver RSS {small['driver_python_mb']:.0f} → {large['driver_python_mb']:.0f} MB "
            f"({growth:+.1%}) from {sizes[0]:,} to {sizes[-1]:,}"
        )
    print(json.dumps({f"{k}@{s}": v for (k, s), v in results.items()}, indent=1, default=str))


if __name__ == "__main__":
    main()
