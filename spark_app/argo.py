"""The Argo Workflows manifests in argo/, proven without a cluster: schema, lint, local run, submit.

* `schema_problems` validates a manifest against Argo's JSON schema for its kind — strictly: Argo's schema
  allows unknown fields, so a typo (`retrystrategy`) or a field Argo 4 removed (`schedule`, `mutex`)
  would pass it; strict mode closes every object that lists its properties.
* `lint` does what `argo lint` does beyond the schema: entrypoint, onExit and every referenced template
  exist, DAG tasks' dependencies exist and are acyclic, every `{{inputs.parameters.x}}` /
  `{{workflow.parameters.x}}` resolves, cron schedules parse, the timezone is real, concurrencyPolicy is
  valid — plus this project's rules: every step has a retryStrategy, activeDeadlineSeconds and resource
  requests/limits, a synchronization mutex, and no credential written into the manifest.
* `run_local` runs a template's DAG here, in dependency order: `spark-submit … jobs/x.py ARGS` becomes
  `python -m spark_app x ARGS`, `cltv ARGS` becomes `python -m spark_app ARGS`. A task runs when its
  `depends` expression holds (`Depends`: Argo's enhanced depends logic), is Omitted otherwise, and the DAG
  fails as Argo's does: when a leaf task's branch ends in a failure.
* `submit` starts a WorkflowTemplate on an Argo Server through Hera.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from spark_app.errors import UserError

log = logging.getLogger(__name__)

KINDS = ("WorkflowTemplate", "ClusterWorkflowTemplate", "Workflow", "CronWorkflow")
CONCURRENCY_POLICIES = ("Allow", "Forbid", "Replace")
STEP_KINDS = ("container", "script", "containerSet", "resource", "http", "plugin", "suspend", "data")
POD_KINDS = ("container", "script", "containerSet")
CREDENTIAL_ENV = re.compile(r"(TOKEN|PASSWORD|PASSWD|SECRET|CREDENTIAL|API_KEY|ACCESS_KEY)", re.I)
# Workflow-level variables Argo sets (https://argo-workflows.readthedocs.io/en/latest/variables/)
WORKFLOW_VARIABLES = {
    "name", "namespace", "mainEntrypoint", "serviceAccountName", "uid", "priority", "duration",
    "status", "failures", "scheduledTime", "creationTimestamp", "labels", "annotations", "parameters",
    "outputs", "labels.json", "annotations.json", "parameters.json",
}  # fmt: skip
IMAGE_ROOT = "/opt/cltv"  # where docker/Dockerfile puts spark_app.zip, jobs/ and conf/
LOCAL_DEFAULTS = {"conf": "conf/local.yaml"}  # run-local: the embedded config instead of the image's

_TAG = re.compile(r"\{\{(.*?)\}\}", re.S)
_PARAM_REF = re.compile(
    r"\b(inputs|workflow)\.parameters(?:\.([A-Za-z0-9_][A-Za-z0-9_-]*)|\[\s*['\"]([^'\"]+)['\"]\s*\])"
)
_NODE_REF = re.compile(r"\b(tasks|steps)(?:\.([A-Za-z0-9_][A-Za-z0-9_-]*)|\[\s*['\"]([^'\"]+)['\"]\s*\])")
_WORKFLOW_VAR = re.compile(r"\bworkflow\.([A-Za-z][A-Za-z0-9]*(?:\.json)?)")
_DEPENDS_NAME = re.compile(r"([A-Za-z0-9][A-Za-z0-9_-]*)(?:\.[A-Za-z]+)?")


class ArgoError(UserError):
    """A manifest cannot be run or submitted; the message names the file, template and field."""


# ------------------------------------------------------------------ loading
def load_documents(path: Path) -> list[dict[str, Any]]:
    """Every YAML document in `path` (anchors resolved), skipping empty ones."""
    try:
        docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
    except FileNotFoundError:
        raise ArgoError(f"{path}: no such manifest") from None
    except yaml.YAMLError as exc:
        raise ArgoError(f"{path}: not valid YAML: {exc}") from None
    bad = [d.get("kind") for d in docs if not isinstance(d, dict) or d.get("kind") not in KINDS]
    if bad:
        raise ArgoError(f"{path}: not an Argo workflow kind: {bad} (expected one of {list(KINDS)})")
    return docs


def load_manifests(directory: Path) -> dict[str, dict[str, Any]]:
    """`kind/name` → document for every manifest under `directory` (the argo/ folder)."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(Path(directory).glob("*.y*ml")):
        for doc in load_documents(path):
            out[f"{doc['kind']}/{doc.get('metadata', {}).get('name')}"] = doc
    return out


