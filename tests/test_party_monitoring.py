"""Monitoring and the review page per person and household (`paths.parties`): the party backtest gives the
figures summed by hand (a number change counts the new id's facts for the old), its interval coverage is
judged with the release's party edges — and is n/a for a release trained without parties —, monitor logs
and writes it, the review page shows it. Campaigns with parties: tests/test_campaigns.py.

The hand-made part writes its own tiny scores, facts and parties; the end-to-end part scores one month of
the shared release (conftest `env`) once, with parties and --detail, beside naive detail scores of the three
months before it.
"""

from __future__ import annotations

import datetime as dt
import io
import re
from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import FACT_COLUMNS
from test_party_scoring import write_parties

from spark_app.backtest import NO_PARTY_MODEL, run_party_backtest
from spark_app.checks import SKIPPED, worst
from spark_app.cltv import ValueFormula
from spark_app.evaluation import fmt_money, fmt_number, fmt_pct
from spark_app.metrics import build_registry, monitor_figures
from spark_app.monitoring import monitor_month, read_monitoring
from spark_app.months import add_months
from spark_app.parties import PartyModel, party_partition, party_scores_root
from spark_app.registry import load_release
from spark_app.report import build_report, check_party_coverage, section_parties
from spark_app.scoring import score_month

# ------------------------------------------------------------------ a hand-made month
T = dt.date(2024, 6, 1)
S1, S2 = dt.date(2024, 5, 1), dt.date(2024, 4, 1)  # scored 1 and 2 months before T
MODELS = ["paid", "active", "sm_mobile", "data_gb", "sac"]
FACT = {"paid": "in_paid_base", "active": "in_active_base"}
# who was scored when
SCORED = {S1: ["A", "B", "C", "D", "E", "F", "G"], S2: ["A", "B", "C", "D"]}
# (subscriber → person, household, previous id) per month; F has no row: its own person, no household.
# G continues C (a number change): both are in the base in May (the overlap month), only G in June.
PARTIES = {
    S2: {"A": ("p1", "h1", None), "B": ("p2", "h1", None), "C": ("p3", None, None), "D": ("p4", "h2", None)},
    S1: {
        "A": ("p1", "h1", None),
        "B": ("p2", "h1", None),
        "C": ("p3", None, None),
        "D": ("p4", "h2", None),
        "E": ("p4", "h2", None),
        "G": ("p3", None, "C"),
    },
    T: {"A": ("p1", "h1", None), "D": ("p4", "h2", None), "E": ("p4", "h2", None), "G": ("p3", None, "C")},
}
# (subscriber, month) in the facts: B has left by T, C changed its number to G
PRESENT = {
    *[(s, m) for s in "ADEF" for m in (S2, S1, T)],
    ("B", S2),
    ("B", S1),
    ("C", S2),
    ("C", S1),
    ("G", S1),
    ("G", T),
}
CUSTOMER = {"G": "C"}
# the release's relative party edges: persons at 1 month only, households at 1 and 2 months
EDGES = {"person": ([-0.5], [0.5]), "household": ([-0.1, -10.0], [0.1, 10.0])}


