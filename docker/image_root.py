"""Lay out what docker/Dockerfile puts under /opt/cltv, in a local directory, by the Dockerfile's own steps.

    python docker/image_root.py work/image      # → work/image/{spark_app.zip, jobs/, conf/}

The wheel is built from the source tree and installed into a scratch target, and that installed package is
zipped with `python -m zipfile -c` — the three steps of the Dockerfile — so the zip is what executors get
from `--py-files /opt/cltv/spark_app.zip` in the image. `cltv-argo run-local --image-root DIR` runs the
manifests' spark-submit commands against it (docs/cluster.md: a cluster on one machine); the cluster test
does the same.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE_FILES = ("setup.py", "pyproject.toml", "constraints.txt")  # the Dockerfile's build-stage COPYs
SOURCE_DIRS = ("spark_app", "cltv_argo", "conf")


def build_image_root(out: Path, python: str = sys.executable) -> Path:
    """`out`/spark_app.zip (wheel → install → zip), `out`/jobs and `out`/conf, as in the image."""
    out = Path(out).resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="cltv-image-") as tmp:
        src, dist, site = Path(tmp) / "src", Path(tmp) / "dist", Path(tmp) / "site"
        # COPY setup.py pyproject.toml constraints.txt spark_app cltv_argo conf /src (only these: a stale
        # build/ or egg-info in the working tree must not reach the wheel)
        src.mkdir()
        for name in SOURCE_FILES:
            shutil.copy2(ROOT / name, src / name)
        for name in SOURCE_DIRS:
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        pip = [python, "-m", "pip", "--disable-pip-version-check", "-q"]
        # RUN pip wheel --no-deps --wheel-dir /dist /src
        subprocess.run([*pip, "wheel", "--no-deps", "--wheel-dir", str(dist), str(src)], check=True)
        # RUN pip install /dist/*.whl (dependencies are the image's; only the package matters here)
        wheel = next(dist.glob("cltv_spark-*.whl"))
        subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)
        # RUN python -m zipfile -c /opt/cltv/spark_app.zip .../site-packages/spark_app
        subprocess.run(
            [python, "-m", "zipfile", "-c", str(out / "spark_app.zip"), str(site / "spark_app")], check=True
        )
    # COPY conf /opt/cltv/conf ; COPY jobs /opt/cltv/jobs
    shutil.copytree(ROOT / "conf", out / "conf")
    shutil.copytree(ROOT / "jobs", out / "jobs")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path, help="directory standing in for the image's /opt/cltv")
    args = parser.parse_args(argv)
    print(build_image_root(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
