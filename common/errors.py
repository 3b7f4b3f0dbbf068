"""Domain errors. Each maps to one gRPC status code and to CLI exit code 2.

Raise these from core code with a message that names the offending field or
file (and line); transports translate them in one place, never by hand.
"""

from __future__ import annotations


class MontessoriError(Exception):
    """Base class: an error the user can act on, reported without a traceback."""

    #: gRPC status code name this error maps to.
    code = "INTERNAL"

    def __init__(self, message: str, *, field: str | None = None):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field else message)

    def with_prefix(self, prefix: str) -> MontessoriError:
        """The same error with ``prefix.`` added to its field path (for nested configs)."""
        field = f"{prefix}.{self.field}" if self.field else prefix
        return type(self)(self.message, field=field)


class InvalidArgument(MontessoriError):
    """A config value, request field or input row is malformed or out of range."""

    code = "INVALID_ARGUMENT"


class NotFound(MontessoriError):
    """A named model folder, data file, artifact, job or loop does not exist."""

    code = "NOT_FOUND"


class FailedPrecondition(MontessoriError):
    """The input exists but the system is not in a state to use it (e.g. a model that cannot load)."""

    code = "FAILED_PRECONDITION"


class AlreadyExists(MontessoriError):
    """The target exists and is not this request's to write (a published artifact is never rewritten)."""

    code = "ALREADY_EXISTS"


class ResourceExhausted(MontessoriError):
    """A queue or memory limit was reached."""

    code = "RESOURCE_EXHAUSTED"


class Cancelled(MontessoriError):
    """The work was cancelled by its owner; no partial artifact was published."""

    code = "CANCELLED"


class Interrupted(Cancelled):
    """The work stops because its process is shutting down or lost the leadership, not because its owner cancelled
    it: what it started on other services is left running, for the process that resumes it to pick up."""


class Unavailable(MontessoriError):
    """The service cannot take work yet (still loading models) or is shutting down; retry later."""

    code = "UNAVAILABLE"


#: Longest error text sent to a client: gRPC status details travel in headers (16 KiB in all by default), so an
#: error that echoed a 3 MB request field would reach the client as RESOURCE_EXHAUSTED "Stream removed".
MAX_ERROR_CHARS = 1024


def printable(text: str, *, limit: int = MAX_ERROR_CHARS, ascii_only: bool = False) -> str:
    """``text`` safe to show and to send: control characters (NUL included) escaped, at most ``limit`` characters
    (the rest counted), and with ``ascii_only`` every non-ASCII character escaped (gRPC metadata values)."""
    escaped = "".join(ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape").decode() for ch in text)
    if ascii_only:
        escaped = escaped.encode("ascii", "backslashreplace").decode()
    if len(escaped) > limit:
        escaped = f"{escaped[:limit]}... ({len(escaped) - limit} more characters)"
    return escaped
