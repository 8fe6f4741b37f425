"""`cltv-argo`: lint, rehearse and submit the Argo Workflows templates in argo/.

    cltv-argo lint [argo/]
    cltv-argo run-local argo/monthly-scoring.yaml -p month=2026-04 [--master spark://…] [--image-root DIR]
    cltv-argo submit cltv-monthly-scoring -p month=2026-04

Exit codes as `cltv`'s (spark_app.errors): 0 done, 1 lint found problems, 2 a manifest or parameter is
wrong, else the failing step's code.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from cltv_argo.local import run_local
from cltv_argo.manifests import lint, load_manifests, schema_problems
from cltv_argo.server import submit
from spark_app.cli import run_command
from spark_app.errors import EXIT_OK, EXIT_VERDICT, UserError

log = logging.getLogger("cltv_argo")


def _parameters(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UserError(f"parameter {pair!r}: expected NAME=VALUE")
        out[name] = value
    return out


def cmd_lint(args: argparse.Namespace) -> int:
    """Every manifest of the folder: this project's lint, and Argo's JSON schemas when given."""
    manifests = load_manifests(args.directory)
    if not manifests:
        raise UserError(f"{args.directory}: no *.yaml manifests")
    schemas = {}
    for path in args.schema:
        try:
            schemas[path] = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"--schema {path}: cannot read a JSON schema: {exc}") from None
    problems = []
    for doc in manifests.values():
        problems += lint(doc, known=manifests)
        for schema in schemas.values():
            problems += schema_problems(doc, schema)
    for problem in problems:
        log.error("%s", problem)
    log.info(
        "%d manifests in %s, %d schema(s): %d problems", len(manifests), args.directory, len(schemas),
        len(problems),
    )  # fmt: skip
    return EXIT_VERDICT if problems else EXIT_OK


def cmd_run_local(args: argparse.Namespace) -> int:
    """The manifest's own commands here; `--master` is the `master` parameter (default local[*])."""
    params = _parameters(args.parameter)
    if args.master is not None:
        if params.get("master", args.master) != args.master:
            raise UserError(f"--master {args.master} and -p master={params['master']}: give one")
        params["master"] = args.master
    return run_local(args.template, params, image_root=args.image_root)


def cmd_submit(args: argparse.Namespace) -> int:
    submit(args.template, _parameters(args.parameter), namespace=args.namespace)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cltv-argo", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("lint", help="lint every manifest of a folder (and check Argo's JSON schemas)")
    p.add_argument("directory", type=Path, nargs="?", default=Path("argo"))
    p.add_argument(
        "--schema", action="append", default=[], metavar="FILE",
        help="an Argo release's JSON schema (e.g. ../shared/argo-schema/argo-v4.1.2.schema.json); repeatable",
    )  # fmt: skip
    p.set_defaults(handler=cmd_lint)
    p = sub.add_parser(
        "run-local",
        help="run a template's DAG on this machine, in dependency order, with the manifest's commands",
        description="Run a template's DAG here: each spark-submit step as the manifest writes it (the "
        "installed pyspark's spark-submit, --py-files /opt/cltv/spark_app.zip, /opt/cltv/jobs/x.py) with "
        "the image's /opt/cltv built for the run by docker/image_root.py, on a local master unless told; "
        "cltv steps as python -m spark_app. Logs each step's wall time and a summary with the review page.",
    )
    p.add_argument("template", type=Path)
    p.add_argument("-p", "--parameter", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument(
        "--master", default=None,
        help="spark-submit master of the Spark steps (the template's `master` parameter); "
        "default local[*], e.g. spark://127.0.0.1:7077 or yarn",
    )  # fmt: skip
    p.add_argument(
        "--image-root", type=Path, default=None,
        help="the image's /opt/cltv mapped to this directory (python docker/image_root.py DIR builds it); "
        "default: built for the run in a temporary directory",
    )  # fmt: skip
    p.set_defaults(handler=cmd_run_local)
    p = sub.add_parser("submit", help="start a WorkflowTemplate on an Argo Server (ARGO_SERVER, ARGO_TOKEN)")
    p.add_argument("template", help="WorkflowTemplate name or argo/<file>.yaml")
    p.add_argument("-p", "--parameter", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--namespace", default=os.environ.get("ARGO_NAMESPACE"))
    p.set_defaults(handler=cmd_submit)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command("cltv-argo", args.command, lambda: args.handler(args), verbose=args.verbose)


if __name__ == "__main__":
    raise SystemExit(main())
