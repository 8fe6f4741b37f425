"""The scoring job with `paths.parties`: person and household scores beside the subscriber scores.

One month of the session release (conftest `env`) is scored once with a parties table built here from the
month's subscriber ids; the contract failure and the default (no parties) reuse what is already written.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from faults_env import MONTH, fingerprint

from spark_app.contract import InputContractError
from spark_app.errors import EXIT_USER_ERROR
from spark_app.layout import scores_dir
from spark_app.parties import (
    HOUSEHOLD,
    MEMBERS,
    PARTY,
    PERSON,
    party_partition,
    party_scores_root,
    read_month_parties,
)
from spark_app.scoring import SUMMARY_TOTAL, score_month, summary_line

PARTIES_SCHEMA = pa.schema(
    [
        ("subscriber_id", pa.string()),
        ("person_id", pa.string()),
        ("household_id", pa.string()),
        ("previous_subscriber_id", pa.string()),
    ]
)


def write_parties(root: Path, rows: pd.DataFrame, month: dt.date = MONTH) -> Path:
    """`rows` as the parties table's partition of `month` (Parquet, Hive-style by report_month)."""
    part = root / f"report_month={month:%Y-%m-%d}"
    part.mkdir(parents=True)
    table = pa.Table.from_pandas(rows[PARTIES_SCHEMA.names], schema=PARTIES_SCHEMA, preserve_index=False)
    pq.write_table(table, part / "part-0.parquet")
    return root


def households_of(ids: list[str]) -> pd.DataFrame:
    """Households of 1–4 consecutive ids (sizes cycling 1, 2, 3, 4); every fifth household has no
    household id; persons = household members grouped by two."""
    rows, start, k = [], 0, 0
    while start < len(ids):
        size = k % 4 + 1
        members = ids[start : start + size]
        household = None if k % 5 == 4 else f"h{k}"
        for j, sid in enumerate(members):
            rows.append((sid, f"p{k}_{j // 2}", household, None))
        start, k = start + size, k + 1
    return pd.DataFrame(rows, columns=PARTIES_SCHEMA.names)


def with_paths(settings, **paths):
    return settings.model_copy(update={"paths": settings.paths.model_copy(update=paths)})


@pytest.fixture(scope="module")
def party_scored(spark, env, tmp_path_factory):
    """MONTH scored with the challenger into fresh score paths, with a parties table of that month."""
    settings, panel, _, _ = env
    work = tmp_path_factory.mktemp("party_scoring")
    features = pd.read_parquet(
        panel / "features" / f"report_month={MONTH:%Y-%m-%d}", columns=["subscriber_id"]
    )
    parties = households_of(sorted(features["subscriber_id"]))
    table = write_parties(work / "parties", parties)
    cfg = with_paths(settings, scores=str(work / "scores"), parties=str(table))
    summary = score_month(spark, cfg, MONTH, release="challenger")
    return cfg, parties, summary


def read_level(cfg, level: str) -> pd.DataFrame:
    return pd.read_parquet(party_partition(party_scores_root(cfg.paths), level, MONTH))


