"""What the fault tests share (tests/test_faults.py, tests/test_release_safety.py): the month they score,
byte fingerprints of a month's output, the scoring command, damage helpers. The `env`, `month_dir` and
`panel_copy` fixtures live in conftest.py, so both files share one registered release and its scores."""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
from pathlib import Path

import pandas as pd

from spark_app.cli import main

MONTH = dt.date(2025, 4, 1)
M = "2025-04"


def fingerprint(directory: Path) -> dict[str, str]:
    """Every file under `directory` (a month's scores) by relative path → sha256: byte-identical or not."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def score(conf: Path, *extra: str, month: str = M) -> int:
    return main(["score", "--conf", str(conf), "--month", month, "--release", "challenger", *extra])


def first_file(month_path: Path) -> Path:
    return sorted(p for p in month_path.iterdir() if p.suffix == ".parquet")[0]


def rewrite_month(month_path: Path, frame: pd.DataFrame) -> None:
    shutil.rmtree(month_path)
    month_path.mkdir()
    frame.to_parquet(month_path / "part-00000-rewritten.parquet", index=False)
