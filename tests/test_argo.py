"""The Argo manifests, proven offline: Argo's JSON schema (3.7 and 4.1), lint, a local run, and submit."""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import re
import shutil
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

import cltv_argo.local
from cltv_argo.local import (
    empty_argument,
    evaluate_when,
    local_command,
    report_flags,
    review_page,
    run_local,
)
from cltv_argo.manifests import (
    ArgoError,
    Depends,
    cron_problems,
    lint,
    load_documents,
    load_manifests,
    schema_problems,
)
from cltv_argo.server import submit

ROOT = Path(__file__).resolve().parent.parent
ARGO_DIR = ROOT / "argo"
MANIFESTS = sorted(ARGO_DIR.glob("*.yaml"))
SCHEMA_VERSIONS = ("v3.7.18", "v4.1.2")
SCHEMA_DIR = Path(os.environ.get("ARGO_SCHEMA_DIR", ROOT.parent / "shared" / "argo-schema"))


@pytest.fixture(scope="module", params=SCHEMA_VERSIONS)
def schema(request) -> dict:
    path = SCHEMA_DIR / f"argo-{request.param}.schema.json"
    if not path.exists():
        pytest.skip(f"Argo {request.param} JSON schema not found at {path} (set ARGO_SCHEMA_DIR)")
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def known() -> dict:
    return load_manifests(ARGO_DIR)


def monthly() -> dict:
    return load_documents(ARGO_DIR / "monthly-scoring.yaml")[0]


def monthly_cron() -> dict:
    return load_documents(ARGO_DIR / "monthly-cron.yaml")[0]


def template(doc: dict, name: str) -> dict:
    return next(t for t in doc["spec"]["templates"] if t["name"] == name)


def task(doc: dict, name: str) -> dict:
    return next(t for t in template(doc, "monthly")["dag"]["tasks"] if t["name"] == name)


# ------------------------------------------------------------------ schema
def test_the_expected_manifests_exist():
    kinds = {(d["kind"], d["metadata"]["name"]) for p in MANIFESTS for d in load_documents(p)}
    assert {
        ("WorkflowTemplate", "cltv-monthly-scoring"),
        ("WorkflowTemplate", "cltv-release"),
        ("CronWorkflow", "cltv-monthly-scoring"),
        ("WorkflowTemplate", "cltv-campaign"),
        ("WorkflowTemplate", "cltv-campaign-evaluation"),
        ("CronWorkflow", "cltv-campaign"),
        ("CronWorkflow", "cltv-campaign-evaluation"),
    } <= kinds


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_matches_argo_schema_strictly(schema, path):
    for doc in load_documents(path):
        assert schema_problems(doc, schema, strict=True) == []


SCHEMA_BREAKERS: list[tuple[str, Callable[[dict], object], str | None]] = [
    ("unknown-field", lambda d: template(d, "score").update(retrystrategy={"limit": "2"}), "retrystrategy"),
    ("int-retry-limit", lambda d: template(d, "score")["retryStrategy"].update(limit=2), "limit"),
    (
        "int-deadline",
        lambda d: template(d, "score").update(activeDeadlineSeconds=3600),
        "activeDeadlineSeconds",
    ),
    ("int-quantity", lambda d: template(d, "score")["container"]["resources"]["limits"].update(cpu=4), "cpu"),
    ("dangling-reference", lambda d: task(d, "score").update(template="nope"), None),
]


@pytest.mark.parametrize("name, break_it, expected", SCHEMA_BREAKERS, ids=[b[0] for b in SCHEMA_BREAKERS])
def test_schema_catches_wrong_types_and_unknown_fields(schema, name, break_it, expected):
    doc = monthly()
    break_it(doc)
    problems = schema_problems(doc, schema)
    if expected is None:
        assert problems == []  # a schema says nothing about references: that is lint's job
    else:
        assert problems and any(expected in p for p in problems), problems


def test_argo4_removed_the_singular_schedule(schema):
    cron = monthly_cron()
    cron["spec"]["schedule"] = cron["spec"].pop("schedules")[0]
    spec_props = schema["definitions"]["io.argoproj.workflow.v1alpha1.CronWorkflowSpec"]["properties"]
    if "schedule" in spec_props:  # v3.7: deprecated but valid; lint flags it
        assert schema_problems(cron, schema) == []
        assert any("spec.schedule was removed" in p for p in lint(cron))
    else:  # v4.1: gone, and schedules is required
        assert any("schedules" in p for p in schema_problems(cron, schema))


# ------------------------------------------------------------------ lint
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifests_lint_clean(path, known):
    for doc in load_documents(path):
        assert lint(doc, known=known) == []


