"""Run an Argo template's DAG on this machine, as the controller would, with the manifest's own commands.

Each spark-submit step runs as written — the real spark-submit of the installed pyspark, the template's
`--master` (run-local's default: `local[*]`), `--py-files /opt/cltv/spark_app.zip`, `/opt/cltv/jobs/x.py`
— with the image's /opt/cltv mapped to a local directory: one given (`image_root`) or one built for the
run in a temporary directory by docker/image_root.py (the Dockerfile's own steps). `cltv ARGS` runs as
`python -m spark_app ARGS` (the console script's module). `in_process` is the fast mode for tests: every
cltv step, spark-submit ones included, runs as `cltv x ARGS` inside this process. A task runs when its
`depends` expression holds, is Omitted otherwise, and the DAG fails as Argo's does: when a leaf task's
branch ends in a failure. Every step's wall time is logged, and a summary at the end lists them with
where the review page (the report step's HTML) is.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cltv_argo.manifests import (
    TAG,
    ArgoError,
    Depends,
    dag_cycle,
    depends_on,
    doc_label,
    lint,
    load_documents,
    load_manifests,
)
from spark_app.errors import EXIT_USER_ERROR

log = logging.getLogger(__name__)

IMAGE_ROOT = "/opt/cltv"  # where docker/Dockerfile puts spark_app.zip, jobs/ and conf/
LOCAL_MASTER = "local[*]"  # run-local's spark-submit master unless told (-p master=… / --master)
# run-local: the embedded config instead of the image's, and Spark on this machine instead of YARN
LOCAL_DEFAULTS = {"conf": "conf/local.yaml", "master": LOCAL_MASTER}
SOURCE_TREE = Path(__file__).resolve().parent.parent  # the repository, when run from a checkout


_TO_JSON = re.compile(r"=\s*(?:sprig\.)?toJson\(\s*([A-Za-z0-9_.]+)\s*\)\s*")


def _substitute(text: str, values: Mapping[str, str], where: str) -> str:
    def repl(match: re.Match) -> str:
        tag = match.group(1)
        if tag.startswith("="):
            # the one expression the manifests use: a value JSON-encoded into a JSON body
            m = _TO_JSON.fullmatch(tag)
            if m is None:
                raise ArgoError(f"{where}: expression tag {{{{{tag}}}}} cannot be evaluated by run-local")
            if m.group(1) not in values:
                raise ArgoError(f"{where}: {{{{{m.group(1)}}}}} has no value in a local run")
            return json.dumps(values[m.group(1)])
        key = tag.strip()
        if key not in values:
            raise ArgoError(f"{where}: {{{{{key}}}}} has no value in a local run")
        return values[key]

    return TAG.sub(repl, text)


def _substitute_all(node: Any, values: Mapping[str, str], where: str) -> Any:
    if isinstance(node, str):
        return _substitute(node, values, where)
    if isinstance(node, Mapping):
        return {k: _substitute_all(v, values, where) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute_all(v, values, where) for v in node]
    return node


def evaluate_when(expr: str) -> bool:
    """The `when` conditions these manifests use, after substitution: quoted == / != joined by && / ||."""
    clause = re.compile(r"^\s*'([^']*)'\s*(==|!=)\s*'([^']*)'\s*$")
    result = False
    for alternative in expr.split("||"):
        ok = True
        for part in alternative.split("&&"):
            m = clause.match(part.strip().strip("()"))
            if not m:
                raise ArgoError(f"when {expr!r}: run-local evaluates only 'a' == 'b' / 'a' != 'b' clauses")
            ok = ok and ((m.group(1) == m.group(3)) == (m.group(2) == "=="))
        result = result or ok
    return result


def spark_submit_path() -> str:
    """spark-submit of $SPARK_HOME, else of the installed pyspark (which ships Spark's bin/)."""
    home = os.environ.get("SPARK_HOME")
    if not home:
        import pyspark

        home = str(Path(pyspark.__file__).resolve().parent)
    return str(Path(home) / "bin" / "spark-submit")


COMMAND_GROUPS = ("campaign",)  # jobs/campaign_design.py runs `cltv campaign design`


def job_command(stem: str) -> list[str]:
    """The `cltv` subcommand a jobs/<stem>.py runs: build_dataset → build-dataset, campaign_design →
    campaign design."""
    group, _, verb = stem.partition("_")
    if group in COMMAND_GROUPS and verb:
        return [group, verb.replace("_", "-")]
    return [stem.replace("_", "-")]


def local_command(args: list[str], python: str = sys.executable, image_root: Path | None = None) -> list[str]:
    """The command a step runs on this machine.

    With `image_root`, spark-submit steps run as written — the real spark-submit against the manifest's
    master, the zip on --py-files — with the image's /opt/cltv paths mapped to `image_root`
    (docker/image_root.py). Without it (the in-process mode), spark-submit becomes `python -m spark_app`
    with the job's subcommand. `cltv` is `python -m spark_app` either way.
    """
    if not args:
        raise ArgoError("a step has no command")
    if Path(args[0]).name == "spark-submit" and image_root is not None:
        root = str(Path(image_root).resolve())
        mapped = [root + a[len(IMAGE_ROOT) :] if a.startswith(IMAGE_ROOT + "/") else a for a in args[1:]]
        return [spark_submit_path(), *mapped]
    if Path(args[0]).name == "spark-submit":
        script = next((i for i, a in enumerate(args) if a.endswith(".py")), None)
        if script is None:
            raise ArgoError(f"spark-submit without a jobs/*.py script: {args}")
        return [python, "-m", "spark_app", *job_command(Path(args[script]).stem), *args[script + 1 :]]
    if Path(args[0]).name == "cltv":
        return [python, "-m", "spark_app", *args[1:]]
    return list(args)


def empty_argument(argv: list[str]) -> str | None:
    """Why a command must not run when one of its arguments is empty (Argo would pass `--flag ''`)."""
    for i, arg in enumerate(argv):
        if arg == "":
            after = f" after {argv[i - 1]}" if i else ""
            return (
                f"argument {i}{after} is empty ({' '.join(argv)!r}); a manifest drops a flag whose value "
                "is empty (e.g. a step chosen by `when`) instead of passing it"
            )
    return None


@contextlib.contextmanager
def image_root_for_run(given: Path | None) -> Iterator[Path]:
    """The directory standing in for the image's /opt/cltv: `given`, else one built for this run.

    Built by docker/image_root.py of the source tree (the Dockerfile's steps: wheel → install → zip), in a
    temporary directory removed when the run ends, so the spark-submit steps import the package from the
    zip the image ships, on the driver and on the executors.
    """
    if given is not None:
        yield Path(given)
        return
    builder = SOURCE_TREE / "docker" / "image_root.py"
    if not builder.is_file():
        raise ArgoError(
            f"{builder} not found: outside a checkout, build the image's /opt/cltv elsewhere "
            "(python docker/image_root.py DIR) and pass --image-root DIR"
        )
    spec = importlib.util.spec_from_file_location("cltv_image_root", builder)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with tempfile.TemporaryDirectory(prefix="cltv-argo-image-") as tmp:
        started = time.monotonic()
        try:
            root = module.build_image_root(Path(tmp) / "opt-cltv")
        except subprocess.CalledProcessError as exc:
            raise ArgoError(f"building the image root with {builder} failed: {exc}") from None
        log.info(
            "/opt/cltv of the image built in %s (%.1f s, %s: spark_app.zip from the project's wheel, jobs/, "
            "conf/); removed after the run", root, time.monotonic() - started, builder.name,
        )  # fmt: skip
        yield root


@dataclass
class StepRecord:
    """One step or task of a local run, for the summary: how it ended and how long it took."""

    name: str
    depth: int  # 0: a task of the entrypoint's DAG (or the exit handler); 1: a step inside it; …
    phase: str = "Running"
    code: int | None = None
    seconds: float | None = None
    command: list[str] = field(default_factory=list)  # the manifest's command after substitution


def topological_order(tasks: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Tasks in dependency order; among ready tasks, the order they are declared in."""
    deps = {t["name"]: set(depends_on(t)) for t in tasks}
    cycle = dag_cycle({k: list(v) for k, v in deps.items()})
    if cycle:
        raise ArgoError(f"dependency cycle {' → '.join(cycle)}")
    done: set[str] = set()
    order: list[Mapping[str, Any]] = []
    while len(order) < len(tasks):
        ready = next(t for t in tasks if t["name"] not in done and deps[t["name"]] <= done)
        order.append(ready)
        done.add(ready["name"])
    return order


class _LocalRun:
    """State of one local run: parameters, statuses, and how to run a template."""

    def __init__(
        self,
        label: str,
        spec: Mapping[str, Any],
        params: dict[str, str],
        env: Mapping[str, str],
        in_process: bool = False,
        image_root: Path | None = None,
        stage_image_root: Callable[[], Path] | None = None,
    ):
        self.label = label
        self.in_process = in_process
        self.image_root = image_root
        self._stage_image_root = stage_image_root  # builds image_root at the first spark-submit step
        self.spec = spec
        self.templates = {t["name"]: t for t in spec.get("templates") or []}
        self.params = params
        self.env = dict(env)
        self.status = "Running"
        self.failures: list[dict[str, str]] = []
        self.records: list[StepRecord] = []
        self._running: list[StepRecord] = []  # the calls being run, outermost first

    def _record(self, name: str, phase: str) -> StepRecord:
        record = StepRecord(name, depth=len(self._running), phase=phase)
        self.records.append(record)
        return record

    def globals(self) -> dict[str, str]:
        values = {f"workflow.parameters.{k}": v for k, v in self.params.items()}
        values.update(
            {
                "workflow.name": f"local-{self.label.split('/')[-1]}",
                "workflow.namespace": "local",
                "workflow.status": self.status,
                # as Argo's controller renders it: a JSON string literal holding the JSON array
                "workflow.failures": json.dumps(
                    json.dumps([{"displayName": f["step"], "message": f["message"]} for f in self.failures])
                ),
            }
        )  # fmt: skip
        return values

    def run_template(self, name: str, inputs: Mapping[str, str]) -> int:
        template = self.templates[name]
        declared = (template.get("inputs") or {}).get("parameters") or []
        values = self.globals()
        for p in declared:
            pname = p["name"]
            value = inputs.get(pname, p.get("value", p.get("default")))
            if value is None:
                raise ArgoError(f"{self.label}: template {name}: input {pname!r} has no value")
            values[f"inputs.parameters.{pname}"] = str(value)
        if "dag" in template:
            return self._run_dag(name, template["dag"].get("tasks") or [], values)
        if "steps" in template:
            for group in template["steps"] or []:
                code = self._run_calls(name, group or [], values)
                if code:
                    return code
            return 0
        where = f"{self.label}: template {name}"
        if "container" in template or "script" in template:
            return self._run_container(where, template, values)
        if "http" in template:
            return self._run_http(where, template["http"], values)
        raise ArgoError(f"{where}: run-local runs container, script, http, dag and steps templates only")

    def _run_calls(self, parent: str, calls: list[Mapping[str, Any]], values: Mapping[str, str]) -> int:
        """One group of steps: the first failing step fails the group."""
        for call in calls:
            code = self._run_call(parent, call, values)
            if code:
                return code
        return 0

    def _run_call(self, parent: str, call: Mapping[str, Any], values: Mapping[str, str]) -> int | None:
        """Run one step or task; None when its `when` is false (Skipped), else its exit code."""
        where = f"{self.label}: {parent}/{call['name']}"
        if "when" in call and not evaluate_when(_substitute(str(call["when"]), values, where)):
            log.info("%s: skipped (when %s)", where, call["when"])
            self._record(call["name"], "Skipped")
            return None
        args = {
            p["name"]: _substitute(str(p.get("value", "")), values, where)
            for p in (call.get("arguments") or {}).get("parameters") or []
        }
        record = self._record(call["name"], "Running")
        self._running.append(record)
        started = time.monotonic()
        try:
            code = self.run_template(call["template"], args)
        finally:
            self._running.pop()
        record.seconds, record.code = time.monotonic() - started, code
        record.phase = "Failed" if code else "Succeeded"
        if code:
            self.failures.append({"step": call["name"], "message": f"exit code {code}"})
        return code

    def _run_dag(self, parent: str, tasks: list[Mapping[str, Any]], values: Mapping[str, str]) -> int:
        """A DAG as Argo runs it, one task at a time: each task's `depends` is evaluated against the phases
        of the tasks it names (false: the task is Omitted), and the DAG fails when a leaf task's branch
        ends in a failure (an Omitted or Skipped task carries its parents' failure on). Returns 0 or the
        exit code of the earliest failure that reached a leaf.
        """
        phases: dict[str, str] = {}
        # the failure a task's branch carries, as (run order, exit code); None: the branch has not failed
        branch: dict[str, tuple[int, int] | None] = {}
        depended_on: set[str] = set()
        for order, task in enumerate(topological_order(tasks)):
            name = task["name"]
            depends = Depends.of_task(task)
            parents = depends.tasks if depends else []
            depended_on.update(parents)
            code: int | None = None
            if depends is not None and not depends(phases):
                phases[name] = "Omitted"
                self._record(name, "Omitted")
                seen = ", ".join(f"{t} {phases[t]}" for t in parents)
                log.info("%s: %s/%s: omitted (depends %s; %s)", self.label, parent, name, depends.text, seen)
            else:
                code = self._run_call(parent, task, values)
                phases[name] = "Skipped" if code is None else "Failed" if code else "Succeeded"
            if phases[name] in ("Failed", "Succeeded"):
                branch[name] = (order, code) if code else None
            else:  # Omitted or Skipped: its parents' branch phase, a failure preferred
                carried = [branch[t] for t in parents if branch[t] is not None]
                branch[name] = min(carried) if carried else None
        log.info("%s: %s: %s", self.label, parent, ", ".join(f"{k} {v}" for k, v in phases.items()))
        failed = [branch[t["name"]] for t in tasks if t["name"] not in depended_on and branch[t["name"]]]
        return min(failed)[1] if failed else 0

    def _run_container(self, where: str, template: Mapping[str, Any], values: Mapping[str, str]) -> int:
        if "script" in template:
            spec = template["script"]
            argv = [*(spec.get("command") or ["sh"]), "-c", _substitute(spec["source"], values, where)]
        else:
            spec = template["container"]
            manifest = [_substitute(str(a), values, where) for a in (spec.get("command") or [])]
            manifest += [_substitute(str(a), values, where) for a in (spec.get("args") or [])]
            if self._running:
                self._running[-1].command = manifest
            problem = empty_argument(manifest)
            if problem:
                log.error("%s: not run: %s", where, problem)
                return EXIT_USER_ERROR
            needs_image = Path(manifest[0]).name == "spark-submit" if manifest else False
            if needs_image and self.image_root is None and self._stage_image_root:
                self.image_root = self._stage_image_root()
            argv = local_command(manifest, image_root=self.image_root)
        env = dict(self.env)
        for var in spec.get("env") or []:
            if "value" in var:
                env[var["name"]] = _substitute(str(var["value"]), values, where)
            else:
                log.debug("%s: env %s comes from the cluster (%s); not set locally", where, var["name"], var)
        log.info("%s: %s", where, " ".join(argv))
        started = time.monotonic()
        if self.in_process and argv[1:3] == ["-m", "spark_app"]:
            code = run_cli_in_process(where, argv[3:])
        else:
            code = subprocess.run(argv, env=env, check=False).returncode
        log.info("%s: exit code %d after %.1f s wall time", where, code, time.monotonic() - started)
        return code

    def _run_http(self, where: str, http: Mapping[str, Any], values: Mapping[str, str]) -> int:
        url = _substitute(str(http.get("url", "")), values, where)
        if not url:
            log.info("%s: no URL, nothing to send", where)
            return 0
        headers = {
            h["name"]: _substitute(str(h["value"]), values, where)
            for h in http.get("headers") or []
            if "value" in h
        }
        body = _substitute(str(http.get("body", "")), values, where).encode("utf-8")
        request = urllib.request.Request(
            url, data=body or None, headers=headers, method=http.get("method", "GET")
        )
        try:
            with urllib.request.urlopen(request, timeout=float(http.get("timeoutSeconds", 30))) as response:
                status = int(response.status)
        except OSError as exc:
            log.error("%s: %s %s failed: %s", where, request.get_method(), url, exc)
            return 1
        log.info("%s: %s %s → HTTP %d", where, request.get_method(), url, status)
        return 0 if 200 <= status < 300 else 1

    def run(self) -> int:
        code = self.run_template(self.spec["entrypoint"], {})
        self.status = "Succeeded" if code == 0 else "Failed"
        on_exit = self.spec.get("onExit")
        if on_exit:
            log.info("%s: exit handler %s (workflow status %s)", self.label, on_exit, self.status)
            exit_code = self._run_call("onExit", {"name": on_exit, "template": on_exit}, {})
            if exit_code and not code:
                code = exit_code
        return code

    def summary(self, code: int, seconds: float) -> list[str]:
        """The lines a person reads at the end: every step's phase and wall time, and the review page."""
        width = max([len("  " * r.depth + r.name) for r in self.records] + [4])
        lines = [f"{self.label}: {self.status} (exit code {code}) in {seconds:.1f} s wall time"]
        lines.append(f"  {'step':<{width}}  {'phase':<9}  {'exit':>4}  {'seconds':>8}")
        for r in self.records:
            exit_code = "" if r.code is None else str(r.code)
            took = "" if r.seconds is None else f"{r.seconds:.1f}"
            name = "  " * r.depth + r.name
            lines.append(f"  {name:<{width}}  {r.phase:<9}  {exit_code:>4}  {took:>8}".rstrip())
        lines += self.review_pages()
        return lines

    def review_pages(self) -> list[str]:
        """Where the report steps wrote the review page, from their --conf and --month as run."""
        lines = []
        for record in self.records:
            flags = report_flags(record.command)
            if flags is None:
                continue
            conf, month = flags
            if self.image_root is not None and conf.startswith(IMAGE_ROOT + "/"):
                conf = str(Path(self.image_root).resolve()) + conf[len(IMAGE_ROOT) :]
            page = review_page(conf, month, self.env)
            state = "" if record.phase == "Succeeded" else f" — not built: {record.name} {record.phase}"
            if record.phase == "Succeeded" and "://" not in page and not Path(page).is_file():
                state = " — not found"
            lines.append(f"review page ({record.name}): {page}{state}")
        return lines


def report_flags(command: list[str]) -> tuple[str, str] | None:
    """(--conf, --month) of a command that builds the review page (`jobs/report.py` or `cltv report`)."""
    is_report = any(Path(a).name == "report.py" for a in command) or command[:2] == ["cltv", "report"]
    if not is_report or "--conf" not in command[:-1] or "--month" not in command[:-1]:
        return None
    return command[command.index("--conf") + 1], command[command.index("--month") + 1]


def review_page(conf: str, month: str, env: Mapping[str, str]) -> str:
    """The review page's path for a conf file and a month, as the report job computes it."""
    from spark_app.config import load_settings
    from spark_app.layout import report_file
    from spark_app.months import parse_month

    try:
        settings = load_settings(Path(conf), environ=dict(env))
        return report_file(settings.paths, parse_month(month))
    except Exception as exc:  # the summary still prints; the report step's own log has the details
        return f"{{paths.monitoring}}/reports/cltv-report-{month}.html (not resolved from {conf}: {exc})"


def run_cli_in_process(where: str, args: list[str]) -> int:
    """`cltv ARGS` in this process, sharing its SparkSession: one JVM for the whole local run."""
    from spark_app.cli import main
    from spark_app.errors import EXIT_CRASH, EXIT_USER_ERROR

    try:
        return int(main(args) or 0)
    except SystemExit as exc:  # argparse
        return exc.code if isinstance(exc.code, int) else EXIT_USER_ERROR
    except Exception:
        log.exception("%s: failed", where)
        return EXIT_CRASH


def resolve_parameters(
    label: str, spec: Mapping[str, Any], given: Mapping[str, str], local_defaults: Mapping[str, str]
) -> dict[str, str]:
    """Workflow parameters for a run: given values ← local defaults ← the manifest's defaults."""
    declared = {p["name"]: p for p in (spec.get("arguments") or {}).get("parameters") or []}
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise ArgoError(f"{label}: unknown parameters {unknown} (declared: {sorted(declared)})")
    values: dict[str, str] = {}
    for name, p in declared.items():
        if name in given:
            values[name] = given[name]
        elif name in local_defaults:
            values[name] = local_defaults[name]
        elif "value" in p or "default" in p:
            values[name] = str(p.get("value", p.get("default")))
        else:
            raise ArgoError(f"{label}: parameter {name!r} has no default; pass -p {name}=…")
        if "enum" in p and values[name] not in p["enum"]:
            raise ArgoError(f"{label}: parameter {name}={values[name]!r} is not one of {p['enum']}")
    return values


def run_local(
    template: Path,
    params: dict[str, str],
    *,
    local_defaults: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
    in_process: bool = False,
    image_root: Path | None = None,
) -> int:
    """Run a WorkflowTemplate's DAG here, steps in dependency order; the exit code of the first failure.

    Each step is a subprocess, like a pod, running the manifest's command: spark-submit steps through the
    real spark-submit, the template's `master` parameter (`local[*]` unless given) and the image's
    /opt/cltv mapped to `image_root` (built for the run when not given; see `image_root_for_run`), so a
    standalone master (`-p master=spark://…`) or YARN works the same. `in_process` is for tests that need
    speed: the cltv and spark-submit steps run as `cltv x ARGS` in this process (one JVM for all Spark
    steps; the steps' env values are then not applied).
    """
    template = Path(template)
    docs = [d for d in load_documents(template) if d["kind"] != "CronWorkflow"]
    if len(docs) != 1:
        raise ArgoError(f"{template}: expected one WorkflowTemplate or Workflow, found {len(docs)}")
    doc = docs[0]
    known = load_manifests(template.parent)
    problems = lint(doc, known=known)
    if problems:
        raise ArgoError(f"{template}: lint failed:\n  " + "\n  ".join(problems))
    label = doc_label(doc)
    if local_defaults is None:
        from spark_app.config import default_conf_file

        local_defaults = {**LOCAL_DEFAULTS, "conf": str(default_conf_file())}
    values = resolve_parameters(label, doc["spec"], params, local_defaults)
    mode = "in process" if in_process else "spark-submit as in the manifest"
    log.info("%s: local run (%s) with %s", label, mode, values)
    env = dict(os.environ if environ is None else environ)
    started = time.monotonic()
    with contextlib.ExitStack() as stack:

        def stage() -> Path:  # at the first spark-submit step; removed when the run ends
            return stack.enter_context(image_root_for_run(None))

        if not in_process:
            env = spark_submit_env(env, values)
        staging = stage if not in_process and image_root is None else None
        run = _LocalRun(label, doc["spec"], values, env, in_process, image_root, staging)
        code = run.run()
    for line in run.summary(code, time.monotonic() - started):
        log.info("%s", line)
    return code


def spark_submit_env(env: Mapping[str, str], values: Mapping[str, str]) -> dict[str, str]:
    """The steps' environment for spark-submit here: this interpreter (it has the dependencies) for the
    driver and Python workers unless set, and on a local master the conf's driver memory — under
    spark-submit the JVM starts before the job reads its config, and local executors live in it."""
    env = dict(env)
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    master, conf = values.get("master", ""), values.get("conf")
    if master.startswith("local") and conf and "SPARK_DRIVER_MEMORY" not in env:
        from spark_app.config import load_settings

        with contextlib.suppress(Exception):  # a bad conf fails its first step, with the job's own message
            env["SPARK_DRIVER_MEMORY"] = load_settings(Path(conf), environ=env).spark.driver_memory
            log.info("spark-submit --master %s: driver memory %s (spark.driver_memory of %s)", master,
                     env["SPARK_DRIVER_MEMORY"], conf)  # fmt: skip
    return env
