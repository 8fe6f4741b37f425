"""A second data regime through config alone: the whole demo pipeline on a prepaid panel whose columns,
units and enabled models differ from the default panel, with conf/examples/prepaid.yaml and no code."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from spark_app.generate import CONVERGENT, PREPAID
from spark_app.pipeline import run_demo

pytestmark = pytest.mark.slow


def test_the_prepaid_demo_runs_end_to_end_on_its_example_config(spark, tmp_path):
    summary = run_demo(subscribers=3000, months=40, workdir=tmp_path / "demo", conf=None, profile="prepaid")
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