Breaker = Callable[[dict], object]
TEMPLATE_BREAKERS: list[tuple[str, Breaker, str]] = [
    ("entrypoint", lambda d: d["spec"].update(entrypoint="nope"), "entrypoint 'nope' is not a template"),
    ("on-exit", lambda d: d["spec"].update(onExit="gone"), "onExit template 'gone'"),
    ("task-template", lambda d: task(d, "score").update(template="scor"), "template 'scor' does not exist"),
    ("depends-unknown", lambda d: task(d, "score").update(depends="validate"), "unknown task 'validate'"),
    (
        "depends-result",
        lambda d: task(d, "publish").update(depends="monitor.Suceeded || monitor.Failed"),
        "unknown result 'Suceeded'",
    ),
    ("depends-syntax", lambda d: task(d, "publish").update(depends="monitor.Failed ||"), "ends where a task"),
    (
        "depends-and-dependencies",
        lambda d: task(d, "publish").update(depends=None, dependencies=["monitor"]),
        "either depends or dependencies",
    ),
    (
        "cycle",
        lambda d: task(d, "wait-for-inputs").update(depends="publish"),
        "dependency cycle",
    ),
    (
        "workflow-param",
        lambda d: template(d, "score")["container"]["args"].append("{{workflow.parameters.mnth}}"),
        "workflow.parameters.mnth is not declared",
    ),
    (
        "input-param",
        lambda d: template(d, "score")["container"]["args"].append("{{inputs.parameters.month}}"),
        "inputs.parameters.month is not declared",
    ),
    (
        "hyphen-in-expression",
        lambda d: template(d, "score")["container"]["args"].append("{{=workflow.parameters.wait-timeout}}"),
        "hyphenated names must be indexed",
    ),
    (
        "unknown-variable",
        lambda d: template(d, "score")["container"]["args"].append("{{workflow.statuss}}"),
        "workflow.statuss is not an Argo workflow variable",
    ),
    (
        "scheduled-time-outside-cron",
        lambda d: template(d, "score")["container"]["args"].append("{{workflow.scheduledTime}}"),
        "only set in a CronWorkflow",
    ),
    (
        "task-input-missing",
        lambda d: template(d, "score").update(inputs={"parameters": [{"name": "x"}]}),
        "needs input 'x'",
    ),
    (
        "task-argument-unknown",
        lambda d: task(d, "score").update(arguments={"parameters": [{"name": "y", "value": "1"}]}),
        "argument 'y' is not an input",
    ),
    ("no-retry", lambda d: template(d, "score").pop("retryStrategy"), "no retryStrategy"),
    (
        "no-deadline",
        lambda d: template(d, "publish-marker").pop("activeDeadlineSeconds"),
        "no activeDeadlineSeconds",
    ),
    (
        "no-limits",
        lambda d: template(d, "monitor")["container"]["resources"].pop("limits"),
        "resources.limits lacks cpu, memory",
    ),
    (
        "literal-credential",
        lambda d: template(d, "score")["container"]["env"].append(
            {"name": "MLFLOW_TRACKING_TOKEN", "value": "x"}
        ),
        "holds a literal value",
    ),
    ("no-mutex", lambda d: d["spec"].pop("synchronization"), "no synchronization.mutexes"),
    (
        "argo4-mutex",
        lambda d: d["spec"].update(synchronization={"mutex": {"name": "m"}}),
        "synchronization.mutex was removed in Argo 4",
    ),
]


@pytest.mark.parametrize("name, break_it, expected", TEMPLATE_BREAKERS, ids=[b[0] for b in TEMPLATE_BREAKERS])
def test_lint_catches_broken_template(known, name, break_it, expected):
    doc = copy.deepcopy(monthly())
    break_it(doc)
    problems = lint(doc, known=known)
    assert any(expected in p for p in problems), problems


CRON_BREAKERS: list[tuple[str, Breaker, str]] = [
    ("schedule-fields", lambda c: c["spec"].update(schedules=["0 6 5 *"]), "has 4 fields"),
    ("schedule-range", lambda c: c["spec"].update(schedules=["0 6 32 * *"]), "day of month '32'"),
    ("no-schedules", lambda c: c["spec"].update(schedules=[]), "no schedules"),
    ("timezone", lambda c: c["spec"].update(timezone="Europe/Londn"), "not an IANA zone"),
    ("concurrency", lambda c: c["spec"].update(concurrencyPolicy="forbid"), "concurrencyPolicy 'forbid'"),
    ("deadline", lambda c: c["spec"].update(startingDeadlineSeconds=-1), "startingDeadlineSeconds"),
    ("singular-schedule", lambda c: c["spec"].update(schedule="0 6 5 * *"), "spec.schedule was removed"),
    (
        "template-ref",
        lambda c: c["spec"]["workflowSpec"]["workflowTemplateRef"].update(name="cltv-monthly"),
        "WorkflowTemplate/cltv-monthly is not among the manifests",
    ),
    (
        "argument-not-declared",
        lambda c: c["spec"]["workflowSpec"]["arguments"]["parameters"].append({"name": "moth", "value": "x"}),
        "argument 'moth' is not a parameter",
    ),
    (
        "required-parameter",
        lambda c: c["spec"]["workflowSpec"]["arguments"].update(parameters=[]),
        "needs parameter 'month'",
    ),
]


@pytest.mark.parametrize("name, break_it, expected", CRON_BREAKERS, ids=[b[0] for b in CRON_BREAKERS])
def test_lint_catches_broken_cron(known, name, break_it, expected):
    cron = copy.deepcopy(monthly_cron())
    break_it(cron)
    problems = lint(cron, known=known)
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    "expr", ["0 6 5 * *", "*/15 0-6 * jan-mar mon-fri", "0 2 8 1,4,7,10 *", "@monthly", "@every 1h30m"]
)
def test_cron_accepts(expr):
    assert cron_problems(expr) == []


@pytest.mark.parametrize(
    "expr", ["61 * * * *", "0 24 * * *", "5-1 * * * *", "*/0 * * * *", "@fortnightly", "x"]
)
def test_cron_rejects(expr):
    assert cron_problems(expr)


def test_monthly_run_shape():
    """The issue's DAG order, a mutex per month, every Spark step in client mode against the master param."""
    doc = monthly()
    deps = {t["name"]: t.get("depends") for t in template(doc, "monthly")["dag"]["tasks"]}
    assert deps == {
        "wait-for-inputs": None,
        "validate-inputs": "wait-for-inputs",
        "score": "validate-inputs",
        "validate-output": "score",
        "monitor": "validate-output",
        "report": "monitor.Succeeded || monitor.Failed",
        "publish": "monitor.Succeeded && report.Succeeded",  # what is published has been reviewed
    }
    assert doc["spec"]["synchronization"]["mutexes"][0]["name"].endswith("{{workflow.parameters.month}}")
    for name in ("validate-inputs", "score", "validate-output", "monitor", "report"):
        args = template(doc, name)["container"]["args"]
        assert args[:5] == [
            "spark-submit",
            "--master",
            "{{workflow.parameters.master}}",
            "--deploy-mode",
            "client",
        ]
        assert "--py-files" in args
    cron = monthly_cron()["spec"]
    assert cron["concurrencyPolicy"] == "Forbid" and cron["timezone"] and cron["startingDeadlineSeconds"] > 0
    month = cron["workflowSpec"]["arguments"]["parameters"][0]
    assert month["name"] == "month" and "workflow.scheduledTime" in month["value"]


