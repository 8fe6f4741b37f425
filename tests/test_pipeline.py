"""A second data regime through config alone: the whole demo pipeline on a prepaid panel whose columns,
units and enabled models differ from the default panel, with conf/examples/prepaid.yaml and no code."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from spark_app.config import load_settings
from spark_app.generate import CONVERGENT, PREPAID
from spark_app.monitoring import read_monitoring
from spark_app.parties import party_partition, party_scores_root
from spark_app.pipeline import run_demo
from spark_app.registry import load_release

pytestmark = pytest.mark.slow
COVERAGE_BAND = 0.15  # coverage of a demo release's intervals around their level (see below)


def test_the_prepaid_demo_runs_end_to_end_on_its_example_config(spark, tmp_path, monkeypatch):
    """Through config alone. Not about the gate: 3,000 prepaid SIMs leave 63 OOT rows, where data_gb's
    bias (±30 % noise) can land either side of 5 % + noise; the 20k demo passes it (README)."""
    monkeypatch.setenv("CLTV_PROMOTION__MAX_ABS_BIAS", "10")
    # without parties: the other regime is its subject (the prepaid parties: tests/test_generate.py; the
    # pipeline with parties: the demo below)
    summary = run_demo(
        subscribers=3000, months=40, workdir=tmp_path / "demo", conf=None, profile="prepaid", parties=False
    )
    assert summary["promoted"] and len(summary["scores"]) >= 1
    demo_conf = (tmp_path / "demo" / "conf" / "demo.yaml").read_text()
    assert "margin_prepaid" in demo_conf and "sim_age_months" in demo_conf  # the example, paths rewritten

    manifest = json.loads(next((tmp_path / "demo" / "datasets").glob("ds-*/manifest.json")).read_text())
    assert set(manifest["target_columns"]) == {"paid", "active", "sm_mobile", "data_gb", "voice_min"}
    convergent_only = (set(CONVERGENT.numeric) | set(CONVERGENT.categorical)) - {"subscriber_id"}
    assert not convergent_only & set(manifest["feature_columns"])
    assert set(PREPAID.categorical) <= set(manifest["categorical_columns"])

    last = summary["scores"][-1]
    scores = pd.read_parquet(last.path.removeprefix("file:"))
    assert len(scores) == last.rows > 500
    assert {"sm_mobile_60m", "data_cost_60m", "voice_cost_60m", "overheads_60m", "p_paid_60m"} <= set(scores)
    assert not {"sm_fmc_60m", "sac_60m"} & set(scores)  # disabled in the example: absent, not zero columns
    parts = scores["sm_mobile_60m"] - scores[["data_cost_60m", "voice_cost_60m", "overheads_60m"]].sum(axis=1)
    pd.testing.assert_series_equal(scores["cltv"], parts, check_names=False, rtol=1e-9)
    assert summary["report"].endswith(".html")


def test_the_demo_intervals_cover_realized_value_at_their_level(spark, tmp_path, monkeypatch):
    """The whole path of the intervals: fitted at training on held-out subscribers, applied by scoring,
    checked by monitoring against what the panel's subscribers then did (h = 1..4 in the demo) — and the
    same for persons and households (the demo runs with the panel's parties). Not about the gate: 8,000
    subscribers leave ~250 OOT rows, where sm_fmc's bias (± 23 % noise) can land either side of 5 % +
    noise; the 20k demo passes it (README)."""
    monkeypatch.setenv("CLTV_PROMOTION__MAX_ABS_BIAS", "10")
    summary = run_demo(subscribers=8000, months=40, workdir=tmp_path / "demo", conf=None)
    settings = load_settings(tmp_path / "demo" / "conf" / "demo.yaml")
    last = summary["scores"][-1]
    scores = pd.read_parquet(last.path.removeprefix("file:"))
    bounds = scores[["cltv_lower", "cltv_upper", "value_12m_lower", "value_12m_upper", "value_24m_lower",
                     "value_24m_upper"]]  # fmt: skip
    assert bounds.notna().all().all() and (scores["interval_level"] == 0.8).all()
    for point in ("cltv", "value_12m", "value_24m"):
        assert (scores[f"{point}_lower"] <= scores[f"{point}_upper"]).all()
    coverage = read_monitoring(spark, settings, last.month)["coverage"]
    overall = coverage[coverage["population"] == "all"].set_index("horizon")
    assert sorted(overall.index) == [1, 2, 3, 4]  # 5 scored months: the campaign needs its history
    assert (overall["bounded"] > 2500).all()  # the base of the last months (churn since month 1)
    # within 15 points (a zero-width or a never-missing interval is 80 points off): a release trained on
    # 8,000 subscribers is itself ±8–15 % off in value (the OOT value bias over three dataset salts of one
    # 20k panel ran −6..+10 %), and a biased forecast's interval covers less; the calibrated figures are the
    # 1M benchmark's (README: 79–80 %), and monitoring judges every month against its thresholds
    assert ((overall["coverage"] - 0.8).abs() <= COVERAGE_BAND).all(), overall[["coverage", "bounded"]]
    page = Path(summary["report"]).read_text()
    assert "Intervals: coverage and width" in page and "Interval width deciles" in page

    # persons and households: the release's party model, party scores with their own intervals, monitored
    assert settings.paths.parties and last.party_rows["household"] > 1000
    release = load_release(settings, "champion").manifest["parties"]
    assert 0.0 <= release["rho"]["household"]["p_active_12m"] <= 1.0
    households = pd.read_parquet(
        party_partition(party_scores_root(settings.paths), "household", last.month)
    )
    assert (households["members"] >= 1).all() and households["cltv_lower"].notna().all()
    assert (households["cltv_lower"] <= households["cltv_upper"]).all()
    assert households["cltv"].sum() <= scores["cltv"].sum()  # households are a subset of the subscribers
    tables = read_monitoring(spark, settings, last.month)
    party = tables["party_coverage"]
    assert set(party["level"]) == {"person", "household"} and party["coverage"].notna().any()
    judged = party[party["status"].isin(["ok", "warn", "fail"])]
    assert len(judged) and ((judged["coverage"] - 0.8).abs() <= COVERAGE_BAND).all(), party
    assert "Persons and households" in page
