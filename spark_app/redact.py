"""What a user sees never holds a secret: credentials in URIs are masked in logs, `config show` and MLflow.

`http://user:pw@host/x` → `http://user:***@host/x`; `?token=abc` → `?token=***`. The logging formatter
masks every record of every logger (MLflow's and Spark's Python loggers included), tracebacks too.
"""

from __future__ import annotations

import logging
import re
from typing import Any

MASK = "***"
_USERINFO = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s'\"]*):(?P<secret>[^@/\s'\"]+)@")
_QUERY = re.compile(
    r"(?P<head>[?&;](?:token|access_token|password|passwd|pwd|secret|api_key|apikey|key|sig|signature)=)"
    r"(?P<secret>[^&#\s'\"]+)",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """`text` with the password of every URI and every secret-looking query parameter masked."""
    text = _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@", text)
    return _QUERY.sub(lambda m: f"{m['head']}{MASK}", text)


def redact_obj(obj: Any) -> Any:
    """The same for every string inside a JSON-like structure (a resolved config, a manifest)."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {k: redact_obj(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(redact_obj(v) for v in obj)
    return obj


class RedactingFormatter(logging.Formatter):
    """Formats as usual, then masks secrets in the whole line (message, arguments, traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))