def test_monthly_scores_carry_detail_and_the_report_follows_monitor():
    """score --detail feeds later months' backtests; report runs after monitor, passed or failed, and
    publish after both."""
    doc = monthly()
    score_args = template(doc, "score")["container"]["args"]
    assert "--detail" in score_args
    assert local_command(score_args, python="py")[3] == "score"
    report_args = template(doc, "report")["container"]["args"]
    assert local_command(report_args, python="py")[3:] == [
        "report",
        "--conf",
        "{{workflow.parameters.conf}}",
        "--month",
        "{{workflow.parameters.month}}",
    ]
    assert (ROOT / "jobs" / "report.py").is_file()
    for key in ("env", "volumeMounts", "resources"):
        assert template(doc, "report")["container"][key] == template(doc, "monitor")["container"][key]


def test_monitor_retries_neither_a_crossed_threshold_nor_missing_inputs():
    """Exit 1 (fail threshold) and 2 (inputs missing) are answers; other failures are retried."""
    expression = template(monthly(), "monitor")["retryStrategy"]["expression"]
    assert expression == 'lastRetry.exitCode != "1" && lastRetry.exitCode != "2"'
    for name in ("validate-inputs", "score", "validate-output", "report"):
        assert template(monthly(), name)["retryStrategy"]["expression"] == 'lastRetry.exitCode != "2"'
    # promote: a refused challenger (1) is a decision; a crash (70) or an evicted pod (-1) is retried
    promote = template(load_documents(ARGO_DIR / "release.yaml")[0], "promote")["retryStrategy"]
    assert promote["retryPolicy"] == "Always" and promote["expression"] == expression


def _phases(**given: str) -> dict[str, str]:
    return {k.replace("_", "-"): v for k, v in given.items()}


@pytest.mark.parametrize(
    "monitor, runs",
    [
        ("Succeeded", {"publish", "report"}),
        ("Failed", {"report"}),
        ("Errored", set()),
        ("Omitted", set()),
    ],
)
def test_monthly_depends_after_monitor(monitor, runs):
    """publish needs monitor passed and the review page built; report needs monitor to have answered."""
    tasks = {t["name"]: t for t in template(monthly(), "monthly")["dag"]["tasks"]}
    phases = {name: "Succeeded" for name in tasks} | {"monitor": monitor}
    assert {n for n in ("publish", "report") if Depends.of_task(tasks[n])(phases)} == runs
    phases["report"] = "Failed"  # a review page that could not be built: nothing is published
    assert not Depends.of_task(tasks["publish"])(phases)


def _rendered_commands(doc: dict, params: dict[str, str]) -> dict[str, list[str]]:
    """The container commands a run with these parameters executes, filled in as Argo would pass them: a
    template reached only through steps whose `when` is false does not run."""
    values = {p["name"]: str(p.get("value", "")) for p in doc["spec"]["arguments"]["parameters"]} | params
    fill = re.compile(r"\{\{workflow\.parameters\.([a-z_]+)\}\}")
    calls: dict[str, list[bool]] = {}
    for t in doc["spec"]["templates"]:
        for group in t.get("steps") or []:
            for step in group:
                when = step.get("when")
                runs = when is None or "workflow.status" in when or evaluate_when(fill.sub(
                    lambda m: values[m.group(1)], when))  # fmt: skip
                calls.setdefault(step["template"], []).append(runs)
    return {
        t["name"]: [fill.sub(lambda m: values[m.group(1)], str(a)) for a in t["container"]["args"]]
        for t in doc["spec"]["templates"]
        if "container" in t and any(calls.get(t["name"], [True]))
    }


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_no_step_passes_an_empty_flag_with_the_default_parameters(path):
    """`--webhook-url ''` was passed when no webhook was set: every argument has a value."""
    for doc in load_documents(path):
        if doc["kind"] == "CronWorkflow":
            continue
        params = {"month": "2026-04", "target_end": "2026-03", "campaign": "retention"}
        for name, argv in _rendered_commands(doc, params).items():
            assert empty_argument(argv) is None, (path.name, name)


def test_publish_passes_the_webhook_only_when_there_is_one():
    """publish is one of two commands chosen by `when`: with the flag and its URL, or without the flag."""
    doc = monthly()
    steps = template(doc, "publish")["steps"][0]
    for webhook, chosen in (("", "publish-marker"), ("https://hooks.example.com/x", "publish-and-notify")):
        rendered = {
            s["template"]
            for s in steps
            if evaluate_when(s["when"].replace("{{workflow.parameters.webhook}}", webhook))
        }
        assert rendered == {chosen}
    without = _rendered_commands(doc, {"month": "2026-04"})
    assert "publish-and-notify" not in without and "--webhook-url" not in without["publish-marker"]
    with_hook = _rendered_commands(doc, {"month": "2026-04", "webhook": "https://hooks.example.com/x"})
    assert "publish-marker" not in with_hook
    assert with_hook["publish-and-notify"][-2:] == ["--webhook-url", "https://hooks.example.com/x"]
    assert empty_argument(["cltv", "publish", "--webhook-url", ""]) is not None