def _write_month(spark, root: Path) -> tuple[dict, dict]:
    rng = np.random.default_rng(22)
    forecasts = {
        (s, sm): {m: rng.uniform(0.5, 1.0, 24) if m in FACT else rng.uniform(0, 50, 24) for m in MODELS}
        for sm, subs in SCORED.items()
        for s in subs
    }
    facts = {
        key: {
            "in_paid_base": 1,
            "in_active_base": 1,
            "sm_mobile": float(rng.uniform(0, 60)),
            "sm_fmc": 0.0,
            "sm_fttb": 0.0,
            "data_gb": float(rng.uniform(0, 40)),
            "voice_min": 100.0,
            "sac": float(rng.uniform(0, 20)),
        }
        for key in sorted(PRESENT)
    }
    facts[("A", T)]["in_paid_base"] = 0
    rows = [{"subscriber_id": s, "report_month": m, **v} for (s, m), v in facts.items()]
    frame = spark.createDataFrame(pd.DataFrame(rows)[["subscriber_id", "report_month", *FACT_COLUMNS]])
    frame.write.partitionBy("report_month").parquet(str(root / "panel" / "facts"))
    for sm, subs in SCORED.items():
        scores = pd.DataFrame(
            [
                {
                    "subscriber_id": s,
                    "release_version": "3",
                    "cltv": 1.0,
                    "holdout": False,
                    **{f"{m}_h": forecasts[(s, sm)][m].tolist() for m in MODELS},
                }
                for s in subs
            ]
        )
        spark.createDataFrame(scores).write.parquet(str(root / "scores" / f"score_month={sm}"))
    for month, table in PARTIES.items():
        rows = [(s, p, h, prev) for s, (p, h, prev) in table.items()]
        frame = pd.DataFrame(
            rows, columns=["subscriber_id", "person_id", "household_id", "previous_subscriber_id"]
        )
        write_parties(root / "parties", frame, month)
    return forecasts, facts


def _expected(forecasts, facts, formula, level: str, sm: dt.date) -> pd.DataFrame:
    """Per party of `level` scored at `sm`: members, and per model / value_cum the forecast and realized sums
    — plain Python over the dictionaries above."""
    h = (T.year - sm.year) * 12 + T.month - sm.month
    months = [dt.date(2024, 6 - j, 1) for j in range(h)]
    rows = []
    for s in SCORED[sm]:
        person, household, _ = PARTIES[sm].get(s, (s, None, None))
        party = person if level == "person" else household
        if party is None:
            continue
        customer = CUSTOMER.get(s, s)
        ids = [i for i in "ABCDEFG" if CUSTOMER.get(i, i) == customer]
        continued = any(PARTIES[sm].get(i, (0, 0, None))[2] == s for i in SCORED[sm])
        arrays = forecasts[(s, sm)]

        def realized(model: str, month: dt.date, ids=ids) -> float:
            return sum(facts[(i, month)][FACT.get(model, model)] for i in ids if (i, month) in facts)

        row = {"party": party, "members": 1}
        for m in MODELS:
            a = min(realized(m, T), 1.0) if m in FACT else realized(m, T)
            row[f"f_{m}"], row[f"a_{m}"] = arrays[m][h - 1], 0.0 if continued else a
        row["f_value_cum"] = sum(
            formula.monthly_value(lambda m, i=i, arrays=arrays: arrays[m][i]) for i in range(h)
        )
        value = sum(formula.monthly_value(lambda m, mm=mm: realized(m, mm)) for mm in months)
        row["a_value_cum"] = 0.0 if continued else value
        rows.append(row)
    return pd.DataFrame(rows).groupby("party").sum()


