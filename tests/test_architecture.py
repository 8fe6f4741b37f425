"""The house rules that keep "where is X" one answer: layers, no import cycle, thin jobs, the docs' map of
the modules matching the tree, every benchmark importable (no Spark is started here)."""

from __future__ import annotations

import ast
import graphlib
import importlib
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "spark_app"
# docs/architecture.md draws these layers; a module imports only from its own layer or below
LAYERS = {
    "ground": {"config", "catalog", "errors", "months", "redact", "progress", "__init__"},
    "edges": {"lease", "files", "contract", "layout", "storage", "session", "tracking", "metrics"},
    "model maths": {
        "models", "calibration", "seasonality", "evaluation", "cltv", "intervals", "horizons", "batch",
    },
    "jobs": {
        "generate", "dataset", "training", "registry", "scoring", "monthly", "inputs_ready", "monitoring",
        "drift", "backtest", "checks", "report", "figures", "campaigns", "status", "parties",
    },
    "commands": {"cli", "pipeline", "__main__"},
}  # fmt: skip
RANK = {m: i for i, (_, mods) in enumerate(LAYERS.items()) for m in mods}


def imports_of(path: Path, package: str) -> set[str]:
    """Modules of `package` that `path` imports, at any level (inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == package:
            parts = node.module.split(".")
            found |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith(f"{package}.")}
    return found


SUBPACKAGES = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}  # a concern of several modules


def graph() -> dict[str, set[str]]:
    """Module → the project modules it imports; a subpackage (campaigns) is one node: its modules together."""
    modules = {p.stem for p in PACKAGE.glob("*.py")} | SUBPACKAGES
    out = {p.stem: imports_of(p, "spark_app") & modules for p in PACKAGE.glob("*.py")}
    for sub in SUBPACKAGES:
        found: set[str] = set()
        for path in (PACKAGE / sub).glob("*.py"):
            found |= imports_of(path, "spark_app")
        out[sub] = found & modules - {sub}
    return out


def test_no_import_cycle_in_the_job_package():
    graphlib.TopologicalSorter(graph()).prepare()  # raises CycleError naming the cycle


def test_every_module_has_a_layer_and_imports_only_downwards():
    modules = graph()
    assert set(modules) == set(RANK), f"modules without a layer: {set(modules) ^ set(RANK)}"
    upward = [
        f"{m} ({layer_of(m)}) imports {d} ({layer_of(d)})"
        for m, deps in modules.items()
        for d in deps
        if RANK[d] > RANK[m]
    ]
    assert upward == []


def layer_of(module: str) -> str:
    return list(LAYERS)[RANK[module]]


def test_only_the_commands_import_the_cli_and_the_jobs_never_import_the_argo_tooling():
    for path in [*PACKAGE.glob("*.py"), *PACKAGE.glob("*/*.py")]:
        if path.stem not in LAYERS["commands"]:
            assert "cli" not in imports_of(path, "spark_app"), path.name
        assert not imports_of(path, "cltv_argo") and "cltv_argo" not in path.read_text(), path.name


def test_jobs_are_thin_entry_points():
    for path in (ROOT / "jobs").glob("*.py"):
        code = [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
        assert len(code) <= 5 and "from spark_app.cli import main" in code, path.name


def test_the_docs_map_every_module():
    architecture = (ROOT / "docs" / "architecture.md").read_text()
    mapped = set(re.findall(r"^\| `(\w+)` \|", architecture, re.M))
    assert mapped == {m for m in RANK if not m.startswith("__")}
    layout = (ROOT / "README.md").read_text().split("## Layout", 1)[1].split("```", 2)[1]
    named = set(re.findall(r"\b[a-z_]+\b", layout))
    assert {m for m in RANK if not m.startswith("__")} <= named
    folders = set(re.findall(r"(?:^|\s)([a-z_]+)/ ", layout, re.M))
    assert folders and all((ROOT / f).is_dir() for f in folders), folders


@pytest.mark.parametrize("path", sorted((ROOT / "benchmarks").glob("*.py")), ids=lambda p: p.stem)
def test_every_benchmark_imports(path, monkeypatch):
    """A benchmark that no longer imports (an API it used was renamed) fails here, not months later."""
    monkeypatch.syspath_prepend(str(path.parent))
    sys.modules.pop(path.stem, None)
    module = importlib.import_module(path.stem)
    assert callable(getattr(module, "main", None)), f"{path.name}: no main()"
