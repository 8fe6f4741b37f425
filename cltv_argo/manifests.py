"""The Argo Workflows manifests in argo/, proven without a cluster: Argo's JSON schema and a lint.

* `schema_problems` validates a manifest against Argo's JSON schema for its kind — strictly: Argo's schema
  allows unknown fields, so a typo (`retrystrategy`) or a field Argo 4 removed (`schedule`, `mutex`)
  would pass it; strict mode closes every object that lists its properties.
* `lint` does what `argo lint` does beyond the schema: entrypoint, onExit and every referenced template
  exist, DAG tasks' dependencies exist and are acyclic, every `{{inputs.parameters.x}}` /
  `{{workflow.parameters.x}}` resolves, cron schedules parse (croniter, plus Argo's own rules), the
  timezone is real, concurrencyPolicy is valid — plus this project's rules: every step has a
  retryStrategy, activeDeadlineSeconds and resource requests/limits, a synchronization mutex, and no
  credential written into the manifest.
* `Depends` parses a task's `depends` expression (Argo's enhanced depends logic) without eval.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from croniter import croniter

from spark_app.errors import UserError

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
TAG = re.compile(r"\{\{(.*?)\}\}", re.S)
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
_CRON_DESCRIPTORS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
_DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$")
_RANGE = re.compile(r"^(\d+)-(\d+)")
_CRON_FIELDS = (
    ("minute", "0..59"), ("hour", "0..23"), ("day of month", "1..31"), ("month", "1..12 or jan..dec"),
    ("day of week", "0..7 or sun..sat"),
)  # fmt: skip


def cron_problems(expr: str) -> list[str]:
    """Why `expr` is not a schedule Argo's cron parser (robfig/cron) accepts: croniter checks fields,
    names, ranges and steps; Argo adds exactly five fields, `@every <duration>`, no backwards range."""
    expr = expr.strip()
    if expr.startswith("@"):
        if expr in _CRON_DESCRIPTORS:
            return []
        if expr.startswith("@every ") and _DURATION.match(expr[len("@every ") :].strip()):
            return []
        return [f"unknown descriptor {expr!r}"]
    fields = expr.split()
    if len(fields) != 5:
        return [f"{expr!r} has {len(fields)} fields, expected 5 (minute hour day-of-month month day-of-week)"]
    backwards = [
        item for field in fields for item in field.split(",")
        if (m := _RANGE.match(item)) and int(m.group(2)) < int(m.group(1))
    ]  # fmt: skip
    if backwards:
        return [f"{expr!r}: range {backwards[0]!r} runs backwards"]
    if croniter.is_valid(expr):
        return []
    problems = []
    for i, (name, bounds) in enumerate(_CRON_FIELDS):  # croniter says "out of range"; name the field
        probe = ["*"] * 5
        probe[i] = fields[i]
        if not croniter.is_valid(" ".join(probe)):
            problems.append(f"{expr!r}: {name} {fields[i]!r} is not valid ({bounds}, names, */n steps)")
    return problems or [f"{expr!r}: not a valid cron expression"]


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
        for tag in TAG.findall(text):
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


def depends_on(task: Mapping[str, Any]) -> list[str]:
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
            deps = {t.get("name"): depends_on(t) for t in tasks}
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