def test_party_scores_sum_the_members_and_survive_between_joint_and_independent_exits(party_scored):
    cfg, parties, summary = party_scored
    scores = pd.read_parquet(scores_dir(cfg.paths, MONTH)).merge(parties, on="subscriber_id")
    assert len(scores) == summary.rows
    persons, households = read_level(cfg, "person"), read_level(cfg, "household")
    for level in ("person", "household"):
        assert Path(party_partition(party_scores_root(cfg.paths), level, MONTH), "_SUCCESS").exists()
    assert summary.party_rows == {"person": len(persons), "household": len(households)}
    assert "party scores:" in summary_line(summary, "1.0s total (x 1.0s)")

    in_household = scores[scores[HOUSEHOLD].notna()]
    assert persons[MEMBERS].sum() == len(scores) and len(persons) == scores[PERSON].nunique()
    assert (
        households[MEMBERS].sum() == len(in_household)
        and len(households) == in_household[HOUSEHOLD].nunique()
    )
    value_cols = [
        "cltv",
        "cltv_24m",
        *[c for c in scores.columns if c.endswith("_60m") and not c.startswith("p_")],
    ]
    assert {"sm_mobile_60m", "overheads_60m"} <= set(value_cols) <= set(persons.columns)
    for col in value_cols:
        np.testing.assert_allclose(persons[col].sum(), scores[col].sum(), rtol=1e-9, err_msg=col)
        np.testing.assert_allclose(households[col].sum(), in_household[col].sum(), rtol=1e-9, err_msg=col)
    assert (persons["release_version"] == summary.release_version).all()
    assert (persons["score_month"] == MONTH).all()

    # P(≥ 1 member active) lies between the most loyal member (joint exits) and independence
    for key, got in ((PERSON, persons), (HOUSEHOLD, households)):
        for col in ("p_active_12m", "p_active_24m", "p_active_60m", "p_paid_60m"):
            grouped = scores.dropna(subset=[key]).groupby(key)[col]
            bounds = pd.DataFrame(
                {"lo": grouped.max(), "hi": 1 - grouped.apply(lambda p: np.prod(1 - p))}
            ).join(got.set_index(PARTY)[col])
            assert len(bounds) == len(got)
            assert (bounds[col] >= bounds["lo"] - 1e-9).all(), (key, col)
            assert (bounds[col] <= bounds["hi"] + 1e-9).all(), (key, col)
    several = households[households[MEMBERS] > 1].set_index(PARTY)
    lone_max = scores.groupby(HOUSEHOLD)["p_active_24m"].max()
    assert (several["p_active_24m"] > lone_max.loc[several.index] + 1e-6).any()  # ρ < 1: more than max p


def test_a_subscriber_in_two_persons_fails_before_anything_is_written(spark, party_scored, tmp_path):
    cfg, parties, _ = party_scored
    month_scores = Path(scores_dir(cfg.paths, MONTH))
    root = Path(party_scores_root(cfg.paths))
    before = fingerprint(month_scores), fingerprint(root)
    twice = pd.concat([parties, parties.iloc[:1].assign(person_id="someone_else")], ignore_index=True)
    bad = with_paths(cfg, parties=str(write_parties(tmp_path / "parties", twice)))
    with pytest.raises(InputContractError, match=r"parties: a subscriber in two persons in one month") as err:
        score_month(spark, bad, MONTH, release="challenger")
    assert err.value.exit_code == EXIT_USER_ERROR == 2
    assert parties["subscriber_id"].iloc[0] in str(err.value) and "2025-04" in str(err.value)
    assert (fingerprint(month_scores), fingerprint(root)) == before
    assert [p.name for p in month_scores.parent.iterdir() if p.name.startswith("_")] == []


def test_a_month_before_the_table_falls_back_per_subscriber(spark, party_scored, caplog):
    cfg, _, _ = party_scored
    with caplog.at_level(logging.WARNING, logger="spark_app.parties"):
        assert read_month_parties(spark, cfg.paths.parties, dt.date(2025, 3, 1)) is None
    assert "before the table's first month 2025-04" in caplog.text


def test_without_parties_nothing_is_written_beside_the_scores(env):
    settings = env[0]
    assert settings.paths.parties is None
    assert Path(scores_dir(settings.paths, MONTH), "_SUCCESS").exists()  # env scored the month by default
    assert not Path(party_scores_root(settings.paths)).exists()


def test_the_summary_line_without_parties_is_unchanged_and_keeps_its_total(party_scored):
    from dataclasses import replace

    _, _, summary = party_scored
    line = summary_line(replace(summary, party_rows={}), "12.3s total (score 12.3s)")
    assert "part" not in line
    assert SUMMARY_TOTAL.search(line).group("seconds") == "12.3"
    with_parties = summary_line(summary, "12.3s total (score 12.3s)")
    assert SUMMARY_TOTAL.search(with_parties).group("seconds") == "12.3"