def test_the_party_backtest_gives_the_figures_summed_by_hand(spark, tmp_path, settings_factory):
    forecasts, facts = _write_month(spark, tmp_path)
    settings = settings_factory(
        panel=tmp_path / "panel", paths={"parties": str(tmp_path / "parties")},
        monitoring={"coverage_min_rows": 2, "backtest_max_horizon": 3},
    )  # fmt: skip
    level = settings.scoring.interval_level
    model = PartyModel(
        rho={}, lower={lv: {f"{level:g}": lo} for lv, (lo, _) in EDGES.items()},
        upper={lv: {f"{level:g}": hi} for lv, (_, hi) in EDGES.items()}, parties={},
    )  # fmt: skip
    asked: list[str] = []
    found = run_party_backtest(spark, settings, T, lambda v: (asked.append(v), (model, ""))[1])
    table, coverage = found.backtest, found.coverage
    assert set(asked) == {"3"}  # the release that scored the months
    formula = ValueFormula.from_catalog(settings.models.catalog().subset(MODELS), settings.costs)
    checked = 0
    for lv in ("person", "household"):
        for sm in SCORED:
            exp = _expected(forecasts, facts, formula, lv, sm)
            got = table[(table["level"] == lv) & (table["score_month"] == sm)]
            overall = got[got["size"] == "all"].set_index("model_id")
            for m in [*MODELS, "value_cum"]:
                assert (
                    overall.loc[m, "parties"] == len(exp)
                    and overall.loc[m, "members"] == exp["members"].sum()
                )
                assert overall.loc[m, "forecast_sum"] == pytest.approx(exp[f"f_{m}"].sum()), (lv, sm, m)
                assert overall.loc[m, "actual_sum"] == pytest.approx(exp[f"a_{m}"].sum()), (lv, sm, m)
                err = (exp[f"a_{m}"] - exp[f"f_{m}"]).abs().sum() / exp[f"a_{m}"].abs().sum()
                assert overall.loc[m, "wape"] == pytest.approx(err), (lv, sm, m)
                checked += 1
            # by size: the parties of 1, 2, … lines
            sizes = got[got["model_id"] == "value_cum"].set_index("size")
            for size, part in exp.groupby(exp["members"].astype(str)):
                assert sizes.loc[size, "parties"] == len(part)
                assert sizes.loc[size, "forecast_sum"] == pytest.approx(part["f_value_cum"].sum())
            # coverage of the party interval: forecast + |forecast| · edge
            h = (T.year - sm.year) * 12 + T.month - sm.month
            lo, hi = (EDGES[lv][0][h - 1], EDGES[lv][1][h - 1]) if h <= len(EDGES[lv][0]) else (None, None)
            row = coverage[(coverage["level"] == lv) & (coverage["horizon"] == h)].iloc[0]
            if lo is None:
                assert row["bounded"] == 0 and row["status"] == SKIPPED
                assert row["note"] == f"n/a (the release fitted no {lv} interval at {h} months)"
                continue
            f, a = exp["f_value_cum"], exp["a_value_cum"]
            inside = ((a >= f + f.abs() * lo) & (a <= f + f.abs() * hi)).sum()
            assert row["bounded"] == len(exp) and row["coverage"] == pytest.approx(inside / len(exp))
            assert row["interval_level"] == level and row["gap"] == pytest.approx(inside / len(exp) - level)
            assert row["status"] != SKIPPED or len(exp) < 2
    assert checked == 2 * 2 * (len(MODELS) + 1)
    # the review page's checks and tables from these two tables (no Spark)
    check = check_party_coverage(coverage)
    judged = coverage[coverage["status"] != SKIPPED]
    assert check.status == worst(*judged["status"]) and check.status != SKIPPED
    blocks = section_parties(settings, {}, {"party_backtest": table, "party_coverage": coverage}, None)
    titles = [getattr(b, "title", None) for b in blocks]
    assert titles == ["Backtest per person and household", "Cumulative value by party size at horizon 1",
                      "Party interval coverage"]  # fmt: skip
    shown = {(r[0].text, r[1].text): r for r in blocks[2].rows}
    household = coverage[(coverage["level"] == "household") & (coverage["horizon"] == 1)].iloc[0]
    assert shown[("household", "h1")][5].text == fmt_pct(household["coverage"], 1, signed=False)
    assert shown[("person", "h2")][9].text == "n/a (the release fitted no person interval at 2 months)"


# ------------------------------------------------------------------ end to end on the shared release
def households_up_to_six(ids: list[str]) -> pd.DataFrame:
    """Households of 1–6 consecutive ids (sizes cycling), every fifth without a household id; persons =
    household members grouped by two."""
    rows, start, k = [], 0, 0
    while start < len(ids):
        members = ids[start : start + k % 6 + 1]
        household = None if k % 5 == 4 else f"h{k}"
        rows += [(sid, f"p{k}_{j // 2}", household, None) for j, sid in enumerate(members)]
        start, k = start + len(members), k + 1
    return pd.DataFrame(
        rows, columns=["subscriber_id", "person_id", "household_id", "previous_subscriber_id"]
    )