def doc_label(doc: Mapping[str, Any]) -> str:
    meta = doc.get("metadata") or {}
    return f"{doc.get('kind')}/{meta.get('name') or meta.get('generateName') or '?'}"


# ------------------------------------------------------------------ schema
def strict_definitions(definitions: Mapping[str, Any]) -> dict[str, Any]:
    """Copy of the schema's definitions where every object listing its properties allows no others."""
    out = copy.deepcopy(dict(definitions))
    for definition in out.values():
        if "properties" in definition and "additionalProperties" not in definition:
            definition["additionalProperties"] = False
    return out


def schema_problems(doc: Mapping[str, Any], schema: Mapping[str, Any], *, strict: bool = True) -> list[str]:
    """Violations of Argo's JSON schema (a `…schema.json` of a release) for the document's kind."""
    import jsonschema

    kind = doc.get("kind")
    ref = f"io.argoproj.workflow.v1alpha1.{kind}"
    definitions = schema["definitions"]
    if ref not in definitions:
        return [f"{doc_label(doc)}: kind {kind!r} is not in the schema"]
    defs = strict_definitions(definitions) if strict else definitions
    validator = jsonschema.Draft202012Validator({"$ref": f"#/definitions/{ref}", "definitions": defs})
    problems = []
    for err in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))):
        where = ".".join(str(p) for p in err.absolute_path) or "(root)"
        problems.append(f"{doc_label(doc)}: {where}: {err.message}")
    return problems


# ------------------------------------------------------------------ cron
_CRON_FIELDS = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, {m: i + 1 for i, m in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"])}),
    ("day of week", 0, 7, {d: i for i, d in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}),
)  # fmt: skip
_CRON_DESCRIPTORS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
_DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$")


def cron_problems(expr: str) -> list[str]:
    """Why `expr` is not a schedule Argo's cron parser accepts (5 fields, names, ranges, steps)."""
    expr = expr.strip()
    if expr.startswith("@"):
        if expr in _CRON_DESCRIPTORS:
            return []
        if expr.startswith("@every ") and _DURATION.match(expr[len("@every ") :].strip()):
            return []
        return [f"unknown descriptor {expr!r}"]
    parts = expr.split()
    if len(parts) != 5:
        return [f"{expr!r} has {len(parts)} fields, expected 5 (minute hour day-of-month month day-of-week)"]
    problems = []
    for text, (field, lo, hi, names) in zip(parts, _CRON_FIELDS, strict=True):
        for item in text.split(","):
            problem = _cron_item_problem(item, lo, hi, names)
            if problem:
                problems.append(f"{expr!r}: {field} {item!r}: {problem}")
    return problems


def _cron_item_problem(item: str, lo: int, hi: int, names: Mapping[str, int]) -> str | None:
    def value(tok: str) -> int | None:
        if tok.isdigit():
            return int(tok)
        return names.get(tok.lower())

    base, _, step = item.partition("/")
    if step and (not step.isdigit() or int(step) == 0):
        return "step must be a positive number"
    if base in ("*", "?"):
        return None
    first, dash, last = base.partition("-")
    a, b = value(first), value(last) if dash else None
    if a is None or (dash and b is None):
        return "not a number or name"
    for v in (a, b) if dash else (a,):
        if not lo <= v <= hi:
            return f"outside {lo}..{hi}"
    if dash and b < a:
        return "range runs backwards"
    return None


def timezone_problem(tz: str) -> str | None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        return f"timezone {tz!r} is not an IANA zone"
    return None


