"""Every MLflow call of the project goes through here: one client per settings (no process-global tracking
URI), experiments created with the configured artifact location, and failures told apart.

A tracking server that cannot be reached is `errors.Unreachable` (exit 75, retried by Argo) with the URI
it tried (credentials masked) — never mistaken for "the release does not exist" (exit 2, not retried).
MLflow's HTTP client retries for about four minutes by default; `mlflow.http_retries` and
`mlflow.http_timeout` bound that (MLflow reads them from the process environment, so they are set there,
unless the environment already sets them).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import urllib3
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException, RestException
from mlflow.tracking import MlflowClient

from spark_app.config import MlflowConfig, Settings
from spark_app.errors import Unreachable
from spark_app.redact import redact

log = logging.getLogger(__name__)
T = TypeVar("T")

_TRANSIENT = {
    "TEMPORARILY_UNAVAILABLE",
    "REQUEST_LIMIT_EXCEEDED",
    "INTERNAL_ERROR",
    "DEADLINE_EXCEEDED",
    "SERVICE_UNDER_MAINTENANCE",
    "ENDPOINT_NOT_FOUND",
}


# OSErrors that say a file is missing or unreadable (an artifact deleted, a permission), not that the
# store is down: those are the user's to fix (exit 2), not retried
_ABSENT = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)

_SET_BY_US: dict[str, str] = {}


def first_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's first line, credentials masked, for a one-line error message."""
    text = str(exc).strip()
    return redact(text.splitlines()[0] if text else type(exc).__name__)[:limit]


def client(cfg: MlflowConfig) -> MlflowClient:
    """An MlflowClient for these settings, with the HTTP retry bounds applied (unless the environment
    sets MLflow's own variables, which then win)."""
    for name, value in (
        ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(cfg.http_retries)),
        ("MLFLOW_HTTP_REQUEST_TIMEOUT", str(cfg.http_timeout)),
    ):
        if name not in os.environ or os.environ[name] == _SET_BY_US.get(name):
            os.environ[name] = _SET_BY_US[name] = value
    return MlflowClient(tracking_uri=cfg.tracking_uri, registry_uri=cfg.registry_uri or cfg.tracking_uri)


def artifact_location_uri(location: str | None) -> str | None:
    """A local path (relative to the working directory) as a file: URI; URIs pass through."""
    if not location:
        return None
    scheme = urlparse(location).scheme
    if scheme and len(scheme) > 1:
        return location
    return Path(location).resolve().as_uri()


def experiment_id(mlflow: MlflowClient, name: str, artifact_location: str | None) -> str:
    """The experiment's id, created (with the configured artifact location) on first use."""
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return mlflow.create_experiment(name, artifact_location=artifact_location_uri(artifact_location))
    except MlflowException:  # created concurrently
        found = mlflow.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def is_unreachable(exc: BaseException) -> bool:
    """Could not reach the tracking/registry store (refused, timeout, proxy error, database unavailable),
    as opposed to "the thing does not exist"."""
    for e in _chain(exc):
        if isinstance(e, _ABSENT):  # a file that is not there or not readable: the store answered
            continue
        if isinstance(e, OSError | urllib3.exceptions.HTTPError):
            return True
        kind = type(e)
        if (kind.__module__ or "").startswith("sqlalchemy") and kind.__name__ in (
            "OperationalError",
            "DatabaseError",
            "InterfaceError",
        ):
            return True
    if isinstance(exc, RestException):  # a server answered in JSON
        return exc.error_code in _TRANSIENT
    if isinstance(exc, MlflowException):
        text = str(exc)
        return (
            (text.startswith("API request to ") and " failed with " in text)
            or "response body was not in a valid JSON format" in text
            or "unable to open database file" in text
        )
    return False


def is_not_found(exc: BaseException) -> bool:
    """The store answered: no such model, version, alias or run."""
    if not isinstance(exc, MlflowException) or is_unreachable(exc):
        return False
    text = str(exc)
    return exc.error_code == "RESOURCE_DOES_NOT_EXIST" or (
        exc.error_code == "INVALID_PARAMETER_VALUE" and "alias" in text and "not found" in text
    )


@contextlib.contextmanager
def reaching(cfg: MlflowConfig, what: str = "MLflow") -> Iterator[None]:
    """Turn "could not reach the store" inside the block into Unreachable naming the (masked) URI."""
    try:
        yield
    except Unreachable:
        raise
    except Exception as exc:
        if not is_unreachable(exc):
            raise
        uri = redact(cfg.registry_uri or cfg.tracking_uri)
        first = first_line(exc)
        raise Unreachable(
            f"cannot reach {what} at {uri}: {first} (retryable; check the tracking server and the network)"
        ) from None


def guarded(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorate a function whose first argument is the Settings: its MLflow failures to reach the store
    become Unreachable (see `reaching`)."""

    @functools.wraps(fn)
    def wrapper(settings: Settings, *args: Any, **kwargs: Any) -> T:
        with reaching(settings.mlflow):
            return fn(settings, *args, **kwargs)

    return wrapper


def log_values(
    mlflow: MlflowClient,
    run_id: str,
    params: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
    steps: Iterable[tuple[str, float, int]] = (),
) -> None:
    """Params (credentials masked, cut to MLflow's 6,000 characters) and metrics (step 0, plus `steps`
    as (key, value, step)) in batches within the store's limits."""
    now = int(time.time() * 1000)
    param_list = [Param(k, redact(str(v))[:6000]) for k, v in (params or {}).items()]
    metric_list = [Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()]
    metric_list += [Metric(k, float(v), now, int(step)) for k, v, step in steps]
    for i in range(0, len(param_list), 100):
        mlflow.log_batch(run_id, params=param_list[i : i + 100])
    for i in range(0, len(metric_list), 1000):
        mlflow.log_batch(run_id, metrics=metric_list[i : i + 1000])
