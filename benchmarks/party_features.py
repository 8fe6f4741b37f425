"""Do the party features earn their place in the defaults? (issue 22 step 5)

One panel with persons and households (`cltv generate`'s default), one training set built with the party
features as columns, two releases trained on it: the default models, and the same with the four party
features (`party_person_lines`, `party_household_lines`, `party_household_home_internet`,
`party_household_tenure`) in every model's feature_cols. Both are judged on the same OOT rows: per model
the Gini and its paired-bootstrap standard error of the difference, and the aggregate bias. The rule
(docs/training.md): kept in the defaults only where Gini rises by more than 2 SE without worsening |bias|.

    .venv/bin/python benchmarks/party_features.py --work work/bench/party-features --subscribers 200000
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from spark_app.catalog import PARTY_FEATURES
from spark_app.config import load_settings
from spark_app.dataset import build_dataset, read_dataset
from spark_app.evaluation import normalized_gini
from spark_app.generate import PanelSpec, generate_panel
from spark_app.layout import workdir_layers
from spark_app.models import Learner
from spark_app.registry import load_release
from spark_app.session import get_spark
from spark_app.training import train_release

ROOT = Path(__file__).resolve().parent.parent
START, MONTHS, TARGET_END = dt.date(2023, 1, 1), 40, dt.date(2026, 1, 1)
BOOTSTRAP = 200


def settings_for(work: Path, with_features: bool):
    base = load_settings(None, environ={})
    overrides: dict = {
        **workdir_layers(work, work / "panel", parties=True),
        "spark": {"master": "local[2]", "shuffle_partitions": 8},
    }
    if with_features:
        profiles = base.models.profiles
        with_party = {m: {"feature_cols": [*profiles[m].feature_cols, *PARTY_FEATURES]} for m in profiles}
        overrides["models"] = {"profiles": {m: with_party[m] for m in base.models.enabled}}
    return load_settings(ROOT / "conf" / "local.yaml", overrides=overrides, environ={})


def paired_gini(
    y: np.ndarray, a: np.ndarray, b: np.ndarray, rng: np.random.Generator
) -> tuple[float, float, float]:
    """Gini of a and b on the same rows, and the bootstrap SE of their difference (rows resampled)."""
    diffs = []
    for _ in range(BOOTSTRAP):
        i = rng.integers(0, len(y), len(y))
        diffs.append(normalized_gini(y[i], b[i]) - normalized_gini(y[i], a[i]))
    return normalized_gini(y, a), normalized_gini(y, b), float(np.std(diffs, ddof=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "work" / "bench" / "party-features")
    parser.add_argument("--subscribers", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("py4j", "mlflow", "alembic", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    work = args.work.resolve()
    plain, featured = settings_for(work, False), settings_for(work, True)
    spark = get_spark(featured.spark)
    if not (work / "panel" / "parties").exists():
        generate_panel(spark, str(work / "panel"), PanelSpec(args.subscribers, MONTHS, START, seed=args.seed))
    dataset = build_dataset(spark, featured, TARGET_END)
    versions = {}
    for name, settings in (("default", plain), ("party features", featured)):
        versions[name] = train_release(spark, settings, dataset.dataset_id).version
    _, _, splits = read_dataset(spark, featured, dataset.dataset_id)
    oot = splits["oot"].toPandas()
    learners = {
        name: Learner.from_bundle_bytes(load_release(featured, str(v)).files) for name, v in versions.items()
    }
    predictions = {name: learner.predict(oot) for name, learner in learners.items()}
    rng = np.random.default_rng(1)
    rows = []
    for entry in learners["default"].entries:
        m = entry.model_id
        y = oot[entry.target].to_numpy(dtype=np.float64)
        a, b = predictions["default"][m], predictions["party features"][m]
        gini_a, gini_b, se = paired_gini(y, a, b, rng)
        bias_a, bias_b = a.sum() / y.sum() - 1, b.sum() / y.sum() - 1
        rows.append({
            "model": m, "gini default": gini_a, "gini party": gini_b, "diff": gini_b - gini_a, "se": se,
            "diff / se": (gini_b - gini_a) / se if se else np.nan, "bias default": bias_a,
            "bias party": bias_b, "keep": (gini_b - gini_a) > 2 * se and abs(bias_b) <= abs(bias_a) + 0.005,
        })  # fmt: skip
    table = pd.DataFrame(rows)
    print(f"OOT rows {len(oot):,} ({args.subscribers:,} subscribers, dataset {dataset.dataset_id})")
    print(table.to_string(index=False, float_format=lambda x: f"{x:.4f}"))


if __name__ == "__main__":
    main()
