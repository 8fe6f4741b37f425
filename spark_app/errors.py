"""What can go wrong, at the ground floor: every layer raises these, the CLI maps them to exit codes.

The exit codes are a contract with the Argo retry policies (argo/*.yaml) and with people's scripts:
0 done, 1 verdict (promotion refused, a monitoring fail threshold crossed), 2 user-fixable error (config,
input contract, a release that does not exist; nothing was written, retrying will not help),
3 inputs not ready yet, 75 a dependency that could not be reached or is busy (MLflow, HDFS, another run
writing the same month; retry later), 70 an unexpected crash (retryable; the traceback is logged).
This module imports nothing of the project.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_VERDICT = 1
EXIT_USER_ERROR = 2
EXIT_NOT_READY = 3
EXIT_CRASH = 70  # EX_SOFTWARE
EXIT_UNREACHABLE = 75  # EX_TEMPFAIL: "temporary failure, the user is invited to retry"


class CltvError(Exception):
    """Base of the project's errors; an unexpected one is a crash."""

    exit_code = EXIT_CRASH


class UserError(CltvError, ValueError):
    """Fixable from the message alone (it names the file, key, table, column or month); nothing written."""

    exit_code = EXIT_USER_ERROR


class InputsNotReady(CltvError):
    """The month's inputs have not arrived yet."""

    exit_code = EXIT_NOT_READY


class Unreachable(CltvError):
    """A dependency (MLflow, HDFS) could not be reached; the message names it (credentials redacted)."""

    exit_code = EXIT_UNREACHABLE


class Busy(Unreachable):
    """Another run holds what this run needs (e.g. the lock of a month's partition); retry later."""
