"""cltv-spark: monthly 5-year customer lifetime value of telecom subscribers on Spark."""

from importlib import resources


def _version() -> str:
    """spark_app/VERSION, read as package data: works from the source tree, a wheel and a --py-files zip."""
    return resources.files(__name__).joinpath("VERSION").read_text().strip()


__version__ = _version()
