"""The person and household rollup at scale, each size in a fresh process as a user runs it (issue 22.8).

    .venv/bin/python benchmarks/bench_party_rollup.py --work work/bench/party-rollup --sizes 415000,1660000

Setup (cached under --work): a release trained with persons and households on a 20k × 40 panel (it fits
the party model: joint exits and party intervals), then for every size a generated panel of that many
subscribers × 12 months with its parties table (60 % of them are in the base of the scored month: 1.66M
gives a month of 1M), month M = 2025-10 scored by that release. Then, per size, one fresh process times,
median of --repeats:

  rollup    `scoring.write_party_scores` on the month's written scores: read them back, attach the month's
            parties once, one groupBy per level (joint-exit survival, party intervals by size), write both
            levels and count them — what `cltv score` runs after the batches;
  baseline  one plain groupBy-aggregate-write per level of the same scores joined with the same parties:
            count and sum of the same value columns, max of the survival columns, written as Parquet;

with the peak RSS of its Python driver and of its JVM. Goals: rollup ≤ 1.5× the baseline at 1M; driver
RSS within 10 % from the smallest to the largest size.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_campaign import ensure_release
from bench_campaign import settings_for as campaign_settings
from bench_score import MemorySampler
from pyspark.sql import functions as F

from spark_app.cli import setup_logging
from spark_app.layout import scores_dir
from spark_app.months import parse_month

log = logging.getLogger("bench_party_rollup")
ROOT = Path(__file__).resolve().parent.parent
START, M = parse_month("2025-01"), parse_month("2025-10")


def settings_for(work: Path, panel: Path, release: Path):
    return campaign_settings(work, panel, release, parties=True)


def ensure_size(spark, work: Path, release: Path, size: int) -> None:
    """A panel of `size` subscribers × 12 months with parties, M scored (once)."""
    from spark_app.generate import PanelSpec, generate_panel
    from spark_app.scoring import score_month

    root = work / f"n{size}"
    if (root / "done").exists():
        return
    generate_panel(spark, str(root / "panel"), PanelSpec(size, 12, START, seed=5))
    settings = settings_for(root, root / "panel", release)
    score_month(spark, settings, M, release="champion")
    (root / "done").write_text("ok")


def baseline(
    spark, scores_path: str, parties_month, values: list[str], survival: list[str], out: Path
) -> float:
    """One plain groupBy-aggregate-write per level of the same scores joined with the same parties."""
    from spark_app.parties import HOUSEHOLD, PERSON, attach_parties

    started = time.perf_counter()
    attached = attach_parties(spark.read.parquet(scores_path), parties_month)
    for level, key in (("person", PERSON), ("household", HOUSEHOLD)):
        rows = attached.where(F.col(key).isNotNull()) if key == HOUSEHOLD else attached
        rows.groupBy(key).agg(
            F.count(F.lit(1)).alias("members"),
            *[F.sum(c).alias(c) for c in values],
            *[F.max(c).alias(c) for c in survival],
        ).write.mode("overwrite").parquet(str(out / level))
    return time.perf_counter() - started


def child(args: argparse.Namespace) -> None:
    """One fresh process: the rollup and the baseline, alternating, with peak memory."""
    from spark_app.parties import LEVELS, PartyModel, parties_of_month, read_party_inputs, rollup_columns
    from spark_app.registry import load_release
    from spark_app.scoring import make_plan, write_party_scores
    from spark_app.session import get_spark

    root = Path(args.work) / f"n{args.size}"
    settings = settings_for(root, root / "panel", Path(args.work) / "release")
    spark = get_spark(settings.spark)
    loaded = load_release(settings, "champion")
    plan = make_plan(settings, loaded.manifest, loaded.version, loaded.digest, M, False)
    model = PartyModel.from_json(loaded.manifest.get("parties"))
    scores = scores_dir(settings.paths, M)
    figures: dict[str, object] = {"rollup": [], "baseline": []}
    with MemorySampler() as memory:
        for repeat in range(args.repeats):
            with tempfile.TemporaryDirectory(dir=root) as tmp:
                inputs = read_party_inputs(spark, settings.paths, [M], M, None, validate=False)
                month = parties_of_month(inputs.parties, M)
                values, survival = rollup_columns(
                    spark.read.parquet(scores).columns, plan.formula.components, plan.formula.survival
                )

                def rollup(month=month, tmp=tmp) -> float:
                    started = time.perf_counter()
                    figures["parties"] = write_party_scores(
                        spark, scores, month, plan, {lv: f"{tmp}/{lv}" for lv in LEVELS}, model
                    )
                    return time.perf_counter() - started

                # in turn first: the first of a fresh process pays the JVM's warm-up
                order = ["rollup", "baseline"] if repeat % 2 == 0 else ["baseline", "rollup"]
                for which in order:
                    figures[which].append(
                        rollup() if which == "rollup"
                        else baseline(spark, scores, month, values, list(survival), Path(tmp) / "b")
                    )  # fmt: skip
    figures.update(memory.peak)
    figures["subscribers"] = spark.read.parquet(scores).count()
    print("RESULT " + json.dumps(figures), flush=True)


def run_child(work: str, size: int, repeats: int) -> dict:
    cmd = [sys.executable, __file__, "--work", work, "--child", "--size", str(size)]
    cmd += ["--repeats", str(repeats)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ})
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"rollup {size} failed ({out.returncode}):\n{out.stderr[-4000:]}")
    return json.loads(line[len("RESULT ") :])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", default="work/bench/party-rollup")
    parser.add_argument("--sizes", default="415000,1660000")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", action="store_true")
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
    ensure_release(spark, release, parties=True)
    for size in sizes:
        ensure_size(spark, work, release, size)
    spark.stop()
    results = {}
    for size in sizes:
        log.info("timing the rollup at %s subscribers in a fresh process", f"{size:,}")
        results[size] = run_child(str(work), size, args.repeats)
    print(
        f"\n{'subscribers':>12} {'persons':>10} {'households':>11} {'rollup s':>9} {'baseline s':>11} "
        f"{'ratio':>6} {'driver MB':>10} {'JVM MB':>8}"
    )
    for r in results.values():
        rollup, base = statistics.median(r["rollup"]), statistics.median(r["baseline"])
        print(
            f"{r['subscribers']:>12,} {r['parties']['person']:>10,} {r['parties']['household']:>11,} "
            f"{rollup:>9.1f} {base:>11.1f} {rollup / base:>6.2f} {r['driver_python_mb']:>10.0f} "
            f"{r['driver_jvm_mb']:>8.0f}"
        )
    small, large = results[sizes[0]], results[sizes[-1]]
    growth = large["driver_python_mb"] / small["driver_python_mb"] - 1
    print(f"driver RSS {small['driver_python_mb']:.0f} → {large['driver_python_mb']:.0f} MB ({growth:+.1%})")
    print(json.dumps({str(k): v for k, v in results.items()}, indent=1, default=str))


if __name__ == "__main__":
    main()
