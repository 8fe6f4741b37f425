"""Run an Argo template's DAG on this machine, as the controller would, with the manifest's own commands.

`spark-submit … jobs/x.py ARGS` becomes `python -m spark_app x ARGS`, `cltv ARGS` becomes
`python -m spark_app ARGS` (or, with `image_root`, the real spark-submit against the manifest's master
with the image's /opt/cltv mapped to a local directory). A task runs when its `depends` expression holds,
is Omitted otherwise, and the DAG fails as Argo's does: when a leaf task's branch ends in a failure.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
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

log = logging.getLogger(__name__)

IMAGE_ROOT = "/opt/cltv"  # where docker/Dockerfile puts spark_app.zip, jobs/ and conf/
LOCAL_DEFAULTS = {"conf": "conf/local.yaml"}  # run-local: the embedded config instead of the image's


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

    Without `image_root`, spark-submit and cltv become `python -m spark_app` (one machine, no zip). With
    it, spark-submit steps run as written — the real spark-submit against the manifest's master, the zip
    on --py-files — with the image's /opt/cltv paths mapped to `image_root` (docker/image_root.py).
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
    ):
        self.label = label
        self.in_process = in_process
        self.image_root = image_root
        self.spec = spec
        self.templates = {t["name"]: t for t in spec.get("templates") or []}
        self.params = params
        self.env = dict(env)
        self.status = "Running"
        self.failures: list[dict[str, str]] = []

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
            return None
        args = {
            p["name"]: _substitute(str(p.get("value", "")), values, where)
            for p in (call.get("arguments") or {}).get("parameters") or []
        }
        code = self.run_template(call["template"], args)
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
            argv = [*(spec.get("command") or []), *(spec.get("args") or [])]
            argv = local_command(
                [_substitute(str(a), values, where) for a in argv], image_root=self.image_root
            )
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
        log.info("%s: exit code %d after %.1f s", where, code, time.monotonic() - started)
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
            exit_code = self.run_template(on_exit, {})
            if exit_code and not code:
                code = exit_code
        return code


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

    Each step is a subprocess, like a pod; `in_process` runs the `cltv` steps in this process instead
    (one JVM for all Spark steps; the steps' env values are then not applied). With `image_root`, the
    spark-submit steps are submitted for real (see `local_command`), e.g. to a standalone cluster given
    as `-p master=spark://…`.
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
    log.info("%s: local run with %s", label, values)
    env = os.environ if environ is None else environ
    run = _LocalRun(label, doc["spec"], values, env, in_process, image_root)
    code = run.run()
    log.info("%s: %s (exit code %d)", label, run.status, code)
    return code
