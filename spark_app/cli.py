"""The `cltv` command line; jobs/*.py call `main` with the same arguments under spark-submit."""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from spark_app import __version__
from spark_app.config import Settings, dump_yaml, load_settings
from spark_app.errors import EXIT_CRASH, EXIT_VERDICT, CltvError
from spark_app.months import fmt, parse_month
from spark_app.redact import RedactingFormatter

log = logging.getLogger("spark_app")

# `generate --profile` choices; spark_app.generate.PROFILES declares them (a test keeps the two equal),
# named here so that parsing arguments does not import Spark
PANEL_PROFILES = ("convergent", "prepaid")


def _month(text: str):
    try:
        return parse_month(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seconds(text: str) -> float:
    """Finite, non-negative seconds (`nan` or `inf` would make a wait never end; 0 checks once)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite, non-negative number of seconds, got {text!r}")
    return value


def _conf_arg(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument(
        "--conf",
        type=Path,
        required=required,
        default=None,
        help="environment config file (default: the embedded conf/local.yaml); base.yaml and models.yaml "
        "are read from beside it, else the packaged defaults are used",
    )


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.conf)


def _spark(settings: Settings):
    from spark_app.session import get_spark

    return get_spark(settings.spark)


# ------------------------------------------------------------------ command handlers
def cmd_generate(args: argparse.Namespace) -> int:
    from spark_app.generate import PanelSpec, generate_panel

    settings = load_settings(args.conf)
    spec = PanelSpec(
        subscribers=args.subscribers,
        months=args.months,
        start=args.start,
        seed=args.seed,
        profile=args.profile,
        acquisition_months=args.acquisition_months,
        parties=args.parties,
    )
    generate_panel(_spark(settings), args.out, spec, partitions=args.partitions)
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    """The resolved configuration (secrets masked): all of it, one key (`--key`), or where each value
    came from (`--origin`: file, CLTV_* variable or default)."""
    from spark_app.config import config_value, load_settings_with_origin, origin_lines, to_yaml

    settings, origin = load_settings_with_origin(args.conf)
    if args.origin:
        sys.stdout.write("\n".join(origin_lines(settings, origin, args.key)) + "\n")
    elif args.key:
        value = config_value(settings, args.key)
        scalar = not isinstance(value, dict | list)
        sys.stdout.write(to_yaml(value).removesuffix("...\n") if not scalar else f"{_scalar(value)}\n")
    else:
        sys.stdout.write(dump_yaml(settings))
    return 0


def _scalar(value: object) -> str:
    """A scalar as YAML writes it (null, true, 0.05), so `--key` output reads back as the same value."""
    from spark_app.config import to_yaml

    return to_yaml(value).strip().removesuffix("...").strip()


def cmd_status(args: argparse.Namespace) -> int:
    """What is registered, scored, monitored, published and locked; exit 75 when the registry is down."""
    import json

    from spark_app.errors import Unreachable
    from spark_app.status import collect_status, render

    status = collect_status(_settings(args))
    if args.json:
        sys.stdout.write(json.dumps(status.to_json(), indent=2, sort_keys=False) + "\n")
    else:
        sys.stdout.write(render(status))
    if status.registry_error:
        raise Unreachable(status.registry_error)
    return 0


def _require_inputs(settings: Settings, needs: dict[str, list], context: str) -> None:
    """A month whose input partitions are absent fails here, in a second, before Spark starts."""
    from spark_app.inputs_ready import require_months

    require_months(settings, needs, context)


def cmd_build_dataset(args: argparse.Namespace) -> int:
    from spark_app.dataset import DatasetPlan

    settings = _settings(args)
    plan = DatasetPlan.from_config(settings.dataset, args.target_end, settings.models.catalog())
    _require_inputs(
        settings, {"features": plan.feature_months, "facts": plan.fact_months}, f"needed by {plan.describe()}"
    )
    from spark_app.dataset import build_dataset

    build_dataset(_spark(settings), settings, target_end=args.target_end)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from spark_app.training import train_release

    settings = _settings(args)
    train_release(_spark(settings), settings, dataset_id=args.dataset)
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    from spark_app.registry import promote

    settings = _settings(args)
    decision = promote(settings, version=args.version, auto=args.auto, override=args.override_gate)
    return 0 if decision.promoted else EXIT_VERDICT


def cmd_score(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _require_inputs(settings, {"features": [args.month]}, f"scoring {fmt(args.month)}")
    from spark_app.scoring import score_month  # CatBoost, MLflow: seconds to import, after the check

    score_month(_spark(settings), settings, month=args.month, release=args.release, detail=args.detail)
    return 0


def cmd_monitor(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _require_inputs(settings, {"features": [args.month]}, f"monitor {fmt(args.month)}")
    from spark_app.monitoring import monitor_month

    result = monitor_month(_spark(settings), settings, month=args.month)
    return EXIT_VERDICT if result.failed else 0


def cmd_report(args: argparse.Namespace) -> int:
    from spark_app.report import build_report

    settings = _settings(args)
    build_report(_spark(settings), settings, month=args.month)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from spark_app.pipeline import run_demo

    run_demo(
        subscribers=args.subscribers,
        months=args.months,
        workdir=args.workdir,
        conf=args.conf,
        profile=args.profile,
        parties=args.parties,
    )
    return 0


def cmd_validate_inputs(args: argparse.Namespace) -> int:
    from spark_app.monthly import validate_inputs

    settings = _settings(args)
    context = f"validate-inputs {fmt(args.month)}"
    _require_inputs(settings, {"features": [args.month], "facts": [args.month]}, context)
    validate_inputs(_spark(settings), settings, month=args.month)
    return 0


def cmd_validate_output(args: argparse.Namespace) -> int:
    from spark_app.monthly import validate_output

    settings = _settings(args)
    validate_output(_spark(settings), settings, month=args.month)
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from spark_app.monthly import publish

    publish(_settings(args), month=args.month, webhook_url=args.webhook_url or None)
    return 0


def cmd_release_seal(args: argparse.Namespace) -> int:
    from spark_app.registry import seal_release

    result = seal_release(_settings(args), version=args.version)
    state = "was sealed already; its files match" if result.already else "sealed"
    log.info("release v%d %s: %d files, digest %s", result.version, state, result.files, result.digest)
    return 0


def cmd_release_verify(args: argparse.Namespace) -> int:
    from spark_app.registry import load_release

    release = load_release(_settings(args), args.release)
    log.info(
        "release v%d: %d files match the digests recorded in the registry; release digest %s",
        release.version, len(release.files), release.digest,
    )  # fmt: skip
    return 0


def _campaign_name(text: str) -> str:
    import re

    from spark_app.config import NAME_PATTERN

    if not re.fullmatch(NAME_PATTERN, text):
        raise argparse.ArgumentTypeError(f"not a campaign name: {text[:60]!r} (expected {NAME_PATTERN})")
    return text


def _date(text: str):
    import datetime as dt

    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date: {text!r} (expected YYYY-MM-DD)") from None


def cmd_campaign_design(args: argparse.Namespace) -> int:
    from spark_app.campaigns.design import design_campaign

    settings = _settings(args)
    result = design_campaign(_spark(settings), settings, args.campaign, args.month, launch_date=args.date)
    return EXIT_VERDICT if result.refused else 0


def cmd_campaign_publish(args: argparse.Namespace) -> int:
    from spark_app.campaigns.publish import publish_campaign

    settings = _settings(args)
    publish_campaign(_spark(settings), settings, args.campaign, args.month, launch_date=args.date)
    return 0


def cmd_campaign_evaluate(args: argparse.Namespace) -> int:
    from spark_app.campaigns.evaluate import evaluate_campaign

    settings = _settings(args)
    result = evaluate_campaign(_spark(settings), settings, args.campaign, args.month)
    return EXIT_VERDICT if result.failed else 0


# ------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cltv", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(
        name: str, handler: Callable[[argparse.Namespace], int], help: str, conf: str | None = "optional"
    ):
        p = sub.add_parser(name, help=help, description=help)
        if conf:
            _conf_arg(p, required=conf == "required")
        p.set_defaults(handler=handler)
        return p

    p = command("generate", cmd_generate, "write a synthetic subscriber panel (features, facts, parties)")
    p.add_argument(
        "--out", required=True, help="directory (any Hadoop path) for features/, facts/ and parties/"
    )
    p.add_argument("--subscribers", type=int, required=True)
    p.add_argument("--months", type=int, required=True)
    p.add_argument("--start", type=_month, default=parse_month("2023-01"), help="first month, YYYY-MM")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--partitions", type=int, default=None, help="Spark partitions (default 2 x cores)")
    p.add_argument(
        "--acquisition-months",
        type=int,
        default=None,
        help="months (from the panel's start) in which newcomers join; after them the base only ages "
        "(default: every month)",
    )
    p.add_argument(
        "--profile",
        choices=PANEL_PROFILES,
        default="convergent",
        help="which operator's data: convergent (postpaid + FMC + home internet) or prepaid mobile",
    )
    p.add_argument(
        "--no-parties",
        dest="parties",
        action="store_false",
        help="no persons, households, joint exits or number changes, and no parties/: the panel as it was "
        "before them",
    )

    p = command("build-dataset", cmd_build_dataset, "build the horizon-lagged training set", "required")
    p.add_argument("--target-end", type=_month, required=True, help="last target month T2, YYYY-MM")

    p = command("train", cmd_train, "train the eight models as one MLflow release", "required")
    p.add_argument("--dataset", default=None, help="dataset id (default: the newest)")

    p = command("promote", cmd_promote, "move alias champion to a challenger that is not worse", "required")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--version", type=int, default=None, help="registered model version to promote")
    who.add_argument("--auto", action="store_true", help="promote the current challenger if it passes")
    p.add_argument(
        "--override-gate",
        action="store_true",
        help="promote even if the gate refuses (worse than the champion, or biased): a deliberate choice, "
        "recorded with everything it overrode",
    )

    p = command("score", cmd_score, "score every subscriber of a month", "required")
    p.add_argument("--month", type=_month, required=True)
    p.add_argument("--release", default="champion", help="champion, challenger or a version number")
    p.add_argument("--detail", action="store_true", help="add the 24 monthly forecasts per model")

    p = command("monitor", cmd_monitor, "drift and backtests for a scored month", "required")
    p.add_argument("--month", type=_month, required=True)

    p = command("report", cmd_report, "static HTML review page for a month", "required")
    p.add_argument("--month", type=_month, required=True)

    p = command("demo", cmd_demo, "run the whole pipeline embedded on a synthetic panel")
    p.add_argument("--subscribers", type=int, default=20_000)
    p.add_argument("--months", type=int, default=40)
    p.add_argument("--workdir", type=Path, default=None, help="default: work/demo, or work/demo-<profile>")
    p.add_argument(
        "--profile",
        choices=PANEL_PROFILES,
        default="convergent",
        help="the generated operator; prepaid runs on conf/examples/prepaid.yaml (unless --conf is given)",
    )
    p.add_argument(
        "--no-parties",
        dest="parties",
        action="store_false",
        help="a panel without persons, households and number changes, everything per subscriber",
    )

    p = command(
        "validate-inputs",
        cmd_validate_inputs,
        "check a month's input tables against the contract",
        "required",
    )
    p.add_argument("--month", type=_month, required=True)
    p = command("validate-output", cmd_validate_output, "check a month's scores are complete", "required")
    p.add_argument("--month", type=_month, required=True)
    p = command("publish", cmd_publish, "write a month's _PUBLISHED marker and notify a webhook", "required")
    p.add_argument("--month", type=_month, required=True)
    p.add_argument("--webhook-url", default="", help="POST the published record here (empty: none)")

    camp = sub.add_parser("campaign", help="retention campaigns: design, publish, evaluate")
    camp_sub = camp.add_subparsers(dest="campaign_command", required=True)
    for verb, handler, text, month_help in (
        ("design", cmd_campaign_design, "target list, control group, A/A proof and MDE of a campaign",
         "campaign month M (scored, with --detail)"),
        ("publish", cmd_campaign_publish, "record a design's contacts in the contact history",
         "campaign month M of the design"),
        ("evaluate", cmd_campaign_evaluate, "Retention_N and value by group, with CIs, at the outcome month",
         "outcome month E = M + outcome_months"),
    ):  # fmt: skip
        p = camp_sub.add_parser(verb, help=text, description=text)
        _conf_arg(p, required=True)
        p.add_argument("--campaign", type=_campaign_name, required=True, help="a key of campaigns in config")
        p.add_argument("--month", type=_month, required=True, help=month_help)
        if verb != "evaluate":
            p.add_argument("--date", type=_date, default=None, help="launch date (default: the day after M)")
        else:
            p.set_defaults(date=None)
        p.set_defaults(handler=handler)

    rel = sub.add_parser("release", help="check or seal a registered release's files")
    rel_sub = rel.add_subparsers(dest="release_command", required=True)
    seal = rel_sub.add_parser(
        "seal",
        help="record the SHA-256 of every file of a release registered before digests existed (after a "
        "person checked it): jobs refuse an unsealed release",
    )
    _conf_arg(seal, required=True)
    seal.add_argument("--version", type=int, required=True, help="registered model version")
    seal.set_defaults(handler=cmd_release_seal)
    verify = rel_sub.add_parser(
        "verify", help="check a release's files against the digests the registry recorded (exit 2 if not)"
    )
    _conf_arg(verify, required=True)
    verify.add_argument("--release", default="champion", help="champion, challenger or a version number")
    verify.set_defaults(handler=cmd_release_verify)

    cfg = sub.add_parser("config", help="inspect the configuration")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True)
    show = cfg_sub.add_parser(
        "show",
        help="print the resolved configuration as YAML (secrets masked)",
        description="print the resolved configuration as YAML (secrets masked); --key for one value, "
        "--origin for the layer that set each value",
    )
    _conf_arg(show)
    show.add_argument("--key", default=None, help="one dotted key (e.g. dataset.horizons) or section")
    show.add_argument(
        "--origin",
        action="store_true",
        help="every value with the layer that set it: a file, a CLTV_* variable, or default",
    )
    show.set_defaults(handler=cmd_config_show)

    p = command(
        "status",
        cmd_status,
        "releases and aliases, every scored / monitored / published month, locks held, next month's inputs",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = command(
        "wait-for-inputs", cmd_wait_for_inputs, "wait until both input partitions of a month are complete"
    )
    p.add_argument("--month", type=_month, required=True)
    p.add_argument("--timeout", type=_seconds, default=3600.0, help="seconds before giving up")
    p.add_argument("--poll", type=_seconds, default=30.0, help="seconds between checks")

    return parser


def cmd_wait_for_inputs(args: argparse.Namespace) -> int:
    from spark_app.inputs_ready import wait_for_inputs

    settings = _settings(args)
    wait_for_inputs(settings, month=args.month, timeout=args.timeout, poll=args.poll)
    return 0


class _Stderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record is emitted (not when the handler was made), so a
    caller that swaps stderr — a test capturing it, a notebook — never leaves logging a closed stream."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_logging(verbose: bool = False) -> None:
    """One stderr handler whose formatter masks credentials in every line (spark_app.redact)."""
    handler = _Stderr()
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler], force=True)
    for noisy in ("py4j", "urllib3", "alembic", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_command(program: str, command: str, action: Callable[[], int], verbose: bool = False) -> int:
    """Logging set up, `action` run, its errors mapped to exit codes: the one place that decides them
    (spark_app.errors); `cltv-argo` goes through it too."""
    setup_logging(verbose)
    name = f"{program} {command}"
    log.info("%s %s %s (spark_app from %s)", program, __version__, command, Path(__file__).parent)
    try:
        return action()
    except CltvError as exc:
        if exc.exit_code == EXIT_CRASH:
            log.exception("%s: unexpected error (exit code %d)", name, EXIT_CRASH)
        else:
            log.error("%s", exc)
        return exc.exit_code
    except Exception:
        log.exception("%s: unexpected error (exit code %d)", name, EXIT_CRASH)
        return EXIT_CRASH


def main(argv: Sequence[str] | None = None) -> int:
    import time

    from spark_app.metrics import push_job_exit  # exit code, wall time, `failed` to the Pushgateway

    args = build_parser().parse_args(argv)
    started = time.time()
    code = run_command("cltv", args.command, lambda: args.handler(args), verbose=args.verbose)
    return push_job_exit(lambda: _settings(args).monitoring, args, code, started)