# ------------------------------------------------------------------ lint
def _strings(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every string in a nested structure with its dotted location."""
    if isinstance(node, str):
        yield path, node
    elif isinstance(node, Mapping):
        for k, v in node.items():
            yield from _strings(v, f"{path}.{k}" if path else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _strings(v, f"{path}[{i}]")


def _param_names(params: list[Mapping[str, Any]] | None) -> dict[str, bool]:
    """Parameter name → has a value (value, default or valueFrom)."""
    return {str(p.get("name")): any(k in p for k in ("value", "default", "valueFrom")) for p in params or []}


def reference_problems(
    where: str,
    node: Any,
    *,
    inputs: set[str] | None,
    workflow_params: set[str] | None,
    nodes: set[str] | None,
    cron: bool,
) -> list[str]:
    """Unresolvable `{{…}}` references in `node` (simple and expression tags)."""
    problems = []
    for loc, text in _strings(node):
        for tag in _TAG.findall(text):
            expression = tag.startswith("=")
            body = tag[1:] if expression else tag.strip()
            at = f"{where}.{loc}" if loc else where
            for scope, dotted, indexed in _PARAM_REF.findall(body):
                name = dotted or indexed
                if expression and dotted and "-" in dotted:
                    problems.append(
                        f"{at}: {scope}.parameters.{dotted} in an expression: hyphenated names must "
                        f"be indexed, {scope}.parameters['{dotted}']"
                    )
                known = inputs if scope == "inputs" else workflow_params
                if known is None:
                    problems.append(f"{at}: {{{{{scope}.parameters.{name}}}}} cannot be used here")
                elif name not in known:
                    have = sorted(known) or "none"
                    problems.append(f"{at}: {scope}.parameters.{name} is not declared (declared: {have})")
            for kind, dotted, indexed in _NODE_REF.findall(body):
                name = dotted or indexed
                if nodes is None or name not in nodes:
                    problems.append(f"{at}: {kind}.{name} does not name a {kind[:-1]} of this template")
            for var in _WORKFLOW_VAR.findall(body):
                top = var.split(".")[0]
                if var not in WORKFLOW_VARIABLES and top not in WORKFLOW_VARIABLES:
                    problems.append(f"{at}: workflow.{var} is not an Argo workflow variable")
                elif top == "scheduledTime" and not cron:
                    problems.append(f"{at}: workflow.scheduledTime is only set in a CronWorkflow")
    return problems


# ------------------------------------------------------------------ depends
# Task results a `depends` operand can name (argo-workflows.readthedocs.io/en/latest/enhanced-depends-logic/)
DEPENDS_RESULTS = (
    "Succeeded", "Failed", "Errored", "Skipped", "Omitted", "Daemoned", "AnySucceeded", "AllFailed",
)  # fmt: skip
_DEPENDS_TOKEN = re.compile(
    r"\s*(?:(?P<op>&&|\|\||!|\(|\))|(?P<task>[A-Za-z0-9][A-Za-z0-9_-]*)(?:\.(?P<result>[A-Za-z]+))?)"
)


class Depends:
    """A task's `depends` expression, parsed without eval: `A`, `A.Failed`, `&&`, `||`, `!`, parentheses.

    A bare name means `(A.Succeeded || A.Skipped || A.Daemoned)`, as in Argo. `.AnySucceeded` and
    `.AllFailed` look at the children of a task expanded with withItems/withParam; for a plain task Argo
    evaluates both to false, and so does this. run-local has no daemons: `.Daemoned` is false.
    """

    def __init__(self, text: str):
        self.text = text
        self._tokens = self._tokenize(text)
        self._pos = 0
        self.tree = self._or()
        if self._pos != len(self._tokens):
            raise self._error(f"unexpected {self._tokens[self._pos][1]!r}")
        self.tasks: list[str] = list(dict.fromkeys(self._names(self.tree)))

    @classmethod
    def of_task(cls, task: Mapping[str, Any]) -> Depends | None:
        """The task's condition: `depends`, or `dependencies` [A, B] read as "A && B"; None at the root."""
        if task.get("depends"):
            return cls(str(task["depends"]))
        if task.get("dependencies"):
            return cls(" && ".join(str(d) for d in task["dependencies"]))
        return None

    def __call__(self, statuses: Mapping[str, str]) -> bool:
        """Whether the task runs, given the phase of each task it names (Succeeded, Failed, Omitted, …)."""
        missing = [t for t in self.tasks if t not in statuses]
        if missing:
            raise ArgoError(f"depends {self.text!r}: {missing} have not finished")
        return self._eval(self.tree, statuses)

    # parsing: or := and ('||' and)* ; and := unary ('&&' unary)* ;
    #          unary := '!' unary | '(' or ')' | task[.Result]
    def _error(self, what: str) -> ArgoError:
        return ArgoError(f"depends {self.text!r}: {what}")

    def _tokenize(self, text: str) -> list[tuple[str, str, str | None]]:
        tokens, pos, text = [], 0, text.rstrip()
        while pos < len(text):
            m = _DEPENDS_TOKEN.match(text, pos)
            if not m:
                at = len(text) - len(text[pos:].lstrip())
                raise self._error(f"unexpected {text[at : at + 20]!r} at position {at}")
            if m.group("op"):
                tokens.append(("op", m.group("op"), None))
            else:
                result = m.group("result")
                if result is not None and result not in DEPENDS_RESULTS:
                    raise self._error(f"{m.group('task')}.{result}: unknown result {result!r} "
                                      f"(one of {', '.join(DEPENDS_RESULTS)})")  # fmt: skip
                tokens.append(("task", m.group("task"), result))
            pos = m.end()
        if not tokens:
            raise self._error("empty expression")
        return tokens

    def _peek(self) -> str | None:
        return self._tokens[self._pos][1] if self._pos < len(self._tokens) else None

    def _or(self) -> tuple:
        terms = [self._and()]
        while self._peek() == "||":
            self._pos += 1
            terms.append(self._and())
        return ("or", terms) if len(terms) > 1 else terms[0]

    def _and(self) -> tuple:
        terms = [self._unary()]
        while self._peek() == "&&":
            self._pos += 1
            terms.append(self._unary())
        return ("and", terms) if len(terms) > 1 else terms[0]

    def _unary(self) -> tuple:
        if self._pos >= len(self._tokens):
            raise self._error("ends where a task was expected")
        kind, value, result = self._tokens[self._pos]
        self._pos += 1
        if value == "!":
            return ("not", self._unary())
        if value == "(":
            inner = self._or()
            if self._peek() != ")":
                raise self._error("unbalanced '('")
            self._pos += 1
            return inner
        if kind == "task":
            return ("task", value, result)
        raise self._error(f"unexpected {value!r} where a task was expected")

    def _names(self, node: tuple) -> Iterator[str]:
        if node[0] == "task":
            yield node[1]
        elif node[0] == "not":
            yield from self._names(node[1])
        else:
            for term in node[1]:
                yield from self._names(term)

    def _eval(self, node: tuple, statuses: Mapping[str, str]) -> bool:
        if node[0] == "task":
            phase = statuses[node[1]]
            result = node[2]
            if result is None:
                return phase in ("Succeeded", "Skipped")
            if result in ("AnySucceeded", "AllFailed", "Daemoned"):
                return False
            return phase == result
        if node[0] == "not":
            return not self._eval(node[1], statuses)
        values = (self._eval(term, statuses) for term in node[1])
        return any(values) if node[0] == "or" else all(values)


def _depends_on(task: Mapping[str, Any]) -> list[str]:
    """Names of the tasks a DAG task waits for (`dependencies` and the operands of `depends`)."""
    names = list(task.get("dependencies") or [])
    expr = task.get("depends")
    if expr:
        try:
            names += Depends(str(expr)).tasks
        except ArgoError:  # lint reports the syntax; the names still serve the cycle check
            names += [n for n in _DEPENDS_NAME.findall(str(expr)) if n]
    return names


def dag_cycle(tasks: Mapping[str, list[str]]) -> list[str] | None:
    """One dependency cycle as a list of task names, or None when the DAG is acyclic."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        stack.append(name)
        for dep in tasks.get(name, []):
            if state.get(dep) == 1:
                return [*stack[stack.index(dep) :], dep]
            if dep in tasks and dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[name] = 2
        return None

    for name in tasks:
        if name not in state:
            found = visit(name)
            if found:
                return found
    return None


def _call_problems(
    where: str, call: Mapping[str, Any], templates: Mapping[str, Mapping[str, Any]]
) -> list[str]:
    """A DAG task or step calls an existing template with exactly the inputs it declares."""
    if "templateRef" in call or "inline" in call:
        return []
    target = call.get("template")
    if target not in templates:
        return [f"{where}: template {target!r} does not exist"]
    declared = _param_names((templates[target].get("inputs") or {}).get("parameters"))
    given = {p.get("name") for p in (call.get("arguments") or {}).get("parameters") or []}
    problems = [
        f"{where}: argument {n!r} is not an input of template {target!r}" for n in given - set(declared)
    ]
    problems += [
        f"{where}: template {target!r} needs input {n!r}"
        for n, has_value in declared.items()
        if not has_value and n not in given
    ]
    return problems


def _policy_problems(where: str, template: Mapping[str, Any]) -> list[str]:
    """This project's rules for every step that runs: retries with backoff, a deadline, resources."""
    problems = []
    kind = next((k for k in STEP_KINDS if k in template), None)
    if kind is None or kind == "suspend":
        return problems
    retry = template.get("retryStrategy")
    if not retry:
        problems.append(f"{where}: no retryStrategy")
    else:
        if not isinstance(retry.get("limit"), str):
            problems.append(f"{where}: retryStrategy.limit must be a quoted string (Argo's IntOrString)")
        if not retry.get("backoff"):
            problems.append(f"{where}: retryStrategy has no backoff")
    if "activeDeadlineSeconds" not in template:
        problems.append(f"{where}: no activeDeadlineSeconds")
    if kind in POD_KINDS:
        containers = (
            [c for c in (template.get("containerSet") or {}).get("containers", [])]
            if kind == "containerSet"
            else [template[kind]]
        )
        for c in containers:
            res = c.get("resources") or {}
            for part in ("requests", "limits"):
                missing = [r for r in ("cpu", "memory") if r not in (res.get(part) or {})]
                if missing:
                    problems.append(f"{where}: resources.{part} lacks {', '.join(missing)}")
            for env in c.get("env") or []:
                if "value" in env and CREDENTIAL_ENV.search(str(env.get("name"))):
                    problems.append(
                        f"{where}: env {env.get('name')} holds a literal value; credentials come from "
                        "a Secret (valueFrom.secretKeyRef)"
                    )
    return problems


def _spec_problems(
    label: str,
    spec: Mapping[str, Any],
    *,
    cron: bool,
    known: Mapping[str, Mapping[str, Any]] | None,
    policy: bool,
) -> list[str]:
    problems: list[str] = []
    args = _param_names((spec.get("arguments") or {}).get("parameters"))
    ref = spec.get("workflowTemplateRef")
    if ref:
        name = ref.get("name")
        kind = "ClusterWorkflowTemplate" if ref.get("clusterScope") else "WorkflowTemplate"
        target = (known or {}).get(f"{kind}/{name}")
        if known is not None and target is None:
            problems.append(f"{label}: workflowTemplateRef {kind}/{name} is not among the manifests")
        if target is not None:
            declared = _param_names((target["spec"].get("arguments") or {}).get("parameters"))
            problems += [
                f"{label}: argument {n!r} is not a parameter of {kind}/{name}"
                for n in set(args) - set(declared)
            ]
            problems += [
                f"{label}: {kind}/{name} needs parameter {n!r}"
                for n, has_value in declared.items()
                if not has_value and n not in args
            ]
        problems += reference_problems(
            f"{label}: spec", spec, inputs=None, workflow_params=set(args), nodes=None, cron=cron
        )
        return problems

    templates_list = spec.get("templates") or []
    templates = {t.get("name"): t for t in templates_list}
    dupes = sorted({n for n in templates if [t.get("name") for t in templates_list].count(n) > 1})
    if dupes:
        problems.append(f"{label}: duplicate template names {dupes}")
    entry = spec.get("entrypoint")
    if not entry:
        problems.append(f"{label}: no entrypoint")
    elif entry not in templates:
        problems.append(f"{label}: entrypoint {entry!r} is not a template")
    on_exit = spec.get("onExit")
    if on_exit and on_exit not in templates:
        problems.append(f"{label}: onExit template {on_exit!r} does not exist")
    workflow_params = set(args)
    outside = {k: v for k, v in spec.items() if k != "templates"}
    problems += reference_problems(
        f"{label}: spec", outside, inputs=None, workflow_params=workflow_params, nodes=None, cron=cron
    )
    if policy and not ((spec.get("synchronization") or {}).get("mutexes")):
        problems.append(f"{label}: no synchronization.mutexes (runs that must not overlap need a mutex)")

    for tname, template in templates.items():
        where = f"{label}: template {tname}"
        inputs = set(_param_names((template.get("inputs") or {}).get("parameters")))
        nodes: set[str] | None = None
        if "dag" in template:
            tasks = template["dag"].get("tasks") or []
            names = [t.get("name") for t in tasks]
            nodes = set(names)
            deps = {t.get("name"): _depends_on(t) for t in tasks}
            if any(t.get("depends") for t in tasks) and any(t.get("dependencies") for t in tasks):
                problems.append(f"{where}: a DAG uses either depends or dependencies, not both")
            for t in tasks:
                tw = f"{where}: task {t.get('name')}"
                problems += _call_problems(tw, t, templates)
                problems += [
                    f"{tw}: depends on unknown task {d!r}" for d in deps[t.get("name")] if d not in nodes
                ]
                if t.get("depends"):
                    try:
                        Depends(str(t["depends"]))
                    except ArgoError as exc:
                        problems.append(f"{tw}: {exc}")
            cycle = dag_cycle(deps)
            if cycle:
                problems.append(f"{where}: dependency cycle {' → '.join(cycle)}")
        elif "steps" in template:
            nodes = set()
            for group in template["steps"] or []:
                for step in group or []:
                    nodes.add(step.get("name"))
                    problems += _call_problems(f"{where}: step {step.get('name')}", step, templates)
        problems += reference_problems(
            where, template, inputs=inputs, workflow_params=workflow_params, nodes=nodes, cron=cron
        )
        if policy:
            problems += _policy_problems(where, template)
    return problems


def lint(
    doc: Mapping[str, Any],
    *,
    known: Mapping[str, Mapping[str, Any]] | None = None,
    policy: bool = True,
) -> list[str]:
    """What is wrong with one manifest beyond its schema; `known` (kind/name → doc) resolves template refs."""
    label = doc_label(doc)
    kind = doc.get("kind")
    spec = doc.get("spec") or {}
    problems: list[str] = []
    if kind == "CronWorkflow":
        if "schedule" in spec:
            problems.append(f"{label}: spec.schedule was removed in Argo 4; use the schedules list")
        schedules = spec.get("schedules") or ([spec["schedule"]] if spec.get("schedule") else [])
        if not schedules:
            problems.append(f"{label}: no schedules")
        for expr in schedules:
            problems += [f"{label}: schedule {p}" for p in cron_problems(str(expr))]
        if spec.get("timezone"):
            tz = timezone_problem(str(spec["timezone"]))
            if tz:
                problems.append(f"{label}: {tz}")
        elif policy:
            problems.append(f"{label}: no timezone (the controller's zone would decide when months start)")
        policy_value = spec.get("concurrencyPolicy")
        if policy_value is not None and policy_value not in CONCURRENCY_POLICIES:
            problems.append(
                f"{label}: concurrencyPolicy {policy_value!r} is not one of {list(CONCURRENCY_POLICIES)}"
            )
        deadline = spec.get("startingDeadlineSeconds")
        if deadline is not None and (not isinstance(deadline, int) or deadline < 0):
            problems.append(f"{label}: startingDeadlineSeconds must be a non-negative integer")
        problems += _spec_problems(
            label, spec.get("workflowSpec") or {}, cron=True, known=known, policy=False
        )
    else:
        sync = spec.get("synchronization") or {}
        problems += [
            f"{label}: synchronization.{k} was removed in Argo 4; use {k}es" if k == "mutex"
            else f"{label}: synchronization.{k} was removed in Argo 4; use {k}s"
            for k in ("mutex", "semaphore") if k in sync
        ]  # fmt: skip
        problems += _spec_problems(label, spec, cron=False, known=known, policy=policy)
    return problems


# ------------------------------------------------------------------ run-local
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

    return _TAG.sub(repl, text)


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
        sub = Path(args[script]).stem.replace("_", "-")
        return [python, "-m", "spark_app", sub, *args[script + 1 :]]
    if Path(args[0]).name == "cltv":
        return [python, "-m", "spark_app", *args[1:]]
    return list(args)


def topological_order(tasks: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Tasks in dependency order; among ready tasks, the order they are declared in."""
    deps = {t["name"]: set(_depends_on(t)) for t in tasks}
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


# ------------------------------------------------------------------ submit
def argo_server(environ: Mapping[str, str]) -> tuple[str, bool]:
    """Base URL of the Argo Server from ARGO_SERVER (host:port as the argo CLI takes it, or a URL)."""
    server = environ.get("ARGO_SERVER")
    if not server:
        raise ArgoError("ARGO_SERVER is not set (e.g. argo-server.argo:2746 or https://argo.example.com)")
    if "://" not in server:
        secure = environ.get("ARGO_SECURE", "true").lower() != "false"
        server = f"{'https' if secure else 'http'}://{server}"
    base = environ.get("ARGO_BASE_HREF", "").strip("/")
    url = server.rstrip("/") + "/" + (f"{base}/" if base else "")
    verify = environ.get("ARGO_INSECURE_SKIP_VERIFY", "false").lower() != "true"
    return url, verify


def submit(
    template: str,
    params: dict[str, str],
    namespace: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    session: Any = None,
) -> str:
    """Start WorkflowTemplate `template` (a name, or a manifest file whose name is used) on the Argo Server.

    Server and token come from ARGO_SERVER / ARGO_TOKEN (ARGO_NAMESPACE when `namespace` is None).
    Returns the new workflow's name.
    """
    from hera.workflows.models import SubmitOpts, WorkflowSubmitRequest
    from hera.workflows.service import WorkflowsService

    env = os.environ if environ is None else environ
    name = template
    if template.endswith((".yaml", ".yml")) or Path(template).is_file():
        docs = [d for d in load_documents(Path(template)) if d["kind"] == "WorkflowTemplate"]
        if len(docs) != 1:
            raise ArgoError(f"{template}: expected one WorkflowTemplate")
        problems = lint(docs[0], known=load_manifests(Path(template).parent))
        if problems:
            raise ArgoError(f"{template}: lint failed:\n  " + "\n  ".join(problems))
        declared = {p["name"]: p for p in (docs[0]["spec"].get("arguments") or {}).get("parameters") or []}
        unknown = sorted(set(params) - set(declared))
        missing = sorted(n for n, p in declared.items() if "value" not in p and n not in params)
        if unknown or missing:
            raise ArgoError(f"{template}: unknown parameters {unknown}, missing parameters {missing}")
        name = docs[0]["metadata"]["name"]
    ns = namespace or env.get("ARGO_NAMESPACE") or "argo"
    host, verify = argo_server(env)
    service = WorkflowsService(
        host=host, token=env.get("ARGO_TOKEN") or None, namespace=ns, verify_ssl=verify, session=session
    )
    request = WorkflowSubmitRequest(
        namespace=ns,
        resource_kind="WorkflowTemplate",
        resource_name=name,
        submit_options=SubmitOpts(parameters=[f"{k}={v}" for k, v in params.items()]),
    )
    workflow = service.submit_workflow(request, namespace=ns)
    submitted = workflow.metadata.name if workflow.metadata else None
    log.info("submitted WorkflowTemplate %s in %s as %s with %s", name, ns, submitted, params)
    return submitted or ""
