"""Start a WorkflowTemplate on an Argo Server through Hera, with the argo CLI's environment."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cltv_argo.manifests import ArgoError, lint, load_documents, load_manifests

log = logging.getLogger(__name__)


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