@pytest.mark.parametrize(
    "expr, phases, expected",
    [
        ("a", _phases(a="Succeeded"), True),
        ("a", _phases(a="Skipped"), True),  # a bare name: Succeeded, Skipped or Daemoned
        ("a", _phases(a="Failed"), False),
        ("a", _phases(a="Omitted"), False),
        ("a", _phases(a="Errored"), False),
        ("a.Failed", _phases(a="Failed"), True),
        ("a.Omitted", _phases(a="Omitted"), True),
        ("a.Errored", _phases(a="Failed"), False),
        ("a.AnySucceeded", _phases(a="Succeeded"), False),  # only a withItems task group has children
        ("!a.Failed", _phases(a="Succeeded"), True),
        ("!!a", _phases(a="Succeeded"), True),
        ("a && b.Failed", _phases(a="Succeeded", b="Failed"), True),
        ("a && b.Failed", _phases(a="Failed", b="Failed"), False),
        ("a.Failed || b", _phases(a="Succeeded", b="Skipped"), True),
        ("a || b && c", _phases(a="Succeeded", b="Failed", c="Failed"), True),  # && binds tighter
        ("(a || b) && c", _phases(a="Succeeded", b="Failed", c="Failed"), False),
        (
            "(validate-output.Succeeded||validate-output.Skipped) && !wait-for.Failed",
            _phases(validate_output="Skipped", wait_for="Succeeded"),
            True,
        ),
    ],
)
def test_depends_evaluation(expr, phases, expected):
    assert Depends(expr)(phases) is expected


def test_depends_names_its_tasks_and_reads_dependencies_as_a_conjunction():
    assert Depends("(a.Failed || b) && !a.Omitted").tasks == ["a", "b"]
    conj = Depends.of_task({"name": "c", "dependencies": ["a", "b"]})
    assert conj.tasks == ["a", "b"]
    assert conj(_phases(a="Succeeded", b="Skipped")) and not conj(_phases(a="Succeeded", b="Failed"))
    assert Depends.of_task({"name": "root"}) is None
    with pytest.raises(ArgoError, match="have not finished"):
        Depends("a && b")(_phases(a="Succeeded"))


@pytest.mark.parametrize(
    "expr, message",
    [
        ("", "empty expression"),
        ("a &&", "ends where a task was expected"),
        ("(a || b", "unbalanced"),
        ("a)", "unexpected ')'"),
        ("a b", "unexpected 'b'"),
        ("a.Suceeded", "unknown result 'Suceeded'"),
        ("a == b", "unexpected '== b' at position 2"),
        ("__import__('os').system('x')", "unexpected"),
        ("a.Failed.Succeeded", "unexpected"),
    ],
)
def test_depends_rejects_what_is_not_a_depends_expression(expr, message):
    with pytest.raises(ArgoError, match=re.escape(message)):
        Depends(expr)


def test_no_credentials_in_any_manifest():
    text = "\n".join(p.read_text() for p in MANIFESTS).lower()
    for needle in ("password:", "bearer ", "begin private key"):
        assert needle not in text
    refs = [e for p in MANIFESTS for d in load_documents(p) for e in _env_vars(d) if "TOKEN" in e["name"]]
    assert refs and all("secretKeyRef" in e["valueFrom"] for e in refs)


def _env_vars(doc: dict) -> list[dict]:
    spec = doc["spec"].get("workflowSpec", doc["spec"])
    return [e for t in spec.get("templates", []) for e in (t.get("container") or {}).get("env", [])]


# ------------------------------------------------------------------ run-local
def test_local_command_translates_spark_submit_and_cltv():
    args = [
        "spark-submit",
        "--master",
        "yarn",
        "--py-files",
        "x.zip",
        "/opt/cltv/jobs/build_dataset.py",
        "--a",
    ]
    assert local_command(args, python="py") == ["py", "-m", "spark_app", "build-dataset", "--a"]
    assert local_command(["cltv", "publish", "--m"], python="py") == [
        "py",
        "-m",
        "spark_app",
        "publish",
        "--m",
    ]
    assert local_command(["echo", "hi"], python="py") == ["echo", "hi"]
    job = ["spark-submit", "--master", "yarn", "/opt/cltv/jobs/campaign_design.py", "--month", "2026-04"]
    assert local_command(job, python="py") == [
        "py",
        "-m",
        "spark_app",
        "campaign",
        "design",
        "--month",
        "2026-04",
    ]


def test_every_job_a_manifest_runs_exists_and_is_a_cli_command():
    """jobs/<x>.py of every spark-submit step exists, and its local translation is a real subcommand."""
    from spark_app.cli import build_parser

    parser = build_parser()
    for path in MANIFESTS:
        for doc in load_documents(path):
            for t in (doc.get("spec") or {}).get("templates") or []:
                args = (t.get("container") or {}).get("args") or []
                if args[:1] != ["spark-submit"]:
                    continue
                script = next(a for a in args if a.endswith(".py"))
                assert (ROOT / "jobs" / Path(script).name).exists(), script
                command = local_command(args, python="py")[3:]
                words = [a for a in command if not a.startswith("--") and "{{" not in a][:2]
                assert words[0] in parser._subparsers._group_actions[0].choices, (script, words)


def test_the_campaign_is_designed_then_published_and_a_refusal_or_bad_input_is_not_retried():
    campaign = load_documents(ARGO_DIR / "campaign.yaml")[0]
    tasks = {t["name"]: t for t in template(campaign, "campaign")["dag"]["tasks"]}
    assert tasks["publish"]["depends"] == "design"
    for name in ("design", "publish"):
        retry = template(campaign, name)["retryStrategy"]["expression"]
        assert '!= "1"' in retry and '!= "2"' in retry
        assert "--campaign" in template(campaign, name)["container"]["args"]
    evaluation = load_documents(ARGO_DIR / "campaign-evaluation.yaml")[0]
    assert '!= "1"' in template(evaluation, "evaluate")["retryStrategy"]["expression"]