def write_naive_detail(spark, panel: Path, scores: Path, month: dt.date, version: str) -> None:
    """A month's scores with 24-month detail arrays from a naive forecaster (last month × decay)."""
    from pyspark.sql import functions as F

    facts = spark.read.parquet(str(panel / "facts")).where(F.col("report_month") == F.lit(month))
    h = F.sequence(F.lit(1), F.lit(24))
    decay = lambda i: F.pow(F.lit(0.97), i)  # noqa: E731
    facts.select(
        "subscriber_id",
        F.lit(version).alias("release_version"),
        (F.col("sm_mobile") * 30).alias("cltv"),
        F.lit(False).alias("holdout"),
        F.transform(h, lambda i: F.col("in_paid_base") * 0.95 * decay(i)).alias("paid_h"),
        F.transform(h, lambda i: F.lit(0.97) * decay(i)).alias("active_h"),
        F.transform(h, lambda i: F.col("sm_mobile") * decay(i)).alias("sm_mobile_h"),
        F.transform(h, lambda i: F.lit(0.5) * decay(i)).alias("sac_h"),
    ).write.parquet(str(scores / f"score_month={month}"))


E2E = dt.date(2025, 4, 1)  # the month `env` scores: the panel's last, whose facts are there
QUIET = {  # the naive months are not what this test judges: no drift or survival verdict from them
    "psi_warn": 1e6,
    "psi_fail": 1e6,
    "prediction_psi_warn": 1e6,
    "prediction_psi_fail": 1e6,
    "unseen_warn": 1.0,
    "unseen_fail": 1.0,
    "survival_warn": {1: 0.99},
    "survival_fail": {1: 0.99},
    "report_shap_rows": 50,
    "backtest_max_horizon": 3,
}


@pytest.fixture(scope="module")
def party_month(spark, env, tmp_path_factory):
    """E2E scored once with parties and --detail by the shared release (trained without parties), naive
    detail scores of the three months before, parties for all four months; monitored and reported."""
    settings, panel, _, _ = env
    work = tmp_path_factory.mktemp("party_monitoring")
    for k in range(4):
        month = add_months(E2E, -k)
        ids = pd.read_parquet(panel / "features" / f"report_month={month}", columns=["subscriber_id"])
        write_parties(work / "parties", households_up_to_six(sorted(ids["subscriber_id"])), month)
    paths = {
        "scores": str(work / "scores"),
        "monitoring": str(work / "monitoring"),
        "parties": str(work / "parties"),
    }
    cfg = settings.model_copy(
        update={
            "paths": settings.paths.model_copy(update=paths),
            "monitoring": settings.monitoring.model_copy(update=QUIET),
        }
    )
    summary = score_month(spark, cfg, E2E, release="challenger", detail=True)
    for k in (1, 2, 3):
        write_naive_detail(spark, panel, work / "scores", add_months(E2E, -k), str(summary.release_version))
    # the shared release has no drift reference: a sample of its training months' features
    sample = pd.read_parquet(panel / "features" / f"report_month={add_months(E2E, -4)}").head(500)
    buf = io.BytesIO()
    sample.drop(columns=["subscriber_id"], errors="ignore").to_parquet(buf)
    loaded = load_release(cfg, "challenger")
    release = replace(loaded, files={**loaded.files, "reference.parquet": buf.getvalue()})
    result = monitor_month(spark, cfg, E2E, release=release)
    page = Path(build_report(spark, cfg, E2E, release=release)).read_text()
    return cfg, result, page


