"""Who a channel may reach, and what a subscriber's churn puts at risk — as Spark columns, never code strings.

An audience rule is data (`column op value`, conf: campaigns.<name>.channels[i].audience) turned into a
Spark Column here; nothing from config is evaluated as code. The columns a rule may name are the month's
score columns, its feature columns, and `value_at_risk`.

Value at risk (VaR) of a subscriber: the expected value of the next 24 months that churn takes away
(scoring writes it, spark_app.cltv.value_at_risk; for scores from before, it is computed here from their
detail arrays) —
what the subscriber would bring if it stayed in its bases all 24 months, minus what it is expected to bring
(docs/campaigns.md). From the scores' detail arrays (monthly forecasts, `--detail`): each amount model's
forecast a_h is an unconditional expectation = P(in its carrier base at h) × the amount of a survivor, so
the survivor's amount is a_h / S_h and the part churn takes away is a_h (1/S_h − 1); overheads are paid
by survivors too, so retention costs overhead × (1 − P_base,h) more:

    VaR = Σ_h Σ_terms sign × unit cost × a_h × (1 / max(S_h, floor) − 1) − overhead × Σ_h (1 − P_h)

undiscounted, over the forecast horizons (24), with S_h floored at VAR_SURVIVAL_FLOOR so a subscriber
already almost gone does not divide by ~0 (its a_h is ~0 too).
"""

from __future__ import annotations

from collections.abc import Iterable

from pyspark.sql import Column
from pyspark.sql import functions as F

from spark_app.cltv import VAR_SURVIVAL_FLOOR, ValueFormula
from spark_app.config import VALUE_AT_RISK, AudienceRule, CampaignConfig
from spark_app.errors import UserError


class CampaignConfigError(UserError):
    """A campaign names a column, a campaign or a setting that does not fit the data; the key is named."""


def rule_column(rule: AudienceRule) -> Column:
    """One rule as a boolean Spark column (a null compares as false: a subscriber without the value is not
    in the audience, except for is_null)."""
    col = F.col(rule.column)
    value = rule.value
    op = rule.op
    if op == "is_null":
        return col.isNull()
    if op == "not_null":
        return col.isNotNull()
    if op == "in":
        return F.coalesce(col.isin(*value), F.lit(False))
    if op == "not_in":
        return F.coalesce(~col.isin(*value), F.lit(False))
    compare = {
        "==": col == F.lit(value),
        "!=": col != F.lit(value),
        "<": col < F.lit(value),
        "<=": col <= F.lit(value),
        ">": col > F.lit(value),
        ">=": col >= F.lit(value),
    }[op]
    return F.coalesce(compare, F.lit(False))


def audience_column(rules: Iterable[AudienceRule]) -> Column:
    """All rules of a channel (no rule: everyone eligible)."""
    out = F.lit(True)
    for rule in rules:
        out = out & rule_column(rule)
    return out


def check_columns(name: str, cfg: CampaignConfig, available: set[str], numeric: set[str]) -> None:
    """Every column a campaign names exists in the month's scores or features (and a ranking key is
    numeric): one error naming every key that does not fit."""
    problems = []
    where = f"campaigns.{name}"
    for i, channel in enumerate(cfg.channels):
        for j, rule in enumerate(channel.audience):
            if rule.column not in available:
                problems.append(
                    f"{where}.channels[{i}].audience[{j}].column: {rule.column!r} is neither a score nor a "
                    "feature column of the month"
                )
        if channel.ranking_key not in numeric:
            kind = "not numeric" if channel.ranking_key in available else "not a score or feature column"
            problems.append(f"{where}.channels[{i}].ranking_key: {channel.ranking_key!r} is {kind}")
    if cfg.strata_column is not None and cfg.strata_column not in available:
        problems.append(f"{where}.strata_column: {cfg.strata_column!r} is not a column of the month")
    if cfg.consent_column is not None and cfg.consent_column not in available and not cfg.consent_waived:
        problems.append(
            f"{where}.consent_column: {cfg.consent_column!r} is not a column of the month's features "
            "(contacting without consent needs consent_waived: true)"
        )
    if problems:
        raise CampaignConfigError("campaign does not fit the month's columns:\n  " + "\n  ".join(problems))


def detail_column(model_id: str) -> str:
    return f"{model_id}_h"


def value_at_risk(formula: ValueFormula, present: set[str]) -> Column:
    """VaR from the scores' detail arrays (module docstring); models without an array count as zero."""

    def lost(amount: str, carrier: str) -> Column:
        def term(a: Column, s: Column) -> Column:
            return a * (F.lit(1.0) / F.greatest(s, F.lit(VAR_SURVIVAL_FLOOR)) - F.lit(1.0))

        per_month = F.zip_with(F.col(detail_column(amount)), F.col(detail_column(carrier)), term)
        return F.aggregate(per_month, F.lit(0.0), lambda acc, x: acc + x)

    total: Column = F.lit(0.0)
    for t in formula.terms:
        if detail_column(t.model_id) in present and detail_column(t.carrier) in present:
            total = total + lost(t.model_id, t.carrier) * F.lit(t.sign * t.unit_cost)
    base = formula.overhead_base
    if base and formula.overhead_per_month and detail_column(base) in present:
        gone = F.aggregate(
            F.transform(F.col(detail_column(base)), lambda p: F.lit(1.0) - p), F.lit(0.0), lambda a, x: a + x
        )
        total = total - gone * F.lit(formula.overhead_per_month)
    return total.alias(VALUE_AT_RISK)


def has_detail(columns: Iterable[str], formula: ValueFormula) -> bool:
    names = set(columns)
    return all(detail_column(m) in names for m in formula.survival)