def test_evaluate_when():
    assert evaluate_when("'Failed' != 'Succeeded' && 'http://x' != ''")
    assert not evaluate_when("'Succeeded' != 'Succeeded' && 'http://x' != ''")
    assert not evaluate_when("'Failed' != 'Succeeded' && '' != ''")
    with pytest.raises(ArgoError):
        evaluate_when("{{x}} > 3")


class Recorder(BaseHTTPRequestHandler):
    """Records requests; answers like the Argo Server's submit endpoint."""

    calls: list[dict]

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.calls.append(
            {"path": self.path, "headers": dict(self.headers), "body": json.loads(body or b"{}")}
        )
        reply = {"metadata": {"name": "cltv-monthly-scoring-x7k2p", "namespace": "cltv"}, "spec": {}}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def recorder():
    handler = type("Handler", (Recorder,), {"calls": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", handler.calls
    finally:
        server.shutdown()
        server.server_close()


TINY = """
apiVersion: argoproj.io/v1alpha1
kind: WorkflowTemplate
metadata: {name: tiny}
spec:
  entrypoint: main
  onExit: exit-handler
  arguments:
    parameters:
      - {name: month}
      - {name: conf, value: /opt/cltv/conf/cluster.yaml}
      - {name: master, value: yarn}
      - {name: fail, value: "no"}
      - {name: webhook, value: ""}
  synchronization:
    mutexes: [{name: "tiny-{{workflow.parameters.month}}"}]
  templates:
    - name: main
      dag:
        tasks:
          - {name: d, template: mark, depends: b && c, arguments: {parameters: [{name: tag, value: d}]}}
          - {name: b, template: mark, depends: a, arguments: {parameters: [{name: tag, value: b}]}}
          - {name: a, template: mark, arguments: {parameters: [{name: tag, value: a}]}}
          - {name: c, template: mark, depends: a, arguments: {parameters: [{name: tag, value: c}]}}
          - {name: config, template: config, depends: d}
          - {name: wait, template: wait, depends: config}
    - name: mark
      inputs: {parameters: [{name: tag}]}
      retryStrategy: {limit: "1", backoff: {duration: "1s"}}
      activeDeadlineSeconds: "60"
      container:
        image: x
        command: [PYTHON, -c]
        args:
          - |
            import os, sys
            open(os.environ["LOG"], "a").write("{{inputs.parameters.tag}} {{workflow.parameters.month}}\\n")
            fail = "{{inputs.parameters.tag}}" == "c" and "{{workflow.parameters.fail}}" == "yes"
            sys.exit(3 if fail else 0)
        env: [{name: LOG, value: LOGFILE}]
        resources: {requests: {cpu: 100m, memory: 64Mi}, limits: {cpu: 100m, memory: 64Mi}}
    - name: config
      retryStrategy: {limit: "1", backoff: {duration: "1s"}}
      activeDeadlineSeconds: "60"
      container:
        image: x
        args: [spark-submit, --master, "{{workflow.parameters.master}}", --deploy-mode, client,
               /opt/cltv/jobs/config.py, show, --conf, "{{workflow.parameters.conf}}"]
        resources: {requests: {cpu: 100m, memory: 64Mi}, limits: {cpu: 100m, memory: 64Mi}}
    - name: wait
      retryStrategy: {limit: "1", backoff: {duration: "1s"}}
      activeDeadlineSeconds: "60"
      container:
        image: x
        args: [cltv, wait-for-inputs, --conf, "{{workflow.parameters.conf}}", --month,
               "{{workflow.parameters.month}}", --timeout, "0"]
        resources: {requests: {cpu: 100m, memory: 64Mi}, limits: {cpu: 100m, memory: 64Mi}}
    - name: exit-handler
      steps:
        - - name: notify
            template: notify
            when: "'{{workflow.status}}' != 'Succeeded' && '{{workflow.parameters.webhook}}' != ''"
    - name: notify
      retryStrategy: {limit: "1", backoff: {duration: "1s"}}
      activeDeadlineSeconds: "60"
      http:
        url: "{{workflow.parameters.webhook}}"
        method: POST
        body: '{"status": "{{workflow.status}}", "month": "{{workflow.parameters.month}}"}'
"""


@pytest.fixture
def tiny(tmp_path):
    """A tiny template in its own dir, a conf whose inputs hold month 2025-04 only, and the step log."""
    log_file = tmp_path / "steps.log"
    text = TINY.replace("PYTHON", sys.executable).replace("LOGFILE", str(log_file))
    (tmp_path / "argo").mkdir()
    path = tmp_path / "argo" / "tiny.yaml"
    path.write_text(text)
    paths = {}
    for table in ("features", "facts"):  # what wait-for-inputs looks at: partition dir, data file, marker
        part = tmp_path / "panel" / table / "report_month=2025-04-01"
        part.mkdir(parents=True)
        (part / "part-00000.parquet").write_bytes(b"PAR1")
        (part / "_SUCCESS").write_text("")
        paths[table] = str(part.parent)
    conf = tmp_path / "conf" / "env.yaml"
    conf.parent.mkdir()
    for name in ("base.yaml", "models.yaml"):
        (conf.parent / name).write_text((ROOT / "conf" / name).read_text())
    conf.write_text(yaml.safe_dump({"paths": paths}))
    return path, conf, log_file


def test_run_local_runs_the_dag_in_dependency_order(tiny):
    path, conf, log_file = tiny
    code = run_local(path, {"month": "2025-04", "conf": str(conf)}, in_process=True)
    assert code == 0
    order = [line.split()[0] for line in log_file.read_text().splitlines()]
    assert order == ["a", "b", "c", "d"]
    assert all(line.endswith("2025-04") for line in log_file.read_text().splitlines())


def test_run_local_stops_at_a_failure_and_runs_the_exit_handler(tiny, recorder):
    path, conf, log_file = tiny
    server, calls = recorder
    params = {"month": "2025-04", "conf": str(conf), "fail": "yes", "webhook": f"http://{server}/hook"}
    code = run_local(path, params, in_process=True)
    assert code == 3
    assert [line.split()[0] for line in log_file.read_text().splitlines()] == ["a", "b", "c"]
    assert [c["path"] for c in calls] == ["/hook"]
    assert calls[0]["body"] == {"status": "Failed", "month": "2025-04"}


def test_run_local_a_missing_month_fails_the_real_cli_step(tiny):
    """wait-for-inputs really runs: a month outside the panel is not ready, so the run fails there."""
    path, conf, log_file = tiny
    code = run_local(path, {"month": "2031-01", "conf": str(conf)}, in_process=True)
    assert code != 0
    assert len(log_file.read_text().splitlines()) == 4  # a b c d ran, then config, then wait failed


DEPENDS_DAG = """
apiVersion: argoproj.io/v1alpha1
kind: WorkflowTemplate
metadata: {name: depends}
spec:
  entrypoint: main
  arguments:
    parameters:
      - {name: a_code, value: "0"}
      - {name: skip, value: "no"}
  synchronization:
    mutexes: [{name: depends}]
  templates:
    - name: main
      dag:
        tasks:
TASKS
    - name: step
      inputs: {parameters: [{name: tag}, {name: code, value: "0"}]}
      retryStrategy: {limit: "1", backoff: {duration: "1s"}}
      activeDeadlineSeconds: "60"
      container:
        image: x
        command: [PYTHON, -c]
        args:
          - |
            import os, sys
            open(os.environ["LOG"], "a").write("{{inputs.parameters.tag}}\\n")
            sys.exit(int("{{inputs.parameters.code}}"))
        env: [{name: LOG, value: LOGFILE}]
        resources: {requests: {cpu: 100m, memory: 64Mi}, limits: {cpu: 100m, memory: 64Mi}}
"""
A_TASK = (
    "{name: a, template: step, arguments: {parameters: [{name: tag, value: a}, "
    '{name: code, value: "{{workflow.parameters.a_code}}"}]}}'
)


def _dag(tmp_path, *tasks: str) -> tuple[Path, Path]:
    log_file = tmp_path / "steps.log"
    text = DEPENDS_DAG.replace("TASKS", "\n".join(f"          - {t}" for t in tasks))
    path = tmp_path / "argo" / "depends.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text.replace("PYTHON", sys.executable).replace("LOGFILE", str(log_file)))
    return path, log_file


def _task(name: str, depends: str, when: str | None = None) -> str:
    extra = f', when: "{when}"' if when else ""
    return (f'{{name: {name}, template: step, depends: "{depends}"{extra}, '
            f"arguments: {{parameters: [{{name: tag, value: {name}}}]}}}}")  # fmt: skip


@pytest.mark.parametrize(
    "a_code, skip, ran, code",
    [
        ("0", "yes", ["a", "after-skipped"], 0),  # a bare name accepts a Skipped task
        ("0", "no", ["a", "skipped", "after-skipped"], 0),
        ("4", "no", ["a", "on-failure"], 4),  # after-skipped is omitted: its branch ends in a's failure
    ],
)
def test_run_local_follows_depends(tmp_path, a_code, skip, ran, code):
    path, log_file = _dag(
        tmp_path,
        A_TASK,
        _task("skipped", "a", when="'{{workflow.parameters.skip}}' != 'yes'"),
        _task("after-skipped", "skipped"),
        _task("on-failure", "a.Failed"),
    )
    assert run_local(path, {"a_code": a_code, "skip": skip}, local_defaults={}) == code
    assert log_file.read_text().split() == ran


def test_run_local_a_failure_handled_by_its_only_dependent_does_not_fail_the_dag(tmp_path):
    """As in Argo: a DAG fails when a leaf's branch ends in a failure, and on-failure ends a's branch."""
    path, log_file = _dag(tmp_path, A_TASK, _task("on-failure", "a.Failed"))
    assert run_local(path, {"a_code": "5"}, local_defaults={}) == 0
    assert log_file.read_text().split() == ["a", "on-failure"]


UP_TO_MONITOR = ["wait-for-inputs", "validate-inputs", "score", "validate-output", "monitor"]


@pytest.mark.parametrize(
    "codes, ran, code",
    [
        ({}, [*UP_TO_MONITOR, "report", "publish"], 0),
        ({"monitor": 1}, [*UP_TO_MONITOR, "report"], 1),  # publish omitted, the run fails with 1
        ({"report": 1}, [*UP_TO_MONITOR, "report"], 1),  # not reviewed: not published
        ({"validate-output": 2}, UP_TO_MONITOR[:4], 2),
    ],
    ids=["passed", "drift-failed", "report-failed", "scores-incomplete"],
)
def test_run_local_the_monthly_dag_reports_after_a_failed_monitor(
    monkeypatch, caplog, tmp_path, codes, ran, code
):
    """The manifest's own DAG and commands, each cltv step answered with the exit code given here; the
    summary lists every task with its phase and time, and where the review page is."""
    calls: list[list[str]] = []

    def cli(where: str, args: list[str]) -> int:
        calls.append(args)
        return codes.get(args[0], 0)

    monkeypatch.setattr(cltv_argo.local, "run_cli_in_process", cli)
    conf = tmp_path / "x.yaml"
    conf.write_text(yaml.safe_dump({"paths": {"monitoring": str(tmp_path / "mon")}}))
    params = {"month": "2026-04", "conf": str(conf)}
    with caplog.at_level("INFO", logger="cltv_argo"):
        got = run_local(ARGO_DIR / "monthly-scoring.yaml", params, local_defaults={}, in_process=True)
    assert got == code
    assert [c[0] for c in calls] == ran
    score = ["score", "--conf", str(conf), "--month", "2026-04", "--release", "champion", "--detail"]
    assert score in calls
    assert all("" not in c for c in calls)  # no empty flag: no webhook, no --webhook-url
    summary = [r.getMessage() for r in caplog.records if r.name == "cltv_argo.local"]
    summary = summary[next(i for i, m in enumerate(summary) if "wall time" in m and "exit code" in m) :]
    rows = {line.split()[0]: line.split()[1:] for line in summary[2:] if line.startswith("  ")}
    for task in ran:
        assert rows[task][0] in ("Succeeded", "Failed") and float(rows[task][-1]) >= 0, summary
    assert all(rows[t][0] == "Omitted" for t in {"publish", "report"} - set(ran)), summary
    page = f"review page (report): {tmp_path / 'mon' / 'reports' / 'cltv-report-2026-04.html'}"
    if "report" in ran:
        assert any(line.startswith(page) for line in summary), summary


def test_review_page_is_where_the_report_job_writes_it(tmp_path):
    command = ["spark-submit", "--master", "yarn", "/opt/cltv/jobs/report.py", "--conf", "c.yaml",
               "--month", "2026-04"]  # fmt: skip
    assert report_flags(command) == ("c.yaml", "2026-04")
    assert report_flags(["cltv", "report", "--conf", "c.yaml", "--month", "2026-04"]) == ("c.yaml", "2026-04")
    assert report_flags(["cltv", "monitor", "--conf", "c.yaml", "--month", "2026-04"]) is None
    conf = tmp_path / "c.yaml"
    conf.write_text(yaml.safe_dump({"paths": {"monitoring": "hdfs:///dwh/cltv/monitoring"}}))
    page = review_page(str(conf), "2026-04", {})
    assert page == "hdfs:///dwh/cltv/monitoring/reports/cltv-report-2026-04.html"
    assert "not resolved" in review_page(str(tmp_path / "missing.yaml"), "2026-04", {})


SPARK_SUBMIT_DAG = """
apiVersion: argoproj.io/v1alpha1
kind: WorkflowTemplate
metadata: {name: spark-submit}
spec:
  entrypoint: main
  arguments:
    parameters:
      - {name: conf, value: /opt/cltv/conf/cluster.yaml}
      - {name: master, value: yarn}
      - {name: out}
  synchronization:
    mutexes: [{name: spark-submit}]
  templates:
    - name: main
      dag:
        tasks:
          - {name: generate, template: generate}
          - {name: wait, template: wait, depends: generate}
    - name: generate
      retryStrategy: {limit: "1", backoff: {duration: "1s"}}
      activeDeadlineSeconds: "600"
      container:
        image: x
        args: [spark-submit, --master, "{{workflow.parameters.master}}", --deploy-mode, client,
               --py-files, /opt/cltv/spark_app.zip, /opt/cltv/jobs/generate.py,
               --out, "{{workflow.parameters.out}}", --subscribers, "40", --months, "2", --start, "2025-03"]
        resources: {requests: {cpu: 100m, memory: 64Mi}, limits: {cpu: 100m, memory: 64Mi}}
    - name: wait
      retryStrategy: {limit: "1", backoff: {duration: "1s"}}
      activeDeadlineSeconds: "60"
      container:
        image: x
        args: [cltv, wait-for-inputs, --conf, "{{workflow.parameters.conf}}", --month, "2025-04",
               --timeout, "0"]
        resources: {requests: {cpu: 100m, memory: 64Mi}, limits: {cpu: 100m, memory: 64Mi}}
"""


@pytest.mark.slow
def test_run_local_runs_the_manifests_spark_submit_by_default(tmp_path, capfd, caplog):
    """No in-process shortcut: the real spark-submit on a local master, the package imported from the zip
    of an image root built for the run (and removed after it), then a cltv step on what it wrote."""
    path = tmp_path / "argo" / "spark-submit.yaml"
    path.parent.mkdir()
    path.write_text(SPARK_SUBMIT_DAG)
    out = tmp_path / "panel"
    conf = tmp_path / "conf.yaml"
    paths = {"features": str(out / "features"), "facts": str(out / "facts")}
    conf.write_text(yaml.safe_dump({"paths": paths, "spark": {"driver_memory": "1g"}}))
    params = {"conf": str(conf), "master": "local[1]", "out": str(out)}
    env = {k: v for k, v in os.environ.items() if k != "SPARK_DRIVER_MEMORY"}
    with caplog.at_level("INFO", logger="cltv_argo"):
        assert run_local(path, params, environ=env) == 0
    logged = "".join(capfd.readouterr())
    zipped = re.search(r"cltv \S+ generate \(spark_app from (\S+)/spark_app\.zip/spark_app\)", logged)
    assert zipped, logged[-3000:]
    assert not Path(zipped.group(1)).exists(), "the image root built for the run is removed after it"
    assert (out / "features" / "report_month=2025-04-01").is_dir()
    messages = [r.getMessage() for r in caplog.records]
    assert any("spark-submit --master local[1]: driver memory 1g" in m for m in messages)
    assert any(re.search(r"generate: exit code 0 after [\d.]+ s wall time", m) for m in messages)
    assert any(re.match(r"\s+wait\s+Succeeded\s+0\s+[\d.]+$", m) for m in messages), messages


def test_run_local_parameter_errors(tiny):
    path, _, _ = tiny
    with pytest.raises(ArgoError, match="parameter 'month' has no default"):
        run_local(path, {})
    with pytest.raises(ArgoError, match=r"unknown parameters \['mnth'\]"):
        run_local(path, {"month": "2025-04", "mnth": "x"})
    broken = path.read_text().replace("template: config, depends: d", "template: config, depends: e")
    path.write_text(broken)
    with pytest.raises(ArgoError, match="lint failed"):
        run_local(path, {"month": "2025-04"})


# ------------------------------------------------------------------ submit
def test_submit_posts_the_template_and_parameters_with_the_token(recorder):
    server, calls = recorder
    env = {"ARGO_SERVER": server, "ARGO_SECURE": "false", "ARGO_TOKEN": "s3cr3t", "ARGO_NAMESPACE": "cltv"}
    name = submit("cltv-monthly-scoring", {"month": "2026-04", "release": "challenger"}, None, environ=env)
    assert name == "cltv-monthly-scoring-x7k2p"
    (call,) = calls
    assert call["path"] == "/api/v1/workflows/cltv/submit"
    assert call["headers"]["Authorization"] == "Bearer s3cr3t"
    assert call["body"]["resourceKind"] == "WorkflowTemplate"
    assert call["body"]["resourceName"] == "cltv-monthly-scoring"
    assert call["body"]["submitOptions"]["parameters"] == ["month=2026-04", "release=challenger"]


def test_submit_from_a_manifest_checks_its_parameters(recorder):
    server, calls = recorder
    env = {"ARGO_SERVER": f"http://{server}", "ARGO_TOKEN": "Bearer t"}
    submit(str(ARGO_DIR / "release.yaml"), {"target_end": "2026-03"}, "ml", environ=env)
    assert calls[-1]["path"] == "/api/v1/workflows/ml/submit"
    assert calls[-1]["body"]["resourceName"] == "cltv-release"
    assert calls[-1]["headers"]["Authorization"] == "Bearer t"
    with pytest.raises(ArgoError, match=r"missing parameters \['month'\]"):
        submit(str(ARGO_DIR / "monthly-scoring.yaml"), {}, None, environ=env)
    with pytest.raises(ArgoError, match="ARGO_SERVER"):
        submit("cltv-release", {}, None, environ={})
    assert len(calls) == 1


# ------------------------------------------------------------------ the whole monthly DAG, locally
def _pipeline_ready() -> str | None:
    from spark_app.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    missing = [c for c in ("validate-inputs", "validate-output", "publish") if c not in commands]
    if missing:
        return f"cli lacks {missing} (the integrator wires spark_app.monthly into cli.py)"
    for module in ("spark_app.pipeline", "spark_app.training", "spark_app.registry", "spark_app.scoring"):
        try:
            __import__(module)
        except ImportError as exc:
            return f"{module} not available yet: {exc}"
    return None


@pytest.mark.slow
def test_monthly_dag_runs_locally_end_to_end(spark, panel_dir, tmp_path):
    """A small champion, then argo/monthly-scoring.yaml run locally for the panel's last month: scores
    with detail arrays, monitor, the published marker and the review page.

    The cltv steps run in this process (one JVM); the DAG, its parameters and commands are the manifest's.
    """
    reason = _pipeline_ready()
    if reason:
        pytest.skip(reason)
    from spark_app.config import load_settings
    from spark_app.dataset import build_dataset
    from spark_app.registry import promote
    from spark_app.training import train_release

    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    for name in ("base.yaml", "models.yaml"):
        (conf_dir / name).write_text((ROOT / "conf" / name).read_text())
    fast = {"iterations": 30, "depth": 4}
    env = {
        "paths": {
            "features": str(panel_dir / "features"),
            "facts": str(panel_dir / "facts"),
            **{k: str(tmp_path / k) for k in ("datasets", "scores", "monitoring")},
        },
        "mlflow": {
            "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "artifact_location": str(tmp_path / "art"),
        },
        "spark": {"master": "local[2]", "shuffle_partitions": 4},
        "dataset": {"sample_rate": 0.5},
        "monitoring": {"reference_rows": 2000, "backtest_max_horizon": 3, "report_shap_rows": 200,
                       "survival_warn": {1: 0.5}, "survival_fail": {1: 0.9}},
        "promotion": {"max_abs_bias": 10.0},  # a 3,000-subscriber panel: the gate would judge noise
        "models": {
            "profiles": {
                m: {"params": fast}
                for m in yaml.safe_load((conf_dir / "models.yaml").read_text())["models"]["enabled"]
            }
        },
    }
    conf = conf_dir / "e2e.yaml"
    conf.write_text(yaml.safe_dump(env))
    settings = load_settings(conf, environ={})
    dataset = build_dataset(spark, settings, target_end=dt.date(2025, 3, 1))
    train_release(spark, settings, dataset_id=dataset.dataset_id)
    assert promote(settings, version=None, auto=True).promoted

    code = run_local(
        ARGO_DIR / "monthly-scoring.yaml", {"month": "2025-04", "conf": str(conf)}, in_process=True
    )
    assert code == 0
    marker = tmp_path / "scores" / "score_month=2025-04-01" / "_PUBLISHED"
    assert json.loads(marker.read_text())["month"] == "2025-04"
    scores = spark.read.parquet(str(marker.parent))  # score --detail: the arrays later backtests read
    assert {f"{m}_h" for m in settings.models.enabled} <= set(scores.columns)
    report = tmp_path / "monitoring" / "reports" / "cltv-report-2025-04.html"
    assert "2025-04" in report.read_text()


def test_cltv_argo_lint_command(tmp_path):
    """`cltv-argo lint`: 0 on the manifests as they are, 1 (a verdict) naming the problem on a broken copy,
    2 on a folder without manifests."""
    from cltv_argo.cli import main

    schemas = [str(SCHEMA_DIR / f"argo-{v}.schema.json") for v in SCHEMA_VERSIONS]
    present = [s for s in schemas if Path(s).exists()]
    flags = [x for s in present for x in ("--schema", s)]
    assert main(["lint", str(ARGO_DIR), *flags]) == 0
    broken = tmp_path / "argo"
    shutil.copytree(ARGO_DIR, broken)
    path = broken / "monthly-scoring.yaml"
    path.write_text(path.read_text().replace("entrypoint: monthly", "entrypoint: montly"))
    assert main(["lint", str(broken), *flags]) == 1
    assert main(["lint", str(tmp_path / "empty")]) == 2
