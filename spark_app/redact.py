"""What a user sees never holds a secret: in logs, `config show` and MLflow.

Three things are masked:
- the password of every URI (`http://user:pw@host/x` → `http://user:***@host/x`) and secret-looking query
  parameters (`?token=abc` → `?token=***`);
- the value of every config key whose name says it is a secret (`SECRET_KEY`: `…secret…`, `password`,
  `token`, `access.key`, `keytab`, `sas`, … as a word of the key's last segment, camelCase split) — also
  inside `spark.conf`, whose keys are Spark's (`spark.hadoop.fs.s3a.secret.key`); `ranking_key` or
  `tenure_column` stay visible;
- any value registered with `register_secret` (the config loader registers the values of secret keys), in
  every log line of every logger: a library that logs the Spark conf cannot print one.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

MASK = "***"
_USERINFO = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s'\"]*):(?P<secret>[^@/\s'\"]+)@")
_QUERY = re.compile(
    r"(?P<head>[?&;](?:token|access_token|password|passwd|pwd|secret|api_key|apikey|key|sig|signature)=)"
    r"(?P<secret>[^&#\s'\"]+)",
    re.IGNORECASE,
)
# a secret key: one of these words between separators (. _ - or the ends) of the snake-cased key
SECRET_KEY = re.compile(
    r"(?:^|[._-])(?:secret|password|passwd|pwd|token|credentials?|keytab|sas"
    r"|(?:access|account|private|secret|api)[._-]?key)(?:$|[._-])"
)
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_MIN_SECRET = 4  # shorter registered values would mask ordinary words of every log line

_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_secret_pattern: re.Pattern[str] | None = None


def is_secret_key(key: str) -> bool:
    """`spark.hadoop.fs.s3a.secret.key`, `db_password`, `keyStorePassword` yes; `ranking_key` no."""
    return SECRET_KEY.search(_CAMEL.sub("_", str(key)).lower()) is not None


def register_secret(value: object) -> None:
    """Mask `value` wherever it appears in a log line from now on (values of secret config keys)."""
    global _secret_pattern
    text = str(value)
    if len(text) < _MIN_SECRET or text == MASK:
        return
    with _secrets_lock:
        if text in _secrets:
            return
        _secrets.add(text)
        ordered = sorted(_secrets, key=len, reverse=True)  # a longer secret first: no partial leftovers
        _secret_pattern = re.compile("|".join(re.escape(s) for s in ordered))


def redact(text: str) -> str:
    """`text` with URI passwords, secret-looking query parameters and registered secrets masked."""
    text = _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@", text)
    text = _QUERY.sub(lambda m: f"{m['head']}{MASK}", text)
    pattern = _secret_pattern
    return pattern.sub(MASK, text) if pattern is not None else text


def redact_obj(obj: Any, key: str | None = None) -> Any:
    """The same for every string inside a JSON-like structure (a resolved config, a manifest); the value
    of a key that names a secret is masked whole."""
    if key is not None and is_secret_key(key) and obj not in (None, "", False):
        return MASK if not isinstance(obj, dict | list | tuple) else _mask_all(obj)
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {k: redact_obj(v, str(k)) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(redact_obj(v) for v in obj)
    return obj


def _mask_all(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _mask_all(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_mask_all(v) for v in obj)
    return MASK


def secret_values(obj: Any, key: str | None = None) -> list[str]:
    """The values of secret keys inside a JSON-like structure (what `register_secret` should mask)."""
    if key is not None and is_secret_key(key):
        if isinstance(obj, dict):
            return [s for v in obj.values() for s in secret_values(v, key)]
        if isinstance(obj, list | tuple):
            return [s for v in obj for s in secret_values(v, key)]
        return [str(obj)] if obj not in (None, "", False, True) else []
    if isinstance(obj, dict):
        return [s for k, v in obj.items() for s in secret_values(v, str(k))]
    if isinstance(obj, list | tuple):
        return [s for v in obj for s in secret_values(v)]
    return []


class RedactingFormatter(logging.Formatter):
    """Formats as usual, then masks secrets in the whole line (message, arguments, traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))