def test_monitor_backtests_persons_and_households_and_leaves_coverage_na_without_a_party_model(
    spark, party_month
):
    cfg, result, _ = party_month
    table, coverage = result.tables["party_backtest"], result.tables["party_coverage"]
    assert set(table["level"]) == {"person", "household"} and sorted(set(table["horizon"])) == [1, 2, 3]
    assert {"1", "2", "3", "4", "5+", "all"} <= set(table["size"])
    scored = pd.read_parquet(
        Path(cfg.paths.scores) / f"score_month={add_months(E2E, -1)}", columns=["subscriber_id"]
    )
    parties = pd.read_parquet(Path(cfg.paths.parties) / f"report_month={add_months(E2E, -1)}")
    members = scored.merge(parties, on="subscriber_id", how="left")
    h1 = table[(table["horizon"] == 1) & (table["size"] == "all") & (table["model_id"] == "value_cum")]
    person, household = (h1[h1["level"] == lv].iloc[0] for lv in ("person", "household"))
    assert person["members"] == len(members) and person["parties"] == members["person_id"].nunique()
    assert household["members"] == members["household_id"].notna().sum()
    assert household["parties"] == members["household_id"].nunique()
    subscribers = result.tables["backtest"]
    mine = subscribers[
        (subscribers["model_id"] == "value_cum") & (subscribers["horizon"] == 1)
        & (subscribers["population"] == "all") & (subscribers["dimension"] == "all")
    ].iloc[0]  # fmt: skip
    assert person["forecast_sum"] == pytest.approx(mine["forecast_sum"])
    assert person["actual_sum"] == pytest.approx(mine["actual_sum"])  # no number change here
    # the release was trained without parties: no party interval, no verdict from it
    assert set(coverage["status"]) == {SKIPPED} and set(coverage["note"]) == {NO_PARTY_MODEL}
    assert not [m for m in result.failures + result.warnings if "household" in m or "person" in m]
    stored = read_monitoring(spark, cfg, E2E)
    assert len(stored["party_backtest"]) == len(table) and len(stored["party_coverage"]) == len(coverage)
    assert stored["summary"]["parties"]["not_judged"] == [NO_PARTY_MODEL]
    metrics = mlflow.MlflowClient(cfg.mlflow.tracking_uri).get_run(result.run_id).data.metrics
    assert {"party.person.h01.value_cum.bias", "party.household.h03.sm_mobile.wape",
            "party.household.size5.h01.value_cum.bias"} <= set(metrics)  # fmt: skip
    assert not [k for k in metrics if k.startswith("party.") and k.endswith(".coverage")]
    pushed = monitor_figures(result.tables, 0, 0, [1, 3])
    registry = build_registry("monitor", E2E, "1", {}, pushed, "ok")  # every label set as declared
    series = {"month": "2025-04", "release": "1", "level": "person", "model": "sm_mobile", "horizon": "3"}
    assert registry.get_sample_value("cltv_party_backtest_bias", series) is not None
    figures = {(f.name, f.labels) for f in pushed}
    assert (
        "party_backtest_bias",
        (("level", "household"), ("model", "value_cum"), ("horizon", "1")),
    ) in figures


def test_the_review_page_shows_persons_and_households(party_month):
    cfg, _, page = party_month
    section = page.split("<h2>Persons and households</h2>", 1)[1].split("<h2>", 1)[0]
    root = party_scores_root(cfg.paths)
    persons = pd.read_parquet(party_partition(root, "person", E2E))
    households = pd.read_parquet(party_partition(root, "household", E2E))
    currency = cfg.costs.currency
    assert f'<div class="label">Persons</div><div class="value">{fmt_number(len(persons))}</div>' in section
    assert (
        f'<div class="label">Households</div><div class="value">{fmt_number(len(households))}</div>'
        in section
    )
    assert fmt_money(households["cltv"].sum(), currency) in section
    assert fmt_money(households["cltv"].mean(), currency, 2) in section
    sizes = households["members"].clip(upper=5)
    by_size = section.split("<h3>CLTV by household size</h3>", 1)[1].split("</table>", 1)[0]
    found = re.findall(r"<tr><td>(\d)\+? lines?</td><td>([\d,]+)</td>", by_size)
    assert [(int(s), n) for s, n in found] == [
        (s, fmt_number(n)) for s, n in sizes.value_counts().sort_index().items()
    ]
    assert "Backtest per person and household" in section and "Party interval coverage" in section
    assert NO_PARTY_MODEL in section and not re.search(r"\bnan\b", section)
    glance = page.split("<h2>The month at a glance</h2>", 1)[1].split("<h2>", 1)[0]
    row = re.search(
        r'<td>Party interval coverage</td><td><span class="badge"[^>]*>(\w+)</span></td><td>([^<]*)', glance
    )
    assert row and row.groups() == (SKIPPED, NO_PARTY_MODEL)
